"""`lightmoe policies`: the registered policies (built-in and from plugins), their parameters and defaults."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command


@command(app, "policies")
def policies_cmd() -> None:
    """List the registered policies: one line each, with their parameters and defaults."""
    from rich.console import Console

    from lightmoe_cli.report import policies_table

    Console().print(policies_table())
