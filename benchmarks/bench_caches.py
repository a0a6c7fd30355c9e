"""Pinned-core caches against prune, the old swap and the task-aware manager (issue 24), two parts.

`quality` (the demo model, held-out text, exact whatever the machine does): every configuration serves the same
task-shift streams (the domain changing every 1, 8 or 30 requests) at each budget; each request is scored by its
NLL, and differences are paired over requests with a 95% bootstrap interval (analysis/paired.py): against prune,
against the old swap, the task-aware manager alone against it composed with a region, and lightmoe against the
best dynamic cache. The same run checks the simulator against the runtime: each cache's runtime hit rate beside
`simulate_region`'s on the very picks the runtime saw (recorded by an observer), same capacities.

`decode` (the 1.05B random OLMoE-shaped model, every run-time expert read throttled to `--io-bandwidth`): decode
tokens/s of prune, the old swap and the pinned-core caches at each budget, each bundle in a fresh process
(bench_runtime.run_child), interleaved repeats (benchmarks/harness.py). Bound vs prune 1.00: every cache computes
the same top-k as prune over the same bytes and only adds reads.

    python benchmarks/bench_caches.py quality --budgets 0.25,0.5 --blocks 1,8,30 --requests 48
    python benchmarks/bench_caches.py prefetch --budget 0.5 --blocks 8,30 --prefetch-mib 0,0.002 --confidence 0,0.5
    python benchmarks/bench_caches.py decode-quality --budgets 0.25,0.5   # NLL one token per forward
    python benchmarks/bench_caches.py decode --random-olmoe 2 --budgets 0.25,0.5 --io-bandwidth 1e9

`prefetch` (the demo model, needs `just predict-demo`'s predictor): the pinned cache with the predictor's prefetch
bounded by a byte budget per token and a confidence threshold: NLL vs prune, MiB prefetch read, hits it bought.
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

from benchmarks.harness import (  # noqa: E402
    Config,
    Harness,
    HarnessOptions,
    Metric,
    analyse,
    demo_model_and_profile,
    write_json,
)

# label -> (policy, params): the configurations both parts know; `pinned` is the issue's cache
CONFIGS: dict[str, tuple[str, dict]] = {
    "full": ("full", {}),
    "prune": ("prune", {}),
    "swap": ("swap", {}),
    "pinned": ("swap", {"pinned": 0.75, "admission": "demand", "double_buffer": True}),
    "pinned (no spare)": ("swap", {"pinned": 0.75, "admission": "demand"}),
    "pinned (read budget)": ("swap", {"pinned": 0.75, "admission": "demand", "double_buffer": True,
                                      "read_budget": 0.125}),
    # every slot serves (no spare row: the main thread copies a finished read in), reads bounded per token
    "pinned (no spare; read budget)": ("swap", {"pinned": 0.75, "admission": "demand", "read_budget": 0.125}),
    # half the reads: at 1 GB/s each 24 MiB read costs two copies of CPU that 2 decode threads on 2 cores wait for
    "pinned (no spare; read budget 0.0625)": ("swap", {"pinned": 0.75, "admission": "demand", "read_budget": 0.0625}),
    "task-aware": ("task-aware", {}),
    "task-aware + region": ("task-aware", {"region": 0.25}),
}
# the dynamic caches of the seeds' comparison
CACHES = ("swap", "pinned", "pinned (no spare)", "pinned (no spare; read budget 0.0625)")
DECODE = ("prune", "swap", "pinned", "pinned (no spare)", "pinned (read budget)", "pinned (no spare; read budget)",
          "pinned (no spare; read budget 0.0625)", "task-aware")


def _paired(a, b) -> dict:
    """a - b over the same requests: NLL per token (ratio of sums), 95% bootstrap interval."""
    import numpy as np

    from lightmoe_cli.analysis.paired import paired_bootstrap

    tokens = {"s": np.array([s.tokens for s in a.scores], dtype=np.float64)}
    return paired_bootstrap({"s": np.array([s.nll for s in a.scores])}, {"s": np.array([s.nll for s in b.scores])},
                            tokens).to_json()


def _served(rt, stream, name: str, block: int):
    """Serve a stream, recording every layer's router picks per forward (for the simulator)."""
    from lightmoe_cli.evaluation.stream import run_stream

    trace: dict[int, list] = {m.layer_index: [] for m in rt.layers}
    for m in rt.layers:
        m.observers.append(lambda s, index, weights: trace[s.layer_index].append(
            index.reshape(-1, index.shape[-1]).tolist()))
    result = run_stream(rt, name, stream, block)
    rt.finish()
    return result, trace


def _parity(rt, trace) -> dict:
    """The runtime's hit rate and the simulator's on the same picks (reads land one forward later; the loader's
    queue bound and the manager's core moves as the runtime applied them)."""
    import numpy as np

    from lightmoe_cli.analysis.cache_sim import simulate_region

    spec, plans = rt.bundle.runtime_spec, {lp.layer_index: lp for lp in rt.bundle.layers}
    hits = picks = 0
    for m in rt.layers:
        lp = plans[m.layer_index]
        moves: dict[int, list] = {}
        for clock, evict, load in m.core_moves:  # the manager's moves, before the forward they preceded
            moves.setdefault(clock, []).append((evict, load))
        r = simulate_region([np.asarray(s) for s in trace[m.layer_index]], lp.num_experts, lp.resident, lp.pinned,
                            spec.eviction or "lru", spec.admission or "always",
                            spec.decay if spec.decay is not None else 0.9, spare=bool(spec.spare_slots),
                            max_pending=spec.max_pending, read_budget=spec.read_budget, core_moves=moves)
        hits, picks = hits + r.hits, picks + r.accesses
    run_hits, run_picks = sum(m.stats.hits for m in rt.layers), sum(m.stats.picks for m in rt.layers)
    return {"runtime_hit_rate": run_hits / max(1, run_picks), "simulated_hit_rate": hits / max(1, picks),
            "picks": run_picks, "loads": sum(m.stats.loads for m in rt.layers)}


def quality(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream, summarise_streams
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.policies.registry import get_policy
    from lightmoe_cli.runtime.loader import build_runtime

    console = Console(width=200)
    name, model, tok, prof = demo_model_and_profile(args.threads)
    work = ROOT / "runs" / "bench-caches"
    budgets = [float(b) for b in args.budgets.split(",")]
    blocks = [int(b) for b in args.blocks.split(",")]
    labels = [c for c in args.configs.split(",")]
    bundles = {}
    for budget in budgets:
        for label in labels:
            policy, params = CONFIGS[label]
            if not get_policy(policy).uses_budget and ("full", 1.0) in bundles:
                bundles[(label, budget)] = bundles[("full", 1.0)]
                continue
            b = build_bundle(prof, model, tok, name, work / f"{label.replace(' ', '_')}-{budget}",
                             BuildOptions(policy=policy, fraction=budget, params=params), force=True)
            bundles[(label, budget)] = bundles.setdefault((label, 1.0), b) if label == "full" else b
    del model
    t0 = time.perf_counter()
    rows, pairs, parity = [], [], []
    for budget in budgets:
        for block in blocks:
            stream = build_stream(ITEMS_DIR / "ppl", block, args.requests)
            results = {}
            for label in labels:
                rt = build_runtime(bundles[(label, budget)])
                try:
                    results[label], trace = _served(rt, stream, label, block)
                    if rt.bundle.runtime_spec.serving.value == "background":
                        parity.append({"budget": budget, "block": block, "config": label,
                                       "manager": rt.jump is not None} | _parity(rt, trace))
                finally:
                    rt.close()
                console.print(f"[dim]{budget:.2f} block {block}: {label} {results[label].nll_per_token:.4f}[/dim]")
            for row in summarise_streams(list(results.values())):
                rows.append({"budget": budget} | row)
            for a, b in [("pinned", "swap"), ("pinned (no spare)", "swap"),
                         ("pinned (no spare; read budget 0.0625)", "swap"), ("task-aware + region", "task-aware"),
                         ("task-aware + region", "pinned")]:
                if a in results and b in results:
                    pairs.append({"budget": budget, "block": block, "a": a, "b": b} | _paired(results[a], results[b]))
            caches = [c for c in CACHES if c in results]
            if "task-aware" in results and caches:  # the seeds' comparison: vs the best dynamic cache here
                best = min(caches, key=lambda c: results[c].nll_per_token)
                pairs.append({"budget": budget, "block": block, "a": "task-aware", "b": best, "seeds": True}
                             | _paired(results["task-aware"], results[best]))
    table = Table(title=f"NLL per token on task-shift streams of {args.requests} held-out documents (demo model); "
                        "Δ vs prune with its paired 95% interval, * = excludes 0")
    for col in ("budget", "block", "config", "NLL/token", "Δ vs prune", "loads MiB"):
        table.add_column(col)
    for r in rows:
        iv = r.get("vs_prune")
        cell = "-" if not iv else (f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]"
                                   + (" *" if iv["lo"] > 0 or iv["hi"] < 0 else ""))
        table.add_row(f"{r['budget']:.2f}", str(r["block"]), r["config"], f"{r['nll_per_token']:.3f}", cell,
                      f"{r['bytes_loaded'] / 2**20:,.1f}")
    console.print(table)
    pt = Table(title="paired differences a - b (NLL per token, 95% interval)")
    for col in ("budget", "block", "a", "b", "a - b"):
        pt.add_column(col)
    for p in pairs:
        pt.add_row(f"{p['budget']:.2f}", str(p["block"]), p["a"], p["b"],
                   f"{p['diff']:+.3f} [{p['lo']:+.3f}, {p['hi']:+.3f}]" + (" *" if p["lo"] > 0 or p["hi"] < 0
                                                                             else ""))
    console.print(pt)
    st = Table(title="simulator vs runtime: hit rate on the picks the runtime saw (reads land one forward later)")
    for col in ("budget", "block", "config", "runtime", "simulator", "difference (points)", "loads"):
        st.add_column(col)
    for p in parity:
        st.add_row(f"{p['budget']:.2f}", str(p["block"]), p["config"], f"{p['runtime_hit_rate']:.1%}",
                   f"{p['simulated_hit_rate']:.1%}",
                   f"{(p['runtime_hit_rate'] - p['simulated_hit_rate']) * 100:+.2f}", str(p["loads"]))
    console.print(st)
    out = ROOT / "benchmarks" / "results" / args.out
    write_json(out, {"model": name, "requests": args.requests, "blocks": blocks, "budgets": budgets,
                     "configs": {k: CONFIGS[k] for k in labels}, "seconds": time.perf_counter() - t0,
                     "date": time.strftime("%Y-%m-%d"), "rows": rows, "pairs": pairs, "parity": parity})
    console.print(f"wrote {out}")


def prefetch(args) -> None:
    """Prefetch that pays for its bytes: the pinned cache with the predictor's prefetch, unbounded and under byte
    budgets per token and a confidence threshold, on task-shift streams: NLL vs prune (paired), what prefetch
    read and the hits it bought per MiB."""
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream, run_stream
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.runtime.loader import build_runtime

    console = Console(width=200)
    name, model, tok, prof = demo_model_and_profile(args.threads)
    work = ROOT / "runs" / "bench-caches"
    pinned = CONFIGS["pinned"][1]
    configs = {"prune": ("prune", {}), "pinned": ("swap", pinned)}
    for mib in [float(x) for x in args.prefetch_mib.split(",")]:
        for conf in [float(x) for x in args.confidence.split(",")]:
            label = f"pinned + prefetch {'unbounded' if not mib else f'{mib:g} MiB/token'}, confidence {conf:g}"
            configs[label] = ("predict", pinned | {"predictor": str(args.predictor), "prefetch_mib": mib,
                                                   "confidence": conf})
    bundles = {label: build_bundle(prof, model, tok, name, work / f"prefetch-{i}-{args.budget}",
                                   BuildOptions(policy=p, fraction=args.budget, params=params), force=True)
               for i, (label, (p, params)) in enumerate(configs.items())}
    del model
    rows = []
    for block in [int(b) for b in args.blocks.split(",")]:
        stream = build_stream(ITEMS_DIR / "ppl", block, args.requests)
        results = {}
        for label, b in bundles.items():
            rt = build_runtime(b)
            try:
                results[label] = run_stream(rt, label, stream, block)
                rt.finish()
            finally:
                rt.close()
            per = rt.layers[0].writer.bytes_per_expert
            reads = sum(m.stats.prefetch_reads for m in rt.layers)
            picks = max(1, sum(m.stats.picks for m in rt.layers))
            rows.append({"block": block, "config": label, "nll_per_token": results[label].nll_per_token,
                         "hit_rate": sum(m.stats.hits for m in rt.layers) / picks,
                         "prefetch_reads": reads, "prefetch_mib": reads * per / 2**20,
                         "prefetch_hits": sum(m.stats.prefetch_hits for m in rt.layers),
                         "mib_moved": sum(m.stats.bytes_loaded for m in rt.layers) / 2**20})
        for r in rows:
            if r["block"] == block and r["config"] != "prune":
                r["vs_prune"] = _paired(results[r["config"]], results["prune"])
    table = Table(title=f"prefetch under a byte budget (demo model, {args.budget:.0%} memory, {args.requests} "
                        "held-out documents per stream)")
    for col in ("block", "config", "NLL/token", "Δ vs prune", "hit rate", "prefetch MiB", "prefetch hits",
                "hits per MiB", "MiB moved"):
        table.add_column(col)
    for r in rows:
        iv = r.get("vs_prune")
        table.add_row(str(r["block"]), r["config"], f"{r['nll_per_token']:.3f}",
                      "-" if not iv else f"{iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]",
                      f"{r['hit_rate']:.1%}", f"{r['prefetch_mib']:.1f}", str(r["prefetch_hits"]),
                      f"{r['prefetch_hits'] / r['prefetch_mib']:.0f}" if r["prefetch_mib"] else "-",
                      f"{r['mib_moved']:.1f}")
    console.print(table)
    out = ROOT / "benchmarks" / "results" / args.out
    write_json(out, {"model": name, "budget": args.budget, "requests": args.requests, "predictor": str(args.predictor),
                     "configs": {k: v for k, v in configs.items()}, "date": time.strftime("%Y-%m-%d"), "rows": rows})
    console.print(f"wrote {out}")


def decode_quality(args) -> None:
    """Held-out NLL when every forward is one token (decode with a KV cache): where a read budget binds, unlike
    whole-document forwards. Task-shift stream of `--requests` documents, each cut to `--tokens` tokens."""
    import numpy as np
    import torch
    from rich.console import Console

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.runtime.loader import build_runtime

    console = Console(width=200)
    name, model, tok, prof = demo_model_and_profile(args.threads)
    stream = build_stream(ITEMS_DIR / "ppl", args.block, args.requests)
    rows, results = [], {}
    for budget in [float(b) for b in args.budgets.split(",")]:
        for label in args.configs.split(","):
            policy, params = CONFIGS[label]
            b = build_bundle(prof, model, tok, name, ROOT / "runs" / "bench-caches" /
                             f"decode-{label.replace(' ', '_')}-{budget}",
                             BuildOptions(policy=policy, fraction=budget, params=params), force=True)
            rt = build_runtime(b)
            nll, tokens = [], []
            with torch.no_grad():
                for req in stream:
                    ids = rt.tokenizer(req.text, return_tensors="pt").input_ids[:, :args.tokens]
                    past, total = None, 0.0
                    for t in range(ids.shape[1] - 1):
                        out = rt.model(input_ids=ids[:, t:t + 1], past_key_values=past, use_cache=True)
                        past = out.past_key_values
                        total += float(-out.logits[0, -1].float().log_softmax(-1)[ids[0, t + 1]])
                    nll.append(total)
                    tokens.append(ids.shape[1] - 1)
                    rt.checkpoint()
            rt.finish()
            rt.close()
            results[(label, budget)] = (np.array(nll), np.array(tokens, dtype=np.float64))
            row = {"budget": budget, "config": label, "nll_per_token": float(np.sum(nll) / np.sum(tokens)),
                   "loads": sum(m.stats.loads for m in rt.layers)}
            if label != "prune" and ("prune", budget) in results:
                from lightmoe_cli.analysis.paired import paired_bootstrap

                p_nll, p_tok = results[("prune", budget)]
                row["vs_prune"] = paired_bootstrap({"s": np.array(nll)}, {"s": p_nll}, {"s": p_tok}).to_json()
            rows.append(row)
            iv = row.get("vs_prune")
            console.print(f"{budget:.2f} {label}: NLL/token {row['nll_per_token']:.4f}, loads {row['loads']}"
                          + (f", vs prune {iv['diff']:+.3f} [{iv['lo']:+.3f}, {iv['hi']:+.3f}]" if iv else ""))
    out = ROOT / "benchmarks" / "results" / args.out
    write_json(out, {"model": name, "block": args.block, "requests": args.requests, "tokens": args.tokens,
                     "date": time.strftime("%Y-%m-%d"), "rows": rows})
    console.print(f"wrote {out}")


def _reuse(folder: Path, policy: str, params: dict, budget: float):
    """A bundle this benchmark already built with the same policy, parameters and budget (1B bundles take minutes
    to write; the profile is reused too); None otherwise."""
    from lightmoe_cli.bundle.artifact import BundleError, load_bundle

    try:
        b = load_bundle(folder, verify=False) if (folder / "manifest.json").exists() else None
    except BundleError:
        return None
    same = b is not None and b.policy == policy and b.manifest.budget.requested_fraction == budget \
        and all(b.manifest.params.get(k) == v for k, v in params.items())
    return b if same else None


def decode(args) -> None:
    import torch

    from benchmarks.bench_runtime import (
        PROMPTS,
        WORK,
        generated_recipe,
        prompt_tokens,
        random_olmoe,
        representative,
        run_child,
        token_costs,
    )
    from lightmoe_cli.analysis.decode_bytes import shape_from_config
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.loading import load_model_and_tokenizer
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    name = str(random_olmoe(args.random_olmoe, WORK / f"olmoe-{args.random_olmoe}L"))
    tag = Path(name).name
    model, tok = load_model_and_tokenizer(name)
    shape = shape_from_config(model.config, bytes_per_param=next(model.parameters()).element_size())
    costs = token_costs(shape, None, prompt_tokens(tok, PROMPTS), args.new_tokens)
    prof_dir = WORK / f"profile-{tag}"
    if (prof_dir / "manifest.json").exists():
        from lightmoe_cli.profile.artifact import load_profile

        prof = load_profile(prof_dir)
    else:
        prof = run_profile(model, tok, name, load_recipe(generated_recipe(args.profile_tokens)), prof_dir,
                           ProfileSettings(batch_size=4, sample_tokens=128))
    configs, paths = [], {}
    for budget in [float(b) for b in args.budgets.split(",")]:
        for label in args.configs.split(","):
            policy, params = CONFIGS[label]
            folder = WORK / f"{tag}-cache-{label.replace(' ', '_')}-{budget}"
            b = _reuse(folder, policy, params, budget) or build_bundle(prof, model, tok, name, folder,
                                               BuildOptions(policy=policy, fraction=budget, params=params), force=True)
            key = f"{label} {budget:.2f}"
            configs.append(Config(key, baseline=f"prune {budget:.2f}" if label != "prune" else None, costs=costs,
                                  bounds={"decode_tokens_per_s": 1.0},
                                  info={"policy": policy, "params": params, "budget": budget,
                                        "resident_fraction": b.manifest.budget.resident_fraction}))
            paths[key] = b.path
    del model
    # judged only now: building a 1B model's bundles takes minutes, the machine must be quiet for the measuring
    harness = Harness("bench_caches", args.threads, HarnessOptions.from_args(args))
    runs = harness.measure([c.label for c in configs],
                           lambda key: run_child(paths[key], args.threads, args.new_tokens,
                                                 io_bandwidth=args.io_bandwidth))
    for c in configs:
        r = representative(runs[c.label], "decode_tokens_per_s")
        layers = r.get("layers", {}).values()
        picks = max(1, sum(v["picks"] for v in layers))
        c.info |= {"resident experts MiB": r.get("resident_expert_bytes", 0) / 2**20,
                   "loads": sum(v["loads"] for v in layers), "flips": sum(v.get("flips", 0) for v in layers),
                   "hit rate": f"{sum(v['hits'] for v in layers) / picks:.1%}" if layers else "-",
                   "re-routed": f"{sum(v['drops'] for v in layers) / picks:.1%}" if layers else "-"}
    metrics = [Metric("decode_tokens_per_s", "decode tok/s"),
               Metric("peak_rss_mib", "peak RSS MiB", fmt=",.0f", ratio=False)]
    rows = analyse(configs, runs, metrics, harness.bandwidth_gbps)
    title = (f"decode on {tag}, expert reads throttled to {args.io_bandwidth / 1e9:.2f} GB/s ({args.threads} threads, "
             f"{len(PROMPTS)} prompts x {args.new_tokens} new tokens); x base: vs prune at the same budget")
    harness.finish(rows, metrics, title, {"model": name, "io_bandwidth": args.io_bandwidth,
                                          "new_tokens": args.new_tokens, "configs": {k: CONFIGS[k] for k in DECODE}},
                   harness.options.results_dir / args.out,
                   info_columns=("budget", "resident experts MiB", "loads", "flips", "hit rate", "re-routed"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    q = sub.add_parser("quality", help="held-out NLL on task-shift streams + simulator parity (demo model)")
    q.add_argument("--budgets", default="0.25,0.5")
    q.add_argument("--blocks", default="1,8,30")
    q.add_argument("--requests", type=int, default=48)
    q.add_argument("--configs", default=",".join(CONFIGS))
    q.add_argument("--threads", type=int, default=2)
    q.add_argument("--out", default="caches-quality-demo-moe.json")
    f = sub.add_parser("prefetch", help="prefetch under a byte budget per token and a confidence (demo model)")
    f.add_argument("--budget", type=float, default=0.5)
    f.add_argument("--blocks", default="8,30")
    f.add_argument("--requests", type=int, default=48)
    f.add_argument("--prefetch-mib", default="0,0.002", help="MiB of prefetch per token (0: unbounded), a list")
    f.add_argument("--confidence", default="0,0.5", help="least predicted probability of a prefetch, a list")
    f.add_argument("--predictor", type=Path, default=ROOT / "artifacts" / "eval" / "demo-moe-predictor")
    f.add_argument("--threads", type=int, default=2)
    f.add_argument("--out", default="caches-prefetch-demo-moe.json")
    dq = sub.add_parser("decode-quality", help="held-out NLL one token per forward (demo model, KV cache)")
    dq.add_argument("--budgets", default="0.25,0.5")
    dq.add_argument("--configs", default="prune,pinned,pinned (read budget)")
    dq.add_argument("--block", type=int, default=8)
    dq.add_argument("--requests", type=int, default=24)
    dq.add_argument("--tokens", type=int, default=96)
    dq.add_argument("--threads", type=int, default=1)
    dq.add_argument("--out", default="caches-decode-quality-demo-moe.json")
    d = sub.add_parser("decode", help="decode speed at a throttled link (random OLMoE-shaped model)")
    d.add_argument("--random-olmoe", type=int, default=2)
    d.add_argument("--budgets", default="0.25,0.5")
    d.add_argument("--configs", default=",".join(DECODE))
    d.add_argument("--io-bandwidth", type=float, default=1e9)
    d.add_argument("--new-tokens", type=int, default=16)
    d.add_argument("--profile-tokens", type=int, default=4096)
    d.add_argument("--threads", type=int, default=2)
    d.add_argument("--out", default="caches-decode-olmoe-2L-1GBps.json")
    HarnessOptions.add_arguments(d)
    args = ap.parse_args()
    {"quality": quality, "prefetch": prefetch, "decode-quality": decode_quality, "decode": decode}[args.part](args)


if __name__ == "__main__":
    main()
