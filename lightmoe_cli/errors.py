"""User-facing errors: one clear line naming the fix, never a traceback."""

from __future__ import annotations

from typing import NoReturn

import typer


class LightMoEError(Exception):
    """An error whose message is meant for the user as it is (what is wrong and how to fix it)."""


class UnsupportedModelError(LightMoEError):
    """The model has no MoE layers that any registered adapter understands."""


def fail(message: object, code: int = 1) -> NoReturn:
    """Print `error: <message>` on stderr and exit with `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)
