"""`lightmoe export`: a bundle as a transformers checkpoint, a GGUF, llama.cpp -ot rules or a vLLM expert list."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command, fail
from lightmoe_cli.export.run import ExportRequest


@command(app, "export", ExportRequest)
def export_cmd(req: ExportRequest) -> None:
    """Export a bundle for serving engines: a transformers checkpoint, a GGUF, or placement rules."""
    from rich.console import Console

    from lightmoe_cli.export.run import run_export

    req.validate()  # a bad option is one line before the bundle is read
    try:
        result = run_export(req)
    except KeyboardInterrupt:
        fail(f"interrupted: nothing was written to {req.out}, and whatever was there before is untouched", code=130)
    console = Console()
    console.print(f"{req.format} export written to {result.out}", soft_wrap=True)
    for line in result.lines:  # a command line stays one line, to be copied whole
        console.print(line, soft_wrap=True, markup=False)
