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
    try:
        app()
    except SystemExit as e:
        exit_fast(e.code)
    exit_fast(0)


def exit_fast(code) -> None:
    """Exit once the command is done, skipping only the interpreter's teardown of its modules.

    Why: freeing torch, transformers, scikit-learn and a loaded model module by module takes 0.5-1 s after every
    command has already written its files (measured: 1.0 s after `tune` on the demo). atexit handlers (Ray's
    shutdown, temporary folders' finalizers) still run, and streams are flushed. A non-daemon thread still
    alive, or an exit message instead of a code, takes the normal way out."""
    import atexit
    import os
    import sys
    import threading

    if code is None:
        code = 0
    busy = any(t is not threading.main_thread() and not t.daemon and t.is_alive() for t in threading.enumerate())
    if busy or not isinstance(code, int):
        raise SystemExit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
