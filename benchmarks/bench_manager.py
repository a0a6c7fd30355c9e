"""Swap rules of the lightmoe manager on task-shift streams of the demo model (held-out text, NLL per token).

For each block length (requests per domain before it changes), serves one stream of `--requests` held-out
documents with: prune, the full model, the oracle (task given), lightmoe with its manager off, the incremental
rule and the task-jump rule at a few settings. Prints a table and writes benchmarks/results/manager.json.
What to read: a rule's share of the oracle's gain over prune per block length, and that it is never worse than
prune (its ΔNLL interval does not lie above 0).

Measured with benchmarks/harness.py: the (block, config) streams run interleaved, `--repeats` times (default 1:
the NLL is exact whatever the machine does; repeats give the stream times a median [min-max]), the machine's load
judged. Each config computes the same k experts per token as prune over the same tokens (prefill-like scoring,
compute-bound), so a stream's speed-up over prune is bounded by 1.0 (the FLOP ratio): swaps and on-demand or
throttled reads only add time. A config faster than prune beyond the noise is flagged. No bandwidth fraction:
the streams are prefill, not decode.

    python benchmarks/bench_manager.py --blocks 1,2,8,30 --requests 96 --budget 0.5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import (  # noqa: E402
    Config,
    Harness,
    HarnessOptions,
    Metric,
    NoisePolicy,
    analyse,
    demo_model_and_profile,
)


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
    HarnessOptions.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    # the headline is NLL, exact whatever the machine does: one repeat is enough for it; the times want more
    harness = Harness("bench_manager", args.threads, HarnessOptions.from_args(args), NoisePolicy(min_repeats=1))

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.render import stream_table
    from lightmoe_cli.evaluation.stream import build_stream, run_stream, summarise_streams
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.runtime.loader import build_runtime

    name, model, tok, prof = demo_model_and_profile(args.threads)
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
    streams = {block: build_stream(ITEMS_DIR / "ppl", block, args.requests)
               for block in [int(b) for b in args.blocks.split(",")]}
    by_label = {label: (bundle, kw, given) for label, bundle, kw, given in configs}
    keys = [(block, label) for block in streams for label in by_label]
    name_of = {f"block {block}: {label}": (block, label) for block, label in keys}

    def measure(key: str) -> dict:
        block, label = name_of[key]
        bundle, kw, given = by_label[label]
        kw = dict(kw)
        overrides = kw.pop("jump_overrides", None)
        rt = build_runtime(bundle, **kw)
        if overrides:
            rt.max_swap, rt.jump.margin = overrides
        result = run_stream(rt, label, streams[block], block, given)
        rt.close()
        return {"seconds": result.seconds, "nll_per_token": result.nll_per_token, "result": result}

    t0 = time.perf_counter()
    runs = harness.measure(list(name_of), measure, warmup=True)
    rows = summarise_streams([runs[key][0]["result"] for key in name_of])  # quality: the first repeat's streams
    for row in rows:  # timing: every repeat's; NLL again, since background loads may land at other tokens
        key = f"block {row['block']}: {row['config']}"
        times = [r["seconds"] for r in runs[key]]
        nll = [r["nll_per_token"] for r in runs[key]]
        row["seconds"] = statistics.median(times)
        row["seconds_min"], row["seconds_max"] = min(times), max(times)
        row["nll_per_token_range"] = [min(nll), max(nll)]
    timing = [Config(key, baseline=f"block {block}: prune" if label != "prune" and "prune" in by_label else None,
                     bounds={"seconds": 1.0}, info={"block": block}) for key, (block, label) in name_of.items()]
    metrics = [Metric("seconds", "stream s", higher_is_better=False)]
    timing_rows = analyse(timing, runs, metrics, None)
    harness.finish(timing_rows, metrics, "stream time per config (x base: speed-up over prune in the same stream)",
                   {"budget": args.budget, "requests": args.requests, "threads": args.threads,
                    "io_bandwidth": args.io_bandwidth, "seconds": time.perf_counter() - t0, "rows": rows},
                   harness.options.results_dir / args.out, info_columns=("block",), rows_key="timing")
    harness.console.print(stream_table(rows))


if __name__ == "__main__":
    main()
