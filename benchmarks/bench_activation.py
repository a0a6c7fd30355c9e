"""Activation budgets: prefill and decode speed of each rule against the full top-k, on one full bundle.

Each rule's per-layer k (and per-token rule) is planned here on the loaded model (timing LExI's measurement +
search and Alloc-L's sensitivity pass), then every configuration runs in its own process on the same full
bundle. Prints a table and writes benchmarks/results/activation-<model>.json.

    python benchmarks/bench_activation.py                      # demo model
    python benchmarks/bench_activation.py --random-olmoe 2     # random OLMoE-shaped, ~1.05B parameters
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"


def _child(bundle: str, plan_json: str, threads: int, new_tokens: int, batch: int = 0) -> None:
    """Run the prompts with one activation plan (empty: the full top-k), one request at a time and, with
    `batch`, `batch` requests decoded together (one forward per step routes B tokens); last line is JSON."""
    import torch

    from benchmarks.bench_runtime import PROMPTS
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.manifest import record_from_json
    from lightmoe_cli.policies.activation_budget import ActivationPlan
    from lightmoe_cli.runtime.generate import generate_batch, generate_one, run_requests
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(threads)
    plan = record_from_json(ActivationPlan, json.loads(plan_json)) if plan_json else None
    rt = build_runtime(load_bundle(Path(bundle), verify=False), activation=plan)
    generate_one(rt, PROMPTS[0], 4, [0])  # warm-up
    prompts = [p * 4 for p in PROMPTS]  # longer prompts: prefill is where the experts' compute shows
    stats = run_requests(rt, prompts, new_tokens)
    result = {"prefill_tokens_per_s": stats.prefill_tokens_per_s, "decode_tokens_per_s": stats.decode_tokens_per_s}
    if batch:
        requests = generate_batch(rt, [prompts[i % len(prompts)] for i in range(batch)], new_tokens)
        result["batched_decode_tokens_per_s"] = sum(r.new_tokens for r in requests) / requests[0].decode_s
    print(json.dumps(result))


def run_child(bundle: Path, plan: dict | None, threads: int, new_tokens: int, batch: int = 0) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import benchmarks.bench_activation as b; "
            f"b._child({str(bundle)!r}, {json.dumps(json.dumps(plan) if plan else '')}, {threads}, {new_tokens}, "
            f"{batch})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-olmoe", type=int, default=0)
    ap.add_argument("--rules", default="topk,lexi,alloc,alloc-t,naee")
    ap.add_argument("--active", type=float, default=0.5)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration (median)")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--batch", type=int, default=8, help="also decode this many requests together (0: skip)")
    args = ap.parse_args()

    import statistics

    import torch
    from rich.console import Console
    from rich.table import Table

    from benchmarks.bench_runtime import WORK, generated_recipe, random_olmoe
    from lightmoe_cli.bundle.alloc import alloc_sensitivity, calibration_windows, routing_weights
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.bundle.lexi import lexi_deltas
    from lightmoe_cli.evaluation.run import ensure_profile
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.manifest import to_json
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.policies.activation_budget import plan_activation

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    name = str(random_olmoe(args.random_olmoe, WORK / f"olmoe-{args.random_olmoe}L")) if args.random_olmoe \
        else resolve_model(args.model)
    tag = Path(name).name
    model, tok = load_model_and_tokenizer(name)
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    prof = ensure_profile(model, tok, name) if not args.random_olmoe else None
    if prof is None:
        from lightmoe_cli.profile.run import ProfileSettings, run_profile
        from lightmoe_cli.recipes import load_recipe

        prof = run_profile(model, tok, name, load_recipe(generated_recipe(2048)), WORK / f"profile-{tag}",
                           ProfileSettings(batch_size=4, sample_tokens=128))
    top_k = {m.layer_index: m.top_k for m in layers}
    cost, plans = {}, {}
    windows = calibration_windows(prof, tok)
    for rule in args.rules.split(","):
        t0 = time.perf_counter()
        measured = {}
        if rule == "lexi":
            measured = {"delta": lexi_deltas(model, adapter, layers)}
        elif rule in ("alloc", "alloc-t"):
            measured = {"sensitivity": alloc_sensitivity(model, adapter, layers, windows)}
        elif rule == "naee":
            measured = {"weights": routing_weights(model, windows)}
        plans[rule] = plan_activation(rule, top_k, args.active, measured)
        cost[rule] = time.perf_counter() - t0
    full = build_bundle(prof, model, tok, name, WORK / f"{tag}-full-activation", BuildOptions(policy="full"))
    del model
    rows = []
    for rule in ["full top-k", *plans]:
        plan = to_json(plans[rule]) if rule in plans else None
        runs = [run_child(full.path, plan, args.threads, args.new_tokens, args.batch) for _ in range(args.repeats)]
        rows.append({"rule": rule, "k": plans[rule].k if rule in plans else top_k,
                     "prefill_tokens_per_s": statistics.median(r["prefill_tokens_per_s"] for r in runs),
                     "decode_tokens_per_s": statistics.median(r["decode_tokens_per_s"] for r in runs),
                     "planning_seconds": cost.get(rule, 0.0)})
        if args.batch:
            rows[-1]["batched_decode_tokens_per_s"] = statistics.median(r["batched_decode_tokens_per_s"] for r in runs)
    base = rows[0]
    table = Table(title=f"activation budgets on {tag} at active {args.active} ({args.threads} threads, median of "
                        f"{args.repeats})")
    cols = ["rule", "k per layer", "prefill tok/s", "x full", "decode tok/s", "x full"]
    cols += [f"decode x{args.batch} tok/s", "x full"] if args.batch else []
    for col in [*cols, "planning s"]:
        table.add_column(col, justify="right")
    for r in rows:
        r["prefill_vs_full"] = r["prefill_tokens_per_s"] / base["prefill_tokens_per_s"]
        r["decode_vs_full"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
        cells = [r["rule"], "/".join(str(v) for _, v in sorted(r["k"].items())),
                 f"{r['prefill_tokens_per_s']:,.1f}", f"{r['prefill_vs_full']:.2f}",
                 f"{r['decode_tokens_per_s']:,.2f}", f"{r['decode_vs_full']:.2f}"]
        if args.batch:
            r["batched_decode_vs_full"] = r["batched_decode_tokens_per_s"] / base["batched_decode_tokens_per_s"]
            cells += [f"{r['batched_decode_tokens_per_s']:,.2f}", f"{r['batched_decode_vs_full']:.2f}"]
        table.add_row(*cells, f"{r['planning_seconds']:.1f}")
    Console(width=120).print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"activation-{tag}{args.tag}.json"
    from lightmoe_cli.files import atomic_write

    atomic_write(out, json.dumps({"model": name, "active": args.active, "threads": args.threads, "batch": args.batch,
                                  "date": time.strftime("%Y-%m-%d"), "rows": rows,
                                  "plans": {k: asdict(v) | {"measured": {}} for k, v in plans.items()}}, indent=1,
                                 default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
