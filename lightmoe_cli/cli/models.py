"""`lightmoe models`: the MoE architectures of the installed transformers, each self-tested on a tiny config."""

from __future__ import annotations

import typer

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.options import split_list


@command(app, "models")
def models(
    arch: list[str] = typer.Option(None, "--arch", "-a", help="Only these model_type names (e.g. mixtral)."),
    no_selftest: bool = typer.Option(False, "--no-selftest", help="List architectures without running them."),
) -> None:
    """List every MoE causal-LM architecture in the installed transformers, and self-test each on a tiny config."""
    from lightmoe_cli.selftest.run import models_command

    models_command(split_list(arch) or None, run_selftest=not no_selftest)
