"""`lightmoe build-bundle`: resident experts, a redirect table and a swap policy under a memory budget."""

from __future__ import annotations

import inspect
from typing import Any

from lightmoe_cli.bundle.options import BuildOptions
from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import build_request, fail, request_parameters
from lightmoe_cli.cli.policy_options import with_policy_options
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.paths import offline

_params, _converters = request_parameters(BuildOptions)


def build_bundle_cmd(policy_params: dict | None = None, **options: Any) -> None:
    """Choose resident experts under a memory budget, a redirect table and a swap policy -> a bundle folder."""
    offline()
    from rich.console import Console

    from lightmoe_cli.bundle.build import build_bundle_request
    from lightmoe_cli.report import bundle_table, recovery_warning, token_progress

    console = Console()
    try:
        opts = build_request(BuildOptions, options, _converters)
        opts.params = policy_params or {}
        resolved = opts.resolve()  # a bad option is one line before the progress bar starts
        with token_progress(console, unit="experts") as progress:
            bundle = build_bundle_request(opts, progress, resolved)
    except KeyboardInterrupt:
        fail("interrupted: no bundle was written and any earlier bundle at that path is untouched (a replace or "
             "prune-lora recovery keeps its checkpoint in <out>.recover: the same command resumes it)", code=130)
    except LightMoEError as e:
        fail(e)
    console.print(bundle_table(bundle))
    warning = recovery_warning(bundle)
    if warning:
        Console(stderr=True).print(f"[yellow]warning:[/] {warning}")
    console.print(f"bundle written to {bundle.path}")


# the options of BuildOptions, then (added by with_policy_options) one per policy parameter
build_bundle_cmd.__signature__ = inspect.Signature(
    [*_params, inspect.Parameter("policy_params", inspect.Parameter.KEYWORD_ONLY, default=None)])
app.command("build-bundle")(with_policy_options(build_bundle_cmd))
