"""`lightmoe run`: execute a bundle on prompts with only its resident experts in memory."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.runtime.request import RunRequest


@command(app, "run", RunRequest)
def run_cmd(req: RunRequest) -> None:
    """Execute a bundle: only resident experts in memory, misses redirected, coarse swaps on task change."""
    import json

    from rich.console import Console

    from lightmoe_cli.files import write_output
    from lightmoe_cli.report import run_tables, token_progress
    from lightmoe_cli.runtime.request import STATS_KIND, run_bundle

    console = Console()
    with token_progress(console, unit="requests") as progress:
        bundle, stats = run_bundle(req, progress)
    for r in stats.requests:
        console.print(f"[bold]{r.prompt}[/]{r.text}")
    for table in run_tables(stats, bundle.policy):
        console.print(table)
    if req.stats_json:
        write_output(req.stats_json, json.dumps({"kind": STATS_KIND, **stats.to_json()}, indent=1), STATS_KIND,
                     req.force, flag="--stats-json")
        console.print(f"statistics written to {req.stats_json}")
