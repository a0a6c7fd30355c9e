"""Does a replica that sees fewer tasks run faster per step? One engine, apart from any fleet.

Why: on the 2-replica fleet at 12 requests/s the affinity router's replicas (4 tasks each) decoded a step about
8% faster, at equal rows, than the round-robin router's (all 8 tasks), and prefilled 5% faster against the model
(docs/fleet.md, "Repeats at 12 requests/s"); the fleet model prices both alike, so it misses the gap between the
routers' latencies. Measured inside the fleet, that gap cannot feed the model (the check would then be fitted to
the points it judges). This probe measures it on its own.

One engine (serve/engine.py, the server's own, without HTTP or Ray), 1 torch thread, the fleet benchmark's
task-aware bundle at 50% memory, task scheduling (`--max-batch`, `--max-wait-ms` as the fleet's), fed the
held-out interleaved stream restricted to a set of tasks, closed loop with `--concurrency` requests outstanding
(enough to keep it busy: latency is not the point), each request as the load benchmark's (echo + logprobs, greedy,
`--max-tokens` new tokens), its task named (as the fleet's ingress names it). Configurations, interleaved over
`--repeats`: the affinity fleet's two replicas' task sets (4 tasks each) and all 8 tasks (a round-robin
replica's). Timed around the engine's own methods: every decode step (its rows), every prefill (its prompt
tokens), every set move. Per configuration: the fits step = a + b * rows and prefill = c + d * tokens, the step at
1 and 2 rows, moves per request and the engine's busy seconds per request, and against all 8 tasks as ratios.

    python benchmarks/bench_task_locality.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, sample_load, write_json  # noqa: E402

# the affinity fleet's assignment on this load (fleet-records-3b.json: the same in every repeat) and all tasks
CONFIGS = {"4 tasks (replica 0)": ("algebra", "bible_en", "dictionary", "python_docs"),
           "4 tasks (replica 1)": ("arithmetic", "bible_es", "python_code", "strings"),
           "8 tasks": ("algebra", "arithmetic", "bible_en", "bible_es", "dictionary", "python_code", "python_docs",
                       "strings")}


def line_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - slope * mx, slope


def run_config(engine_parts, docs, concurrency: int, max_tokens: int) -> dict:
    """Every document through one fresh engine (same runtime), `concurrency` outstanding; its timings."""
    from lightmoe_cli.serve.engine import Engine, Job
    from lightmoe_cli.serve.sampling import Sampling
    from lightmoe_cli.serve.scheduler import TaskScheduler
    from lightmoe_cli.serve.steplog import StepLog

    rt, tok, max_batch, max_wait_s = engine_parts
    engine = Engine(rt, TaskScheduler(max_batch, max_wait_s), None, max_queue=10_000, threads=1)
    log = StepLog().attach(engine)  # every step, prefill and set move, timed where the engine calls them
    slots = threading.Semaphore(concurrency)
    done = threading.Event()
    left = [len(docs)]
    lock = threading.Lock()

    def finished(ev: dict) -> None:
        if ev.get("type") in ("done", "error"):
            slots.release()
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

    engine.start()
    t0 = time.perf_counter()
    for doc in docs:
        slots.acquire()
        ids = tok(doc.text, add_special_tokens=False).input_ids
        engine.submit(Job(ids, max_tokens, Sampling(0.0, 1.0, None, 0), emit=finished, echo=True,
                          task_hint=doc.domain, prompt_text=doc.text))
    done.wait()
    wall = time.perf_counter() - t0
    engine.stop()
    n = len(docs)
    steps = [(size, sec) for _, sec, kind, size in log.records if kind == "step"]
    prefills = [(size, sec) for _, sec, kind, size in log.records if kind == "prefill"]
    moves = [sec for _, sec, kind, _ in log.records if kind == "move"]
    a, b = line_fit([r for r, _ in steps], [s for _, s in steps])
    c, d = line_fit([t for t, _ in prefills], [s for _, s in prefills])
    busy = sum(s for _, s in steps) + sum(s for _, s in prefills) + sum(moves)
    at = {k: statistics.median([s for r, s in steps if r == k] or [float("nan")]) for k in (1, 2)}
    return {"requests": n, "wall_s": wall, "busy_s_per_request": busy / n, "step_fixed_s": a, "step_per_row_s": b,
            "prefill_fixed_s": c, "prefill_per_token_s": d, "step_1_row_s": at[1], "step_2_rows_s": at[2],
            "mean_rows": statistics.fmean(r for r, _ in steps), "steps": len(steps),
            "moves_per_request": len(moves) / n,
            "move_s": statistics.median(moves) if moves else None,
            "prefill_s_per_token": sum(s for _, s in prefills) / sum(t for t, _ in prefills)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=96, help="documents per configuration and repeat")
    ap.add_argument("--concurrency", type=int, default=6, help="requests outstanding (the 2-replica fleet at 12 "
                    "requests/s held about 3-6 per replica)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=500.0)
    ap.add_argument("--doc-chars", type=int, default=1200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "task-locality.json")
    args = ap.parse_args()

    import dataclasses

    import torch
    from rich.console import Console
    from rich.table import Table

    from benchmarks.harness import demo_model_and_profile
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(1)
    path = ROOT / "runs" / "bench-fleet" / "task-aware"
    if not (path / "manifest.json").exists():  # the fleet benchmark's bundle, built the same way
        name, model, tok, prof = demo_model_and_profile(1)
        build_bundle(prof, model, tok, name, path, BuildOptions(policy="task-aware", fraction=0.5), force=True)
        del model
    rt = build_runtime(load_bundle(path))
    stream = [dataclasses.replace(d, text=d.text[: args.doc_chars])
              for d in build_stream(ITEMS_DIR / "ppl", 1, 8 * args.requests)]
    parts = (rt, rt.tokenizer, args.max_batch, args.max_wait_ms / 1000.0)
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    load0 = sample_load()
    for rep in range(args.repeats):
        for label, tasks in CONFIGS.items():
            docs = [d for d in stream if d.domain in tasks][: args.requests]
            print(f"repeat {rep + 1}/{args.repeats}: {label}", flush=True)
            runs[label].append(run_config(parts, docs, args.concurrency, args.max_tokens))
    load1 = sample_load()
    keys = ("busy_s_per_request", "step_1_row_s", "step_2_rows_s", "step_fixed_s", "step_per_row_s",
            "prefill_s_per_token", "mean_rows", "moves_per_request", "move_s")
    summary = {k: {x: statistics.median(r[x] for r in rs) for x in keys} for k, rs in runs.items()}
    for k, s in summary.items():  # per repeat, against the same repeat's 8 tasks, then the median
        s["vs_8_tasks"] = {x: statistics.median(r[x] / b[x] for r, b in zip(runs[k], runs["8 tasks"], strict=True))
                           for x in ("step_1_row_s", "step_2_rows_s", "prefill_s_per_token", "busy_s_per_request")}
    t = Table(title=f"one engine, 1 thread, {args.requests} requests, {args.concurrency} outstanding; median of "
                    f"{args.repeats} interleaved repeats (ratios: against 8 tasks in the same repeat)")
    for col in ("tasks", "step 1 row ms", "step 2 rows ms", "prefill ms / token", "mean rows", "moves / req",
                "busy ms / req", "step 1 / 2 rows vs 8", "prefill vs 8"):
        t.add_column(col)
    for k, s in summary.items():
        v = s["vs_8_tasks"]
        t.add_row(k, f"{s['step_1_row_s'] * 1e3:.2f}", f"{s['step_2_rows_s'] * 1e3:.2f}",
                  f"{s['prefill_s_per_token'] * 1e3:.3f}", f"{s['mean_rows']:.2f}", f"{s['moves_per_request']:.2f}",
                  f"{s['busy_s_per_request'] * 1e3:.1f}", f"{v['step_1_row_s']:.3f} / {v['step_2_rows_s']:.3f}",
                  f"{v['prefill_s_per_token']:.3f}")
    Console(width=160).print(t)
    other = (load1.busy_s - load0.busy_s - (load1.own_s - load0.own_s)) / (load1.wall - load0.wall) \
        if load0.busy_s is not None and load1.busy_s is not None else None
    write_json(args.out, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                          "configs": CONFIGS, "summary": summary, "runs": runs, "other_cores": other,
                          "date": time.strftime("%Y-%m-%d")})
    print(f"other processes used {other:.2f} cores meanwhile" if other is not None else "", f"wrote {args.out}")


if __name__ == "__main__":
    main()
