"""`lightmoe lm-eval`: lm-evaluation-harness's own command line, with bundles as `--model lightmoe`."""

from __future__ import annotations

import typer

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command, fail


@command(app, "lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                           "help_option_names": []}, add_help_option=False)
def lm_eval_cmd(ctx: typer.Context) -> None:
    """lm-evaluation-harness's own command line with the `lightmoe` model registered; every argument goes to
    lm-eval, e.g. `lightmoe lm-eval --model lightmoe --model_args bundle=DIR --tasks hellaswag`."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    import lightmoe_cli.evaluation.lm_eval_model  # noqa: F401 - registers the "lightmoe" model class

    sys.argv = ["lm-eval", *ctx.args]
    try:
        cli_evaluate()
    except ValueError as e:  # lm-eval's own refusals (a task it does not know, a bad argument): one line too
        fail(f"lm-eval: {str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}")
