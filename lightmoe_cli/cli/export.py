"""`lightmoe export`: a bundle as a transformers checkpoint, a GGUF, llama.cpp -ot rules or a vLLM expert list."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.export.run import ExportRequest


@command(app, "export", ExportRequest)
def export_cmd(req: ExportRequest) -> None:
    """Export a bundle for serving engines: a transformers checkpoint, a GGUF, or placement rules."""
    from rich.console import Console

    from lightmoe_cli.export.run import run_export

    result = run_export(req)
    console = Console()
    console.print(f"{req.format} export written to {result.out}")
    for line in result.lines:
        console.print(line)
