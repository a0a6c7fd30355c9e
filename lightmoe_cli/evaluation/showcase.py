"""What lightmoe is for, measured in under a minute: the demo model at half its expert memory.

`lightmoe demo compare` builds three bundles at one budget -- full (every expert), prune (one frequency-chosen
set) and task-aware (the same memory, its resident set following the task) -- and serves each the same
held-out stream: documents of several domains in blocks, one domain after another, as a server's traffic
arrives. It reports expert memory, NLL per token against the full model (paired over the same tokens), the
swaps the task-aware manager made, and decode speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lightmoe_cli.options import option
from lightmoe_cli.paths import REPO_ROOT

POLICIES = ("full", "prune", "task-aware")
PROMPT = "def read_lines(path):\n"


@dataclass
class ShowcaseRequest:
    """What `lightmoe demo compare` was asked for (the defaults of its options live here)."""

    budget: float = option(0.5, "Resident expert memory as a fraction of all expert weights.", above=0, maximum=1)
    block: int = option(8, "Held-out documents per domain block of the stream.", minimum=1)
    requests: int = option(48, "Held-out documents in the stream.", minimum=2)
    new_tokens: int = option(32, "Tokens decoded per bundle for the speed column.", minimum=1)
    out: Path = option(REPO_ROOT / "runs" / "demo-compare", "Folder for the three bundles (an untracked work "
                       "folder; reused while the profile is unchanged).", short="-o")


@dataclass
class ShowcaseRow:
    policy: str
    expert_mib: float  # resident expert memory
    nll: float  # per token over the stream
    delta_nll: float  # vs full, same tokens
    swaps: int  # layer swaps over the stream (the task-aware manager)
    decode_tokens_per_s: float


def run_showcase(req: ShowcaseRequest, progress=None) -> tuple[list[ShowcaseRow], int, int]:
    """Build (or reuse) the bundles and serve the stream; returns the rows, the stream's tokens and domains."""
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.compare import ensure_bundles
    from lightmoe_cli.evaluation.stream import build_stream, run_stream
    from lightmoe_cli.evaluation.tasks import build_demo_items
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.options import check_bounds
    from lightmoe_cli.paths import CORPUS_DIR, ITEMS_DIR
    from lightmoe_cli.profile.run import ensure_profile
    from lightmoe_cli.runtime.generate import generate_one
    from lightmoe_cli.runtime.loader import build_runtime

    check_bounds(req)
    name = resolve_model(None)
    lm, tok = load_model_and_tokenizer(name)
    prof = ensure_profile(lm, tok, name, progress)
    configs = ensure_bundles(prof, lm, tok, name, list(POLICIES), [req.budget], Path(req.out), progress)
    del lm
    if not (ITEMS_DIR / "ppl").is_dir():
        build_demo_items(CORPUS_DIR, ITEMS_DIR)
    stream = build_stream(ITEMS_DIR / "ppl", req.block, req.requests)
    results = {}
    for c in configs:
        rt = build_runtime(load_bundle(c.bundle, verify=False))
        try:
            result = run_stream(rt, c.policy, stream, req.block)
            generate_one(rt, PROMPT, 4, [0])  # warm-up
            done = generate_one(rt, PROMPT, req.new_tokens, [0])
            speed = done.new_tokens / max(done.decode_s, 1e-9)
            results[c.policy] = (result, rt.resident_expert_bytes(), speed)
        finally:
            rt.close()
    full = results["full"][0].nll_per_token
    rows = [ShowcaseRow(p, b / 2**20, r.nll_per_token, r.nll_per_token - full, r.swaps, s)
            for p, (r, b, s) in results.items()]
    tokens = sum(s.tokens for s in results["full"][0].scores)
    return rows, tokens, len({q.domain for q in stream})


def gap_closed(rows: list[ShowcaseRow]) -> float | None:
    """The share of prune's NLL gap to full that the task-aware bundle closes (None when prune has no gap)."""
    by = {r.policy: r for r in rows}
    gap = by["prune"].delta_nll
    return 1 - by["task-aware"].delta_nll / gap if gap > 0 else None
