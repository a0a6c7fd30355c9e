"""Serving speed of policies whose memory is set by their own parameters (replace's --compression) or that need
an input of their own (predict's predictor), against prune at equal memory, on the demo model.

bench_runtime builds every policy at one `--budget`, which replace ignores (it sets its memory by compression)
and predict cannot be built without a predictor; this builds each configuration from its own options, then runs
each bundle in a fresh process exactly as bench_runtime does (`bench_runtime.run_child`: same prompts, warm-up,
the runtime's own statistics, peak RSS), the configurations interleaved over `--repeats` repeats
(benchmarks/harness.py: median [min-max], the machine's load judged, the memory bandwidth probed).

Bounds: replace serves the same top-k picks as prune, but a replaced expert's pick reads its base expert *plus*
its low-rank term, so it reads at least prune's bytes per decoded token: the bound on "x prune" is 1.00 (an
upper bound; the true one is a little lower). predict and swap activate the same top-k as prune and only add
reads: bound 1.00 too. A ratio above its bound beyond the noise is flagged, not reported.

    python benchmarks/bench_serving.py --configs replace:0.3,replace:0.5            # vs prune 0.70 / 0.50
    python benchmarks/bench_serving.py --configs predict:0.25,predict:0.5 --out serving-predict-demo-moe.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_runtime import PROMPTS, prompt_tokens, representative, run_child, token_costs  # noqa: E402
from benchmarks.harness import Config, Harness, HarnessOptions, Metric, analyse  # noqa: E402

WORK = ROOT / "data" / "bench" / "serving"
PREDICTOR = ROOT / "artifacts" / "eval" / "demo-moe-predictor"


def spec(entry: str) -> tuple[str, float, dict, float]:
    """'replace:0.3' -> (policy, prune's budget at equal memory, the policy's params, fraction or None)."""
    policy, value = entry.split(":")
    v = float(value)
    if policy == "replace":  # compression c removes a share c of the expert parameters: prune keeps 1 - c
        return policy, round(1 - v, 2), {"compression": v, "rank": 8}, None
    if policy == "predict":
        return policy, v, {"predictor": str(PREDICTOR)}, v
    return policy, v, {}, v


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", default="replace:0.3,replace:0.5",
                    help="policy:value list; replace's value is its compression, the others' their budget")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="serving-replace-demo-moe.json", help="file name under benchmarks/results/")
    HarnessOptions.add_arguments(ap)
    args = ap.parse_args()
    harness = Harness("bench_serving", args.threads, HarnessOptions.from_args(args))

    import torch

    from lightmoe_cli.analysis.decode_bytes import shape_from_config
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.profile.run import ensure_profile

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    name = resolve_model(None)
    model, tok = load_model_and_tokenizer(name)
    prof = ensure_profile(model, tok, name)
    shape = shape_from_config(model.config, bytes_per_param=next(model.parameters()).element_size())
    costs = token_costs(shape, None, prompt_tokens(tok, PROMPTS), args.new_tokens)  # same top-k everywhere

    configs, paths, build_s = [], {}, {}
    for entry in args.configs.split(","):
        policy, prune_budget, params, fraction = spec(entry)
        base = f"prune {prune_budget:.2f}"
        if base not in paths:
            b = build_bundle(prof, model, tok, name, WORK / f"prune-{prune_budget}",
                             BuildOptions(policy="prune", fraction=prune_budget), force=True)
            configs.append(Config(base, costs=costs, info={"policy": "prune", "budget": prune_budget,
                                                           "resident_fraction": b.manifest.budget.resident_fraction}))
            paths[base] = b.path
        label = f"{policy} {entry.split(':')[1]}"
        t0 = time.perf_counter()
        b = build_bundle(prof, model, tok, name, WORK / f"{policy}-{entry.split(':')[1]}",
                         BuildOptions(policy=policy, fraction=fraction, params=params), force=True)
        build_s[label] = time.perf_counter() - t0
        configs.append(Config(label, baseline=base, costs=costs, bounds={"decode_tokens_per_s": 1.0},
                              info={"policy": policy, "budget": prune_budget, "params": params,
                                    "resident_fraction": b.manifest.budget.resident_fraction}))
        paths[label] = b.path
    del model

    runs = harness.measure([c.label for c in configs],
                           lambda label: run_child(paths[label], args.threads, args.new_tokens))
    for c in configs:
        r = representative(runs[c.label], "decode_tokens_per_s")
        layers = r.get("layers", {}).values()
        c.info |= {"resident experts MiB": r.get("resident_expert_bytes", 0) / 2**20,
                   "loads": sum(v["loads"] for v in layers), "swaps": len(r.get("swaps", []))}
    metrics = [Metric("prefill_tokens_per_s", "prefill tok/s", fmt=",.1f"),
               Metric("decode_tokens_per_s", "decode tok/s"),
               Metric("peak_rss_mib", "peak RSS MiB", fmt=",.0f", ratio=False)]
    rows = analyse(configs, runs, metrics, harness.bandwidth_gbps)
    title = (f"serving on {Path(name).name} ({args.threads} threads, {len(PROMPTS)} prompts x {args.new_tokens} new "
             "tokens); x base: vs prune at equal memory (bound 1.00: the same top-k, replace/predict read more)")
    payload = {"model": str(name), "threads": args.threads, "new_tokens": args.new_tokens, "build_seconds": build_s}
    harness.finish(rows, metrics, title, payload, harness.options.results_dir / args.out,
                   info_columns=("budget", "resident experts MiB", "loads", "swaps"))


if __name__ == "__main__":
    main()
