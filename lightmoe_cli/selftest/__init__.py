"""The self-test of every MoE architecture in the installed transformers (`lightmoe models`).

It sits above the whole pipeline on purpose: a tiny model of each family is traced, pruned and redirected
(`run`), then driven through profile -> build-bundle -> run -> export (`pipeline`). The layers below never
import it.
"""
