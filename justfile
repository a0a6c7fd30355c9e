# lightmoe tasks. `pip install rust-just` gives `just` on a fresh machine.
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv"
py := venv + "/bin/python"
export HF_HUB_OFFLINE := "1"
export HF_DATASETS_OFFLINE := "1"
export TOKENIZERS_PARALLELISM := "false"

# Show the recipes.
default:
    @just --list

# venv + CPU torch (a wheel on local disk here) + lightmoe in editable mode + the corpus's Debian packages.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    if [ ! -x {{py}} ]; then python3 -m venv {{venv}}; fi
    stamp={{venv}}/.lightmoe-setup
    want=$(sha256sum pyproject.toml | cut -c1-16)
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        {{py}} -m pip install -q --upgrade pip
        {{py}} -m pip install -q "torch==2.13.0"
        {{py}} -m pip install -q -e ".[dev]"
        echo "$want" > "$stamp"
    fi
    just corpus-deps

# Debian packages the demo corpus is built from (dictionary, bibles, Python docs).
corpus-deps:
    #!/usr/bin/env bash
    set -euo pipefail
    pkgs="dict-gcide sword-text-web sword-text-sparv libsword-utils python3.11-doc"
    missing=$(for p in $pkgs; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
    if [ -n "$missing" ]; then
        sudo_=""; [ "$(id -u)" = 0 ] || sudo_="sudo"
        $sudo_ apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
    fi

# Build the multi-domain demo corpus into data/corpus (skipped when it is already there).
corpus: setup
    @[ -f data/corpus/manifest.json ] || {{venv}}/bin/lightmoe demo corpus --out data/corpus

# Retrain the demo model from its recipe (about 2 hours on 2 cores), then measure it and write its card.
train-demo: corpus
    {{venv}}/bin/lightmoe demo train
    {{venv}}/bin/lightmoe demo card

# The main job on the embedded default model, as far as it is built: adapters, the model, its routing profile.
demo: corpus
    {{venv}}/bin/lightmoe models
    {{venv}}/bin/lightmoe demo show
    {{venv}}/bin/lightmoe profile
    {{venv}}/bin/lightmoe build-bundle --budget 0.5
    {{venv}}/bin/lightmoe run --prompt $'12 + 7 = 19\n45 - 3 = ' --prompt $'def read_lines(path):\n' --max-new-tokens 24

# Fast tests (slow and gpu excluded); the corpus is built first, some tests read it.
test: corpus
    {{py}} -m pytest -q

# All tests, slow ones included.
test-all: corpus
    {{py}} -m pytest -q -m "not gpu"

lint: setup
    {{venv}}/bin/ruff check lightmoe_cli tests benchmarks

# Benchmarks on the demo model (print a table, write JSON under benchmarks/results).
bench: setup
    {{py}} benchmarks/bench_profile.py
    {{py}} benchmarks/bench_runtime.py

# The runtime benchmark on a random-weight OLMoE-shaped model with 2 layers (~1.05B parameters, ~4 GB fp32).
bench-large: setup
    {{py}} benchmarks/bench_runtime.py --random-olmoe 2 --new-tokens 16

# The comparison of the README: every policy at three budgets, MC items and held-out text, plus task-shift streams.
eval-demo: corpus
    {{venv}}/bin/lightmoe eval --budgets 0.25,0.5,0.75 --limit 48
