"""The `lightmoe` command line: one module per command, each a thin parse -> one library call -> render.

Why thin, and why heavy imports stay inside the command functions: `lightmoe --help` must answer instantly
(torch + transformers take ~8 s to import). Options come from the request records of the library (their
defaults live there, once); `common.command` expands them and turns a `LightMoEError` into one error line.
"""

from __future__ import annotations

from lightmoe_cli.cli import (  # noqa: F401 - each module registers its command(s) on import
    build_bundle,
    demo,
    eval,
    export,
    fit,
    lm_eval,
    models,
    policies,
    predict,
    profile,
    run,
    serve,
    simulate,
    tune,
)
from lightmoe_cli.cli.app import app

__all__ = ["app", "main"]


def main() -> None:  # pragma: no cover - console entry point
    app()
