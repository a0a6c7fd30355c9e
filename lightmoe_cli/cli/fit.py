"""`lightmoe fit`: what a model needs and which plans fit this machine, from config.json alone."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.fit.request import FitRequest


@command(app, "fit", FitRequest)
def fit_cmd(req: FitRequest) -> None:
    """Parameters and bytes by kind, per-token reads, and the plans that fit (GPU, llama.cpp GPU/CPU split,
    RAM, a lightmoe bundle) with their decode bounds. Reads config.json (and safetensors headers), no tensor."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from lightmoe_cli.files import write_output
    from lightmoe_cli.fit.render import active_table, kinds_table, plan_commands, plans_table
    from lightmoe_cli.fit.request import FIT_KIND, run_fit

    report = run_fit(req)
    console = Console()
    console.print(kinds_table(report))
    console.print(active_table(report))
    console.print(plans_table(report))
    for line in plan_commands(report):
        console.print(escape(line), soft_wrap=True, highlight=False)
    for w in report.warnings:
        console.print(f"[yellow]note:[/yellow] {escape(w)}")
    if req.json_out:
        write_output(req.json_out, json.dumps(report.to_json(), indent=1), FIT_KIND, req.force, flag="--json")
        console.print(f"written {req.json_out}")
