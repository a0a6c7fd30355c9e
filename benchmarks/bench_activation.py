"""Activation budgets: prefill and decode speed of each rule against the full top-k, on one full bundle.

Each rule's per-layer k (and per-token rule) is planned here on the loaded model (timing LExI's measurement +
search and Alloc-L's sensitivity pass), then every configuration runs in its own process on the same full
bundle, the configurations interleaved over `--repeats` repeats (benchmarks/harness.py). Prints a table and writes
benchmarks/results/activation-<model>.json.

Bounds (lightmoe_cli.analysis.decode_bytes): a rule's decode speed-up over the full top-k is at most the ratio of
bytes read per decoded token (fewer experts, the same lm_head and attention), its prefill speed-up at most the
ratio of FLOPs per prompt token; for batched decode, the experts a step's B tokens touch (expected distinct count
under uniform routing). NAEE's k is a cap: its bound uses the activations its thresholds were calibrated to keep.

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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Config, Harness, HarnessOptions, Metric, analyse  # noqa: E402


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


def expected_active(plan) -> dict[int, float]:
    """Experts a token is expected to run per layer under a plan: its per-layer k (Alloc-T pools k x T slots over
    T tokens, k per token on average), except NAEE's thresholds, calibrated to keep on average the layer's share
    of the budget (B x K_l / sum K) while its k is only the cap."""
    if plan.beta is not None:
        total = sum(plan.k.values())
        return {li: plan.budget * k / total for li, k in plan.k.items()}
    return {li: float(k) for li, k in plan.k.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-olmoe", type=int, default=0)
    ap.add_argument("--rules", default="topk,lexi,alloc,alloc-t,naee")
    ap.add_argument("--active", type=float, default=0.5)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    ap.add_argument("--batch", type=int, default=8, help="also decode this many requests together (0: skip)")
    HarnessOptions.add_arguments(ap)
    args = ap.parse_args()
    harness = Harness("bench_activation", args.threads, HarnessOptions.from_args(args))

    import torch

    from benchmarks.bench_runtime import PROMPTS, WORK, generated_recipe, prompt_tokens, random_olmoe, token_costs
    from lightmoe_cli.analysis.decode_bytes import decode_bytes, shape_from_config, speedup_bound
    from lightmoe_cli.bundle.alloc import alloc_sensitivity, calibration_windows, routing_weights
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.bundle.lexi import lexi_deltas
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.manifest import to_json
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.policies.activation_budget import plan_activation
    from lightmoe_cli.profile.run import ensure_profile

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    name = str(random_olmoe(args.random_olmoe, WORK / f"olmoe-{args.random_olmoe}L")) if args.random_olmoe \
        else resolve_model(args.model)
    tag = Path(name).name
    model, tok = load_model_and_tokenizer(name)
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    shape = shape_from_config(model.config, bytes_per_param=next(model.parameters()).element_size())
    prompt_len = prompt_tokens(tok, [p * 4 for p in PROMPTS])  # the child's prompts
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

    base = "full top-k"
    configs = [Config(base, costs=token_costs(shape, None, prompt_len, args.new_tokens, args.batch),
                      info={"k per layer": "/".join(str(v) for _, v in sorted(top_k.items())), "k": top_k,
                            "planning s": 0.0})]
    for rule, plan in plans.items():
        active = expected_active(plan)
        ks = "/".join(str(v) for _, v in sorted(plan.k.items()))
        if plan.beta is not None:
            ks += f" (~{sum(active.values()):.1f} run)"
        configs.append(Config(rule, baseline=base, costs=token_costs(shape, active, prompt_len, args.new_tokens,
                                                                     args.batch),
                              info={"k per layer": ks, "k": plan.k, "expected_active": active,
                                    "planning s": cost[rule]}))
    plan_json = {rule: to_json(plan) for rule, plan in plans.items()}
    runs = harness.measure([c.label for c in configs],
                           lambda label: run_child(full.path, plan_json.get(label), args.threads, args.new_tokens,
                                                   args.batch))
    metrics = [Metric("prefill_tokens_per_s", "prefill tok/s", fmt=",.1f"),
               Metric("decode_tokens_per_s", "decode tok/s")]
    if args.batch:
        metrics.append(Metric("batched_decode_tokens_per_s", f"decode x{args.batch} tok/s"))
    rows = analyse(configs, runs, metrics, harness.bandwidth_gbps)
    full_bytes = decode_bytes(shape, None)
    title = (f"activation budgets on {tag} at active {args.active} ({args.threads} threads; full top-k reads "
             f"{full_bytes.total / 1e9:.3f} GB per decoded token, experts {full_bytes.routed_experts / 1e9:.3f}); "
             f"x base: vs the full top-k")
    payload = {"model": name, "active": args.active, "threads": args.threads, "batch": args.batch,
               "new_tokens": args.new_tokens, "prompt_tokens_mean": prompt_len, "model_shape": asdict(shape),
               "decode_bytes_per_token": {c.label: c.costs["decode_tokens_per_s"].to_json() for c in configs},
               "decode_bound": {c.label: speedup_bound(configs[0].costs["decode_tokens_per_s"],
                                                       c.costs["decode_tokens_per_s"]) for c in configs},
               "plans": {k: asdict(v) | {"measured": {}} for k, v in plans.items()}}
    harness.finish(rows, metrics, title, payload, harness.options.results_dir / f"activation-{tag}{args.tag}.json",
                   info_columns=("k per layer", "planning s"))


if __name__ == "__main__":
    main()
