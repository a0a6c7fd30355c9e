"""`lightmoe profile`: routing statistics of a model on calibration tasks."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command, fail
from lightmoe_cli.profile.request import ProfileRequest


@command(app, "profile", ProfileRequest)
def profile(req: ProfileRequest) -> None:
    """Trace routing on calibration tasks: expert frequency, co-activation and similarity per task and layer."""
    import torch
    from rich.console import Console

    from lightmoe_cli.profile.request import run_profile_request
    from lightmoe_cli.report import profile_tables, token_progress

    console = Console()
    try:
        with token_progress(console) as progress:
            prof = run_profile_request(req, progress, notice=console.print)
    except KeyboardInterrupt:
        partial = f"{req.out}.partial" if req.out else "the .partial folder beside the output"
        fail(f"interrupted: finished tasks are kept in {partial} and any earlier profile is untouched; continue "
             "with the same command and --resume", code=130)
    except torch.OutOfMemoryError:
        fail(f"out of memory at --batch-size {req.batch_size}: try --batch-size {max(1, req.batch_size // 2)}")
    for table in profile_tables(prof.manifest):
        console.print(table)
    console.print(f"profile written to {prof.path} (plots in {prof.path / 'plots'})")
