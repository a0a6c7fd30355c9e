"""`lightmoe run` as one call: a bundle, prompts and how to serve them -> generations and run statistics."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Force, Threads, check_bounds, option
from lightmoe_cli.paths import DEFAULT_BUNDLE

STATS_KIND = "lightmoe-run-stats"  # what a --stats-json file says it is


@dataclass
class RunRequest(Threads, Force):
    """What `lightmoe run` was asked for (the defaults of its options live here)."""

    bundle: Path | None = option(None, "Bundle folder (default: the demo model's task-aware bundle at 50%).",
                                 short="-b", role="input")
    prompts: list[str] = option(help="A prompt (repeatable).", default_factory=list, flag="--prompt", split=False)
    input: Path | None = option(None, "JSONL file with a 'prompt' field per line.", role="input")
    max_new_tokens: int = option(32, "Tokens to generate per prompt.", minimum=1, maximum=1_000_000)
    stats_json: Path | None = option(None, "Write the run statistics here as JSON.", role="output")
    io_bandwidth: str | None = option(None, "A slower link for expert loads, e.g. 2GB/s: every run-time expert "
                                      "read is throttled to it for real (lru stalls for it, swap overlaps it).")
    device: str = option("cpu", "cpu or cuda.")
    no_manager: bool = option(False, "Serve a managed bundle statically (no swaps).", flag="--no-manager")
    manager_loads: str = option("blocking", "How a managed bundle's swaps are read: blocking (at the request "
                                "boundary) or background (on a loader thread; the old experts serve until the new "
                                "ones land).", choices=("blocking", "background"), excludes="no_manager")
    bandwidth: int | None = field(default=None, init=False)  # io_bandwidth in bytes/s, once checked

    def output_kind(self) -> tuple[str, bool]:
        return STATS_KIND, True

    def validate(self) -> list[str]:
        """Every option checked before a model loads; returns the prompts."""
        from lightmoe_cli.policies.budget import parse_size
        from lightmoe_cli.runtime.prompts import read_prompts

        if not 1 <= self.max_new_tokens <= 1_000_000:
            raise LightMoEError(f"--max-new-tokens must be between 1 and 1000000, not {self.max_new_tokens}")
        prompts = read_prompts(self.prompts, self.input)
        self.bandwidth = parse_size(self.io_bandwidth.removesuffix("/s")) if self.io_bandwidth else None
        if self.io_bandwidth is not None and not self.bandwidth:
            raise LightMoEError(f"--io-bandwidth {self.io_bandwidth} must be above 0 (leave it out for an "
                                "unthrottled link)")
        check_bounds(self)  # the write rules of --stats-json included
        if self.stats_json is not None and not self.stats_json.parent.is_dir():
            raise LightMoEError(f"--stats-json folder {self.stats_json.parent} does not exist: create it or write "
                                "elsewhere")
        return prompts


def run_bundle(req: RunRequest, progress=None):
    """Load the bundle's runtime and serve the prompts in order; returns (bundle, RunStats)."""
    import torch

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.runtime.generate import run_requests
    from lightmoe_cli.runtime.loader import build_runtime
    from lightmoe_cli.runtime.prompts import check_lengths

    prompts = req.validate()
    if req.threads:
        torch.set_num_threads(req.threads)
    bundle = load_bundle(req.bundle or DEFAULT_BUNDLE)
    if bundle.runtime_spec.manager is None and (req.no_manager or req.manager_loads != "blocking"):
        flag = "--no-manager" if req.no_manager else "--manager-loads"
        raise LightMoEError(f"{flag} applies to a bundle whose experts swap per task (task-aware); this "
                            f"{bundle.policy} bundle has no manager")
    rt = build_runtime(bundle, device=req.device, manager=not req.no_manager, io_bandwidth=req.bandwidth,
                       manager_loads=req.manager_loads)
    check_lengths(rt, prompts, req.max_new_tokens)
    return bundle, run_requests(rt, prompts, req.max_new_tokens, io_bandwidth=req.bandwidth, progress=progress)
