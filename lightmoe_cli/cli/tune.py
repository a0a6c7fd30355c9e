"""`lightmoe tune`: the best residency policy x budget x activation rule for a memory, measured on the profile's
own tasks."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.tune.request import TuneRequest


@command(app, "tune", TuneRequest)
def tune_cmd(req: TuneRequest) -> None:
    """Search policy x budget x activation rule: the outlook prunes, held-out NLL ranks by successive halving,
    decode speed is measured on the finalists; writes the pick's bundle, <out>.tune.json and the frontier PNG."""
    from rich.console import Console
    from rich.markup import escape

    from lightmoe_cli.report import token_progress
    from lightmoe_cli.tune.render import candidates_table, frontier_table, write_sidecars
    from lightmoe_cli.tune.request import run_tune

    console = Console()
    with token_progress(console, unit="doc") as progress:
        report = run_tune(req, progress)
    js, png = write_sidecars(report, req.force)
    console.print(candidates_table(report))
    console.print(frontier_table(report))
    console.print(f"pick: [bold]{escape(report.pick.candidate.name)}[/bold]: {escape(report.why)}")
    console.print(f"advice: {escape(report.advice)}")
    console.print(f"written {report.bundle} (bundle), {js}" + (f", {png}" if png else "")
                  + f" in {report.seconds['total']:.1f} s", soft_wrap=True, highlight=False)
