"""Runtime speed and memory per policy and budget, with the baselines, in one run.

For a model (the demo model, or a random-weight model of OLMoE's shape with fewer layers, >= 1B parameters),
profile it briefly, build bundles (full, prune, lru, lightmoe at each budget), then run each bundle in a fresh
process (so peak RSS is its own) on the same prompts. Also times the native transformers model against the `full`
runtime (managed-layer overhead). Prints a table and writes benchmarks/results/runtime-<model>.json.

    python benchmarks/bench_runtime.py                       # demo model
    python benchmarks/bench_runtime.py --random-olmoe 2      # OLMoE shape, 2 layers (~1.05B params, fp32)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "data" / "bench"
PROMPTS = ["12 + 7 = 19\n45 - 3 = ", "def read_lines(path):\n", "1:1 EN el principio", "reverse lamp -> "]


def _child(bundle: str, threads: int, new_tokens: int, native: bool, io_bandwidth: float | None = None) -> None:
    """Run one bundle (or the native model) and print its stats as JSON on the last line."""
    import torch

    from lightmoe_cli.runtime.generate import peak_rss_bytes

    torch.set_num_threads(threads)
    if native:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from lightmoe_cli.runtime.generate import RunStats, generate_one
        from lightmoe_cli.runtime.loader import Runtime

        mdir = Path(bundle)
        model = AutoModelForCausalLM.from_pretrained(mdir, dtype=torch.float32).eval()
        rt = Runtime(model, AutoTokenizer.from_pretrained(mdir), None, [], None, check_every=10**9)
        rt.checkpoint = lambda boundary=True: 0
        stats = RunStats()
        done = [0]
        generate_one(rt, PROMPTS[0], 4, done)  # warm-up
        stats.requests = [generate_one(rt, p, new_tokens, done) for p in PROMPTS]
        out = {"decode_tokens_per_s": stats.decode_tokens_per_s, "prefill_tokens_per_s": stats.prefill_tokens_per_s}
    else:
        from lightmoe_cli.bundle.artifact import load_bundle
        from lightmoe_cli.runtime.generate import generate_one, run_requests
        from lightmoe_cli.runtime.loader import build_runtime

        rt = build_runtime(load_bundle(Path(bundle), verify=False), io_bandwidth=io_bandwidth)
        generate_one(rt, PROMPTS[0], 4, [0])  # warm-up (its statistics are reset below)
        for m in rt.layers:
            m.stats.__init__()
        stats = run_requests(rt, PROMPTS, new_tokens, io_bandwidth=io_bandwidth)
        out = stats.to_json()
        out.pop("requests")
    out["peak_rss_mib"] = peak_rss_bytes() / 2**20
    print(json.dumps(out))


def run_child(bundle: Path, threads: int, new_tokens: int, native: bool = False,
              io_bandwidth: float | None = None) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import benchmarks.bench_runtime as b; "
            f"b._child({str(bundle)!r}, {threads}, {new_tokens}, {native}, {io_bandwidth!r})")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(res.stderr[-2000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def generated_recipe(max_tokens: int) -> Path:
    """A calibration recipe over our generated domains (a random-weight model has no domain of its own)."""
    from lightmoe_cli.demo.generators import GENERATORS, generate_documents

    texts = WORK / "calib"
    texts.mkdir(parents=True, exist_ok=True)
    lines = []
    for g in GENERATORS:
        (texts / f"{g}.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in generate_documents(g, 60, 9)))
        lines.append(f"  - {{name: {g}, source: {{type: jsonl, path: {texts / (g + '.jsonl')}}}}}")
    (texts / "recipe.yaml").write_text(f"max_tokens: {max_tokens}\ntasks:\n" + "\n".join(lines) + "\n")
    return texts / "recipe.yaml"


def random_olmoe(layers: int, out: Path) -> Path:
    """A random-weight OLMoE-shaped model (hidden 2048, 64 experts x 1024, top-8) with the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(ROOT / "artifacts" / "demo-moe")
    cfg = OlmoeConfig(vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=layers,
                      num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    with torch.no_grad():
        model = OlmoeForCausalLM(cfg)
        for p in model.parameters():  # fast init: the values do not matter for speed and memory
            p.normal_(0, 0.02)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-olmoe", type=int, default=0, help="layers of a random OLMoE-shaped model")
    ap.add_argument("--budgets", default="0.25,0.5,0.75")
    ap.add_argument("--policies", default="prune,lru,lightmoe")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-tokens", type=int, default=4096)
    ap.add_argument("--io-bandwidth", type=float, default=None, help="bytes/s: expert reads throttled for real")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    name = str(random_olmoe(args.random_olmoe, WORK / f"olmoe-{args.random_olmoe}L")) if args.random_olmoe \
        else resolve_model(args.model)
    tag = Path(name).name
    model, tok = load_model_and_tokenizer(name)
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    prof = run_profile(model, tok, name, load_recipe(generated_recipe(args.profile_tokens)), WORK / f"profile-{tag}",
                       ProfileSettings(batch_size=4, sample_tokens=128))
    profile_s = time.perf_counter() - t0

    rows = []
    full = build_bundle(prof, model, tok, name, WORK / f"{tag}-full", BuildOptions(policy="full"))
    native = run_child(Path(name), args.threads, args.new_tokens, native=True)
    rows.append({"policy": "native transformers", "budget": 1.0, **native})
    rows.append({"policy": "full", "budget": 1.0, **run_child(full.path, args.threads, args.new_tokens)})
    for budget in [float(b) for b in args.budgets.split(",")]:
        for policy in args.policies.split(","):
            b = build_bundle(prof, model, tok, name, WORK / f"{tag}-{policy}-{budget}",
                             BuildOptions(policy=policy, fraction=budget))
            r = run_child(b.path, args.threads, args.new_tokens, io_bandwidth=args.io_bandwidth)
            rows.append({"policy": policy, "budget": budget, **r,
                         "resident_fraction": b.manifest.budget.resident_fraction})
    del model
    by = {(r["policy"], r["budget"]): r for r in rows}
    for r in rows:
        p = by.get(("prune", r["budget"]))
        r["decode_vs_prune"] = r["decode_tokens_per_s"] / p["decode_tokens_per_s"] if p else None
    overhead = by[("full", 1.0)]["decode_tokens_per_s"] / by[("native transformers", 1.0)]["decode_tokens_per_s"]

    table = Table(title=f"runtime on {tag} ({params / 1e6:,.0f}M params, {args.threads} threads, "
                        f"{len(PROMPTS)} prompts x {args.new_tokens} new tokens)")
    for col in ("policy", "budget", "resident experts MiB", "non-expert MiB", "peak RSS MiB", "prefill tok/s",
                "decode tok/s", "decode vs prune", "loads", "stalls", "re-routed", "swaps"):
        table.add_column(col, justify="right")
    for r in rows:
        layers = r.get("layers", {}).values()
        loads = sum(v["loads"] for v in layers)
        stalls = sum(v.get("stalls", 0) for v in layers)
        picks = max(1, sum(v["picks"] for v in layers))
        rerouted = sum(v["drops"] for v in layers) / picks
        table.add_row(r["policy"], f"{r['budget']:.2f}", f"{r.get('resident_expert_bytes', 0) / 2**20:,.1f}",
                      f"{r.get('non_expert_bytes', 0) / 2**20:,.1f}", f"{r['peak_rss_mib']:,.0f}",
                      f"{r['prefill_tokens_per_s']:,.1f}", f"{r['decode_tokens_per_s']:,.2f}",
                      f"{r['decode_vs_prune']:.3f}" if r["decode_vs_prune"] else "-", str(loads), str(stalls),
                      f"{rerouted:.1%}" if layers else "-", str(len(r.get("swaps", []))))
    Console(width=170).print(table)
    Console(width=170).print(f"managed-layer overhead: full runtime decode = {overhead:.3f}x native transformers")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"runtime-{tag}{args.tag}.json"
    out.write_text(json.dumps({"model": name, "parameters": params, "threads": args.threads,
                               "io_bandwidth": args.io_bandwidth,
                               "profile_seconds": profile_s, "managed_overhead_ratio": overhead, "rows": rows,
                               "date": time.strftime("%Y-%m-%d")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
