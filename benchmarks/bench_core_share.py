"""How two replicas share this machine's cores with the fleet's other work: the number the fleet simulator's
shared-cores mode needs (lightmoe_cli/fleet/sim.py, `replica_speed`).

Each "replica" is a process doing a demo replica's own work, one torch thread: a held-out document's prefill and
15 decode steps (`generate_one` on the fleet benchmark's task-aware bundle), over and over. The "outside" process
does what the ingress, Ray's proxy and the client do per request, as pure-Python CPU work (JSON of a scored
document's logprobs) in three bursts with sleeps between, at Poisson arrivals: `--outside-cpu-s` CPU seconds per
request at `--rate` requests per second (defaults: the quiet 2-replica run's 0.029 s outside the replicas per
request, 11.3 requests/s). Configurations, interleaved over `--repeats`: one replica alone, two together, two
with the outside work, one with it. Per configuration: wall and CPU seconds per request of the replicas, the
cores each got (CPU over wall), their speed against one alone, and the outside process's measured cores.

    python benchmarks/bench_core_share.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, sample_load, write_json  # noqa: E402

CONFIGS = {"1 replica alone": (1, False), "2 replicas": (2, False), "2 replicas + outside work": (2, True),
           "1 replica + outside work": (1, True)}


def replica(bundle: Path, go: Path, out: Path, requests: int) -> None:
    import torch

    torch.set_num_threads(1)
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.paths import ITEMS_DIR
    from lightmoe_cli.runtime.generate import generate_one
    from lightmoe_cli.runtime.loader import build_runtime

    rt = build_runtime(load_bundle(bundle))
    docs = [json.loads(x)["text"][:1200] for x in (ITEMS_DIR / "ppl" / "algebra.jsonl").read_text().splitlines()
            if x.strip()][:8]
    with torch.inference_mode():
        for d in docs[:3]:  # warm-up
            generate_one(rt, d, 15, [0])
        out.with_suffix(".ready").write_text("1")
        while not go.exists():
            time.sleep(0.005)
        rows = []
        for i in range(requests):
            w0, c0 = time.perf_counter(), time.process_time()
            generate_one(rt, docs[i % len(docs)], 15, [0])
            rows.append((time.perf_counter() - w0, time.process_time() - c0, time.perf_counter()))
    out.write_text(json.dumps(rows))


def outside(go: Path, stop: Path, out: Path, rate: float, cpu_s: float) -> None:
    rng = random.Random(1)
    body = {"tokens": [f"tok{i}" for i in range(400)], "token_logprobs": [-(i % 7) * 0.37 for i in range(400)],
            "top_logprobs": [None] * 400, "text_offset": list(range(400))}
    while not go.exists():
        time.sleep(0.005)
    w0, c0 = time.perf_counter(), time.process_time()
    due, n = time.perf_counter(), 0
    while not stop.exists():
        due += rng.expovariate(rate)
        while time.perf_counter() < due:
            time.sleep(min(0.002, max(due - time.perf_counter(), 0.0)))
        for _ in range(3):  # the proxy's, the ingress's and the client's part, each then waiting on the next
            b0 = time.process_time()
            while time.process_time() - b0 < cpu_s / 3:
                json.loads(json.dumps(body))
            time.sleep(0.001)
        n += 1
    out.write_text(json.dumps({"requests": n, "cores": (time.process_time() - c0) / (time.perf_counter() - w0)}))


def run_config(n: int, with_outside: bool, bundle: Path, requests: int, rate: float, cpu_s: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        go, stop = tmp / "go", tmp / "stop"
        outs = [tmp / f"replica{i}.json" for i in range(n)]
        procs = [subprocess.Popen([sys.executable, __file__, "--role", "replica", "--bundle", str(bundle),
                                   "--go", str(go), "--out", str(o), "--requests", str(requests)]) for o in outs]
        side = subprocess.Popen([sys.executable, __file__, "--role", "outside", "--go", str(go), "--stop", str(stop),
                                 "--out", str(tmp / "outside.json"), "--rate", str(rate), "--outside-cpu-s",
                                 str(cpu_s)]) if with_outside else None
        while not all(o.with_suffix(".ready").exists() for o in outs):
            if any(p.poll() not in (None, 0) for p in procs):
                raise SystemExit("a replica process failed")
            time.sleep(0.05)
        time.sleep(0.5)
        go.write_text("1")
        for p in procs:
            p.wait()
        stop.write_text("1")
        if side is not None:
            side.wait()
        rows = [json.loads(o.read_text()) for o in outs]
        end = min(r[-1][2] for r in rows)  # only requests while every replica was still running
        kept = [x for r in rows for x in r if x[2] <= end]
        got = {"wall_s": statistics.mean(x[0] for x in kept), "cpu_s": statistics.mean(x[1] for x in kept),
               "requests": len(kept)}
        if side is not None:
            got["outside"] = json.loads((tmp / "outside.json").read_text())
        return got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="main", choices=("main", "replica", "outside"), help=argparse.SUPPRESS)
    ap.add_argument("--go", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--bundle", type=Path, default=ROOT / "runs" / "bench-fleet" / "task-aware")
    ap.add_argument("--requests", type=int, default=50, help="per replica and configuration")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rate", type=float, default=11.3, help="outside work: requests per second")
    ap.add_argument("--outside-cpu-s", type=float, default=0.029, help="outside work: CPU seconds per request")
    ap.add_argument("--out", type=Path, default=RESULTS / "core-share.json")
    args = ap.parse_args()
    if args.role == "replica":
        return replica(args.bundle, args.go, args.out, args.requests)
    if args.role == "outside":
        return outside(args.go, args.stop, args.out, args.rate, args.outside_cpu_s)
    if not (args.bundle / "manifest.json").exists():
        raise SystemExit(f"{args.bundle}: no bundle there; benchmarks/bench_fleet.py builds it (runs/bench-fleet)")

    from lightmoe_cli.fleet.sim import replica_speed

    before = sample_load()
    runs: dict[str, list[dict]] = {k: [] for k in CONFIGS}
    for rep in range(args.repeats):
        for label, (n, side) in CONFIGS.items():
            got = run_config(n, side, args.bundle, args.requests, args.rate, args.outside_cpu_s)
            runs[label].append(got)
            print(f"repeat {rep + 1}: {label}: {got['wall_s'] * 1e3:.1f} ms wall, {got['cpu_s'] * 1e3:.1f} ms CPU per "
                  "request" + (f", outside {got['outside']['cores']:.2f} cores" if "outside" in got else ""),
                  flush=True)
    after = sample_load()
    alone = statistics.median(r["wall_s"] for r in runs["1 replica alone"])
    alone_cpu = statistics.median(r["cpu_s"] for r in runs["1 replica alone"])
    rows = {}
    for label, (n, side) in CONFIGS.items():
        rs = runs[label]
        wall = statistics.median(r["wall_s"] for r in rs)
        row = {"replicas": n, "outside_work": side, "wall_s": wall,
               "cpu_s": statistics.median(r["cpu_s"] for r in rs), "speed": alone / wall,
               # the core each replica got: CPU over wall time of its own requests (free of the alone run's noise)
               "cores_each": statistics.median(r["cpu_s"] / r["wall_s"] for r in rs),
               "speed_range": [alone / max(r["wall_s"] for r in rs), alone / min(r["wall_s"] for r in rs)],
               "cpu_vs_alone": statistics.median(r["cpu_s"] for r in rs) / alone_cpu}
        if side:
            cores = statistics.median(r["outside"]["cores"] for r in rs)
            row |= {"outside_cores": cores, "rule": replica_speed(2.0, n, cores),
                    "in_proportion": min(1.0, 2.0 / (n + cores))}
        rows[label] = row
        lo, hi = row["speed_range"]
        print(f"{label}: {row['cores_each']:.3f} cores each; speed {row['speed']:.3f} (range {lo:.3f}-{hi:.3f}), "
              f"CPU per request x{row['cpu_vs_alone']:.3f}" + (
                  f"; outside {row['outside_cores']:.2f} cores: replica_speed {row['rule']:.3f}, shares in "
                  f"proportion to demand {row['in_proportion']:.3f}" if side else ""))
    other = None
    if before.busy_s is not None and after.busy_s is not None:
        # cores' worth of CPU that processes other than this benchmark's used meanwhile (0: a quiet machine)
        other = {"load1": [before.load1, after.load1], "other_cores": max(
            0.0, after.busy_s - before.busy_s - (after.own_s - before.own_s)) / (after.wall - before.wall)}
    write_json(args.out, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                       if k not in ("role", "go", "stop")},
                          "cpu_count": os.cpu_count(), "machine": other, "configs": rows, "runs": runs,
                          "date": time.strftime("%Y-%m-%d")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
