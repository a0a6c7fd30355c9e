"""Runtime speed and memory per policy and budget, with the baselines, in one run.

For a model (the demo model, or a random-weight model of OLMoE's shape with fewer layers, >= 1B parameters),
profile it briefly, build bundles (full, prune, lru, lightmoe at each budget), then run each bundle in a fresh
process (so peak RSS is its own) on the same prompts, the configurations interleaved over `--repeats` repeats
(benchmarks/harness.py: median [min-max], the machine's load judged, the memory bandwidth probed). Also times the
native transformers model against the `full` runtime (managed-layer overhead). Prints a table and writes
benchmarks/results/runtime-<model>.json.

Bounds: every policy activates the model's top-k experts per token, so each reads the same bytes per decoded
token (and does the same FLOPs per prompt token) as prune at its budget: the bound on "x prune" is 1.0, and a
policy faster than prune beyond the noise is flagged, not reported. `full` vs native transformers compares two
code paths on the same bytes: no bound, the ratio is the managed layers' overhead. On-demand loads (lru, swap)
read from storage on top of that, which can only slow them.

    python benchmarks/bench_runtime.py                       # demo model
    python benchmarks/bench_runtime.py --random-olmoe 2      # OLMoE shape, 2 layers (~1.05B params, fp32)
    just bench-smoke     # smoke test: one repeat, 4 tokens, a 64 MiB probe, marked noisy, JSON in data/bench/smoke
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
        rt.close()  # stop the background loader before exit: a daemon thread inside torch at exit aborts the process
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


def prompt_tokens(tok, prompts: list[str]) -> float:
    """Mean tokens per prompt as the runtime encodes them (the length a prefill's FLOPs and the KV cache grow with)."""
    return sum(len(tok(p).input_ids) for p in prompts) / len(prompts)


def token_costs(shape, active, prompt_len: float, new_tokens: int, batch: int = 0) -> dict:
    """Per metric key, what one token costs a configuration: prefill FLOPs, decode bytes (KV cache at the mean
    context of a decoded token) and, with `batch`, decode bytes when `batch` requests share each step."""
    from lightmoe_cli.analysis.decode_bytes import decode_bytes, prefill_flops

    context = int(round(prompt_len + new_tokens / 2))
    costs = {"prefill_tokens_per_s": prefill_flops(shape, active, max(1, int(round(prompt_len)))),
             "decode_tokens_per_s": decode_bytes(shape, active, batch=1, context=context)}
    if batch:
        costs["batched_decode_tokens_per_s"] = decode_bytes(shape, active, batch=batch, context=context)
    return costs


def representative(runs: list[dict], key: str) -> dict:
    """The repeat whose `key` is nearest the median: its counts (loads, stalls, swaps) go in the table."""
    med = sorted(r[key] for r in runs)[len(runs) // 2]
    return min(runs, key=lambda r: abs(r[key] - med))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--random-olmoe", type=int, default=0, help="layers of a random OLMoE-shaped model")
    ap.add_argument("--budgets", default="0.25,0.5,0.75")
    ap.add_argument("--policies", default="prune,lru,lightmoe")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile-tokens", type=int, default=4096)
    ap.add_argument("--io-bandwidth", type=float, default=None, help="bytes/s: expert reads throttled for real")
    ap.add_argument("--tag", default="", help="suffix of the results file name")
    HarnessOptions.add_arguments(ap)
    args = ap.parse_args()
    harness = Harness("bench_runtime", args.threads, HarnessOptions.from_args(args))

    import torch

    from lightmoe_cli.analysis.decode_bytes import decode_bytes, shape_from_config
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
    shape = shape_from_config(model.config, bytes_per_param=next(model.parameters()).element_size())
    costs = token_costs(shape, None, prompt_tokens(tok, PROMPTS), args.new_tokens)  # every row runs the top-k
    t0 = time.perf_counter()
    prof = run_profile(model, tok, name, load_recipe(generated_recipe(args.profile_tokens)), WORK / f"profile-{tag}",
                       ProfileSettings(batch_size=4, sample_tokens=128))
    profile_s = time.perf_counter() - t0

    native, full = "native transformers", "full"
    configs = [Config(native, costs=costs, info={"policy": native, "budget": 1.0}),
               # managed vs native runtime: two code paths on equal bytes, so no bound (the overhead is the result)
               Config(full, baseline=native, costs=costs, bounds={k: None for k in costs},
                      info={"policy": "full", "budget": 1.0})]
    paths = {native: (Path(name), True, None),
             full: (build_bundle(prof, model, tok, name, WORK / f"{tag}-full", BuildOptions(policy="full")).path,
                    False, None)}
    for budget in [float(b) for b in args.budgets.split(",")]:
        for policy in args.policies.split(","):
            b = build_bundle(prof, model, tok, name, WORK / f"{tag}-{policy}-{budget}",
                             BuildOptions(policy=policy, fraction=budget))
            label = f"{policy} {budget:.2f}"
            # every policy activates the top-k experts per token: the same bytes as prune, so the bound is 1.0
            base = f"prune {budget:.2f}" if policy != "prune" and "prune" in args.policies.split(",") else None
            configs.append(Config(label, baseline=base, costs=costs,
                                  info={"policy": policy, "budget": budget,
                                        "resident_fraction": b.manifest.budget.resident_fraction}))
            paths[label] = (b.path, False, args.io_bandwidth)
    del model

    def measure(label: str) -> dict:
        path, is_native, io = paths[label]
        return run_child(path, args.threads, args.new_tokens, native=is_native, io_bandwidth=io)

    runs = harness.measure([c.label for c in configs], measure)
    for c in configs:  # counts of the median-decode repeat, for the table and the record
        r = representative(runs[c.label], "decode_tokens_per_s")
        layers = r.get("layers", {}).values()
        picks = max(1, sum(v["picks"] for v in layers))
        c.info |= {"resident experts MiB": r.get("resident_expert_bytes", 0) / 2**20,
                   "non-expert MiB": r.get("non_expert_bytes", 0) / 2**20,
                   "loads": sum(v["loads"] for v in layers), "stalls": sum(v.get("stalls", 0) for v in layers),
                   "re-routed": f"{sum(v['drops'] for v in layers) / picks:.1%}" if layers else "-",
                   "swaps": len(r.get("swaps", [])), "layers": r.get("layers", {}), "swap_log": r.get("swaps", [])}
    metrics = [Metric("prefill_tokens_per_s", "prefill tok/s", fmt=",.1f"),
               Metric("decode_tokens_per_s", "decode tok/s"),
               Metric("peak_rss_mib", "peak RSS MiB", fmt=",.0f", ratio=False)]
    rows = analyse(configs, runs, metrics, harness.bandwidth_gbps)
    overhead = next((r.ratios.get("decode_tokens_per_s") for r in rows if r.config.label == full), None)
    title = (f"runtime on {tag} ({params / 1e6:,.0f}M params, {args.threads} threads, {len(PROMPTS)} prompts x "
             f"{args.new_tokens} new tokens; {costs['decode_tokens_per_s'].total / 1e9:.3f} GB read per decoded "
             f"token); x base: vs prune at the same budget (full: vs native transformers)")
    one = decode_bytes(shape, None)
    payload = {"model": name, "parameters": params, "threads": args.threads, "io_bandwidth": args.io_bandwidth,
               "new_tokens": args.new_tokens, "profile_seconds": profile_s,
               "managed_overhead_ratio": overhead.ratio if overhead else None,
               "model_shape": asdict(shape), "decode_bytes_per_token": one.to_json()}
    harness.finish(rows, metrics, title, payload, harness.options.results_dir / f"runtime-{tag}{args.tag}.json",
                   info_columns=("budget", "resident experts MiB", "non-expert MiB", "loads", "stalls", "re-routed",
                                 "swaps"))
    if overhead:
        harness.console.print(f"managed-layer overhead: full runtime decode = {overhead.ratio:.3f}x native "
                              "transformers")


if __name__ == "__main__":
    main()
