"""`lightmoe eval`: score bundles and the baselines with lm-evaluation-harness."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command, fail
from lightmoe_cli.evaluation.run import EvalRequest


@command(app, "eval", EvalRequest)
def eval_cmd(req: EvalRequest) -> None:
    """Score bundles and the baselines with lm-evaluation-harness: accuracy x memory x speed."""
    from rich.console import Console

    from lightmoe_cli.evaluation.render import render_eval
    from lightmoe_cli.evaluation.run import run_eval
    from lightmoe_cli.report import token_progress

    req.validate()
    console = Console(width=max(Console().width, 100))  # the tables are laid out for 100 columns
    try:
        with token_progress(console, unit="bundles") as progress:
            report = run_eval(req, progress)
    except KeyboardInterrupt:
        fail("interrupted: bundles built so far are kept and reused by the next run; results were not written",
             code=130)
    render_eval(console, report)
