"""Profiling overhead and memory: routing hooks vs a plain forward over the same tokens, and peak RSS at N and 4N.

Prints a table and writes benchmarks/results/profile.json. Ratios come from one run on one machine; timings are
medians of interleaved repeats with a fixed thread count (benchmarks/harness.py: min and max beside the median,
the machine's load judged, a noisy run refused). Profiling does the plain forward's work plus the hooks', so its
throughput ratio is bounded by 1.0; a ratio above it beyond the noise is flagged.

    python benchmarks/bench_profile.py [--model artifacts/demo-moe] [--tokens 16384] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Config, Harness, HarnessOptions, Metric, analyse  # noqa: E402


def _texts(n_docs: int) -> list[str]:
    from lightmoe_cli.demo.generators import GENERATORS, generate_documents

    per = max(1, n_docs // len(GENERATORS))
    return [d for g in GENERATORS for d in generate_documents(g, per, seed=123)]


def _batches(tok, tokens: int, seq_len: int, batch_size: int):
    from lightmoe_cli.profile.batches import batches, token_windows

    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return list(batches(token_windows(tok, _texts(4000), seq_len, tokens), batch_size, pad))


def _time_plain(model, bs) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        for b in bs:
            model(input_ids=b.input_ids, attention_mask=b.attention_mask, use_cache=False)
    return time.perf_counter() - t0


def _time_profiled(model, layers, bs) -> float:
    from lightmoe_cli.profile.tracer import HiddenSampler, trace_task

    t0 = time.perf_counter()
    trace_task(model, layers, "bench", bs, sampler=HiddenSampler(layers, 64), sample_share=0.01)
    return time.perf_counter() - t0


def peak_rss_child(model: str, tokens: int, threads: int) -> float:
    """Peak RSS (MiB) of a fresh process that profiles `tokens` tokens: isolates each measurement."""
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r});"
            f"import benchmarks.bench_profile as b; b._child({model!r}, {tokens}, {threads})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child(model: str, tokens: int, threads: int) -> None:
    import torch

    from lightmoe_cli.loading import load_model_and_tokenizer
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.profile.batches import batches, token_windows
    from lightmoe_cli.profile.tracer import HiddenSampler, trace_task
    from lightmoe_cli.runtime.generate import peak_rss_bytes

    torch.set_num_threads(threads)
    lm, tok = load_model_and_tokenizer(model)
    layers = get_adapter(lm).moe_layers(lm)
    # batches are generated lazily here, as in `lightmoe profile`: nothing grows with the token count
    bs = batches(token_windows(tok, iter(_texts(100000)), 256, tokens), 8, tok.pad_token_id or 0)
    trace_task(lm, layers, "rss", bs, sampler=HiddenSampler(layers, 64), sample_share=0.01)
    print(peak_rss_bytes() / 2**20)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sample-tokens", type=int, default=512)
    HarnessOptions.add_arguments(ap)
    args = ap.parse_args()
    harness = Harness("bench_profile", args.threads, HarnessOptions.from_args(args))

    import torch
    from rich.table import Table

    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.profile.expert_similarity import layer_similarities
    from lightmoe_cli.profile.tracer import HiddenSampler, trace_task

    torch.set_num_threads(args.threads)
    name = resolve_model(args.model)
    model, tok = load_model_and_tokenizer(name)
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    bs = _batches(tok, args.tokens, 256, 8)
    n_tokens = sum(b.real_tokens for b in bs)
    _time_plain(model, bs[:2])  # warm-up
    timers = {"plain forward": lambda: _time_plain(model, bs), "profiled": lambda: _time_profiled(model, layers, bs)}

    def measure(label: str) -> dict:
        seconds = timers[label]()
        return {"seconds": seconds, "tokens_per_s": n_tokens / seconds}

    runs = harness.measure(list(timers), measure)  # interleaved, so drift hits both alike
    configs = [Config("plain forward"), Config("profiled", baseline="plain forward", bounds={"tokens_per_s": 1.0})]
    metrics = [Metric("tokens_per_s", "tokens/s", fmt=",.0f"), Metric("seconds", "s", higher_is_better=False,
                                                                      ratio=False)]
    rows = analyse(configs, runs, metrics, None)
    t_plain, t_prof = rows[0].stats["seconds"].median, rows[1].stats["seconds"].median

    sampler = HiddenSampler(layers, args.sample_tokens)
    stats = trace_task(model, layers, "sim", bs, sampler=sampler, sample_share=1.0)
    t0 = time.perf_counter()
    sample = sampler.tensors()
    for m in layers:
        li = m.layer_index
        layer_similarities(adapter, m, stats.layers[li].coactivation, sample[f"layer.{li}.hidden"],
                           (sample[f"layer.{li}.index"], sample[f"layer.{li}.weights"]))
    t_sim = time.perf_counter() - t0

    rss_n = peak_rss_child(name, args.tokens, args.threads)
    rss_4n = peak_rss_child(name, 4 * args.tokens, args.threads)

    result = {
        "model": name, "tokens": n_tokens, "threads": args.threads, "repeats": args.repeats,
        "throughput_ratio_check": rows[1].ratios["tokens_per_s"].to_json(),
        "plain_forward_s": t_plain, "profiled_s": t_prof,
        "plain_tokens_per_s": n_tokens / t_plain, "profiled_tokens_per_s": n_tokens / t_prof,
        "throughput_ratio": t_plain / t_prof,
        "similarity_s": t_sim, "similarity_sample_tokens": args.sample_tokens,
        "peak_rss_mib": {str(args.tokens): rss_n, str(4 * args.tokens): rss_4n},
        "peak_rss_ratio_4n_over_n": rss_4n / rss_n,
        "cpu_count": os.cpu_count(),
    }
    table = Table(title=f"profiling overhead on {Path(name).name} ({n_tokens:,} tokens, {args.threads} threads)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("plain forward (median)", f"{t_plain:.2f} s  ({n_tokens / t_plain:,.0f} tok/s)")
    table.add_row("profiled, hooks + sample (median)", f"{t_prof:.2f} s  ({n_tokens / t_prof:,.0f} tok/s)")
    check = rows[1].ratios["tokens_per_s"]
    table.add_row("throughput ratio profiled / plain (bound 1.0)", f"{t_plain / t_prof:.3f}x" +
                  (" above bound: not a result" if check.above_bound else ""))
    table.add_row(f"output+weight+coactivation similarity ({args.sample_tokens} states/layer)", f"{t_sim:.2f} s")
    table.add_row(f"peak RSS at {args.tokens:,} tokens", f"{rss_n:,.0f} MiB")
    table.add_row(f"peak RSS at {4 * args.tokens:,} tokens", f"{rss_4n:,.0f} MiB ({rss_4n / rss_n:.3f}x)")
    harness.finish(rows, metrics, f"plain vs profiled forward on {Path(name).name}", result,
                   harness.options.results_dir / "profile.json", rows_key="timing")
    harness.console.print(table)


if __name__ == "__main__":
    main()
