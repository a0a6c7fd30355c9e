"""Swap rules of the lightmoe manager on task-shift streams of the demo model (held-out text, NLL per token).

For each block length (requests per domain before it changes), serves one stream of `--requests` held-out
documents with: prune, the full model, the oracle (task given), lightmoe with its manager off, the incremental
rule and the task-jump rule at a few settings. Prints a table and writes benchmarks/results/manager.json.
What to read: a rule's share of the oracle's gain over prune per block length, and that it is never worse than
prune (its ΔNLL interval does not lie above 0).

    python benchmarks/bench_manager.py --blocks 1,2,8,30 --requests 96 --budget 0.5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--blocks", default="1,2,8,30")
    ap.add_argument("--requests", type=int, default=96)
    ap.add_argument("--budget", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--jump", default="4:0.02,16:0.02,16:0.05", help="max_swap:margin settings of the jump rule")
    ap.add_argument("--io-bandwidth", type=float, default=None,
                    help="bytes/s every run-time expert read is throttled to; adds each rule with its swaps read in "
                         "the background (--manager-loads background) beside the blocking ones")
    ap.add_argument("--out", default="manager.json", help="file name under benchmarks/results/")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.render import stream_table
    from lightmoe_cli.evaluation.run import ensure_profile
    from lightmoe_cli.evaluation.stream import build_stream, run_stream, summarise_streams
    from lightmoe_cli.evaluation.tasks import build_demo_items
    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.paths import CORPUS_DIR, ITEMS_DIR
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(args.threads)
    if not any((ITEMS_DIR / "ppl").glob("*.jsonl")):
        build_demo_items(CORPUS_DIR, ITEMS_DIR)
    name = resolve_model(None)
    model, tok = load_model_and_tokenizer(name)
    prof = ensure_profile(model, tok, name)
    work = ROOT / "runs" / "bench-manager"
    bundles = {}
    for policy, params in [("full", {}), ("prune", {}), ("oracle", {}), ("lightmoe", {})]:
        bundles[policy] = build_bundle(prof, model, tok, name, work / policy,
                                       BuildOptions(policy=policy, fraction=args.budget, params=params))
    del model
    configs = [("full", bundles["full"], {}, False), ("prune", bundles["prune"], {}, False),
               ("oracle", bundles["oracle"], {}, True),
               ("lightmoe (manager off)", bundles["lightmoe"], {"manager": False}, False),
               ("lightmoe (incremental)", bundles["lightmoe"], {"swap_rule": "incremental"}, False)]
    for setting in args.jump.split(","):
        swap, margin = setting.split(":")
        configs.append((f"jump swap={swap} margin={margin}", bundles["lightmoe"],
                        {"swap_rule": "jump", "jump_overrides": (int(swap), float(margin))}, False))
    if args.io_bandwidth:
        configs = [(label, b, {**kw, "io_bandwidth": args.io_bandwidth}, given) for label, b, kw, given in configs]
        configs += [(f"{label} (background loads)", b, {**kw, "manager_loads": "background"}, given)
                    for label, b, kw, given in configs if "incremental" in label or "jump" in label]
    results = []
    t0 = time.perf_counter()
    for block in [int(b) for b in args.blocks.split(",")]:
        stream = build_stream(ITEMS_DIR / "ppl", block, args.requests)
        for label, bundle, kw, given in configs:
            kw = dict(kw)
            overrides = kw.pop("jump_overrides", None)
            rt = build_runtime(bundle, **kw)
            if overrides:
                rt.max_swap, rt.jump.margin = overrides
            results.append(run_stream(rt, label, stream, block, given))
            rt.close()
    rows = summarise_streams(results)
    console = Console(width=110)
    console.print(stream_table(rows))
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / args.out, {"budget": args.budget, "requests": args.requests,
                                           "threads": args.threads, "io_bandwidth": args.io_bandwidth,
                                           "seconds": time.perf_counter() - t0, "rows": rows})
    console.print(f"written to {RESULTS / args.out}")


if __name__ == "__main__":
    main()
