"""`lightmoe serve --replicas K` under the serve benchmark's load, on the demo model at 50% memory.

Traffic and client are bench_serve.py's (imported, not copied): `--requests` held-out documents of the 8 demo
domains, the domain changing at every request, the official `openai` async client with Poisson arrivals through
at most `--clients` concurrent requests, each request echo + logprobs + `--max-tokens` new tokens, so the server
scores the document (held-out NLL per token through the fleet).

Phases:
- load: one process per configuration (bench_serve's ServerProcess runs `lightmoe serve`, with `--replicas`
  for a fleet): full and prune (NLL references), one server with FIFO + the task-jump manager (the traffic on
  which that closes ~0% of prune's gap), a 1-replica fleet (2 threads, and 1 thread: the replica of the 2-replica
  fleet), and 2 replicas of 1 thread with round-robin and with affinity routing. Throughput, p50/p99 latency,
  layer swaps and set moves per request, NLL and the share of prune's gap closed. Every request's record is kept
  (`records`): its domain, detected task, prompt tokens, the replica that served it, the client's due, send and
  answer times, the replica's meter (`queue_seconds`, `first_token_seconds`, `done_seconds`, `answer_seconds`)
  and, for a fleet, its hops from Ray Serve's access logs (fleet_hops.py, joined by request id); `breakdown`
  splits each configuration's latency into its parts (fleet_hops.split) by the company its replica had.
- calibrate: the per-request costs the fleet simulator (sim_fleet.py) is built from, measured on a 1-replica,
  1-thread fleet: bursts of n same-task requests (n = 1, 4, 8) with 1 and with `--max-tokens` new tokens, each
  burst once right after a set move and once again on the same set; per burst its prompt tokens and the time
  each request spent outside the replica's engine (latency - the replica's own arrival-to-first-token), and
  over the phase the cores other processes used (a calibration on a busy machine reads every cost high). With
  `--repeats N` and both phases, every repeat's load is followed by its own calibration, and `repeats` keeps
  each repeat's summaries, per-request records and calibration (sim_fleet.py checks the model against each).
- shift: a 2-replica affinity fleet, `--shift-requests` interleaved documents and then as many of one domain:
  how the assignment follows the mix (reassignments, the hot task's replicas, overflow, set moves).
- kill: a 2-replica affinity fleet under the same load; one replica is SIGKILLed `--kill-at` seconds in. Every
  request's outcome as the client saw it (answered, refused with 503, or lost: no HTTP answer), the ingress's
  counts (sent, answered, retried, refused, broken) and how long until the replica was back and had tasks.

    python benchmarks/bench_fleet.py --requests 200 --clients 16 --rate 12
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import ServerProcess, load, nll_table, summarise_load  # noqa: E402
from benchmarks.fleet_hops import breakdown, join, latest_session  # noqa: E402
from benchmarks.harness import (  # noqa: E402
    Config,
    Harness,
    HarnessOptions,
    Metric,
    NoisePolicy,
    analyse,
    demo_model_and_profile,
    sample_load,
    write_json,
)
from benchmarks.step_logs import fit_costs  # noqa: E402
from lightmoe_cli.serve import steplog  # noqa: E402

BUDGET = 0.5


def configs(threads: int) -> dict[str, tuple[str, int, list[str]]]:
    """label -> (bundle key, torch threads (per replica in a fleet), extra `lightmoe serve` flags)."""
    b = f"{BUDGET:.0%}"
    fifo = ["--schedule", "fifo"]
    return {"full": ("full", threads, fifo), f"prune {b}": ("prune", threads, fifo),
            f"1 server FIFO+jump {b}": ("task-aware", threads, fifo),
            f"1 replica x{threads} threads {b}": ("task-aware", threads, ["--replicas", "1"]),
            f"1 replica x1 thread {b}": ("task-aware", 1, ["--replicas", "1"]),
            f"2 replicas round-robin {b}": ("task-aware", 1, ["--replicas", "2", "--router", "round-robin"]),
            f"2 replicas affinity {b}": ("task-aware", 1, ["--replicas", "2"])}


class Fleet(ServerProcess):
    """`lightmoe serve` in its own process (bench_serve's ServerProcess; with `--replicas` in the flags, a fleet,
    whose `--threads` is per replica), ready when /health says every replica is live."""

    def __enter__(self) -> Fleet:
        import httpx

        super().__enter__()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            h = httpx.get(self.url + "/health", timeout=30).json()
            if all(r.get("live", True) for r in h.get("replicas", [{}])):
                return self
            time.sleep(0.5)
        raise SystemExit("fleet replicas did not come up")

    def health(self) -> dict:
        import httpx

        return httpx.get(self.url + "/health", timeout=60).json()


def cpu_by_role(pid: int, each_replica: bool = False) -> dict[str, float]:
    """CPU seconds so far of a server process and its descendants (Ray's processes are), by role: the
    replicas (each on its own with `each_replica`: `replica-0`, ...), the ingress, Ray Serve's HTTP proxy, the
    `lightmoe serve` driver, Ray's other processes."""
    import psutil

    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(p.cmdline()[:1])
            t = p.cpu_times()
        except psutil.Error:
            continue
        replica = re.search(r"replica-\d+", title)
        role = ("driver" if p.pid == pid else (replica.group(0) if each_replica else "replicas") if replica
                else "ingress" if "ingress" in title else "proxy" if "Proxy" in title else "ray other")
        out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def machine_cpu() -> dict[str, float]:
    """The machine's CPU seconds so far from /proc/stat: busy, idle (with I/O wait) and steal (time the
    hypervisor gave another guest while this one had work); {} where /proc/stat is missing."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return {}
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / tick, "idle": (idle + iowait) / tick,
            "steal": steal / tick}


class CpuTimeline:
    """Every `every_s` during a load: each replica's CPU seconds so far (and the other roles'), and the
    machine's busy, idle and steal seconds. Why: a fleet's tail is set by a few seconds of it, and this says
    whether in those seconds one replica got less of the cores, the cores idled while requests queued, or the
    hypervisor took them (per-interval differences give cores' worth per role)."""

    def __init__(self, pid: int, every_s: float = 0.5):
        self.pid, self.every_s = pid, every_s
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            self.samples.append({"t": round(time.perf_counter() - t0, 3),
                                 "cpu": {k: round(v, 3) for k, v in cpu_by_role(self.pid, True).items()},
                                 "machine": machine_cpu()})
            self._stop.wait(self.every_s)

    def __enter__(self) -> CpuTimeline:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--rate", type=float, default=12.0)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=500.0)
    ap.add_argument("--doc-chars", type=int, default=1200)
    ap.add_argument("--threads", type=int, default=2, help="cores: the single servers' threads; 2 replicas get 1")
    ap.add_argument("--phases", default="load,calibrate,kill,shift")
    ap.add_argument("--only", default="", help="comma-separated config labels of the load phase (default all)")
    ap.add_argument("--kill-at", type=float, default=4.0)
    ap.add_argument("--kill-requests", type=int, default=120)
    ap.add_argument("--shift-requests", type=int, default=100, help="shift phase: this many interleaved "
                    "documents, then as many of one domain")
    ap.add_argument("--step-logs", type=Path, default=None, help="load phase: every fleet replica logs its engine's "
                    "steps, prefills and set moves (serve/steplog.py) under DIR/<config>-<n>, n counting that "
                    "configuration's runs")
    ap.add_argument("--out", default="fleet.json")
    HarnessOptions.add_arguments(ap, repeats=1)
    args = ap.parse_args()
    if args.step_logs is not None and args.step_logs.exists() and any(args.step_logs.iterdir()):
        raise SystemExit(f"{args.step_logs} already holds step logs (a new run's would mix with them): give "
                         "--step-logs a new folder")
    # Ray's processes are not this process's children: judge the machine by its load average, not CPU time
    harness = Harness("bench_fleet", args.threads, HarnessOptions.from_args(args),
                      NoisePolicy(min_repeats=1, cpu_margin=None))

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.stream import build_stream
    from lightmoe_cli.paths import ITEMS_DIR

    name, model, tok, prof = demo_model_and_profile(args.threads)
    work = ROOT / "runs" / "bench-fleet"
    bundles = {p: build_bundle(prof, model, tok, name, work / p, BuildOptions(policy=p, fraction=BUDGET) if p != "full"
                               else BuildOptions(policy="full"), force=True) for p in ("full", "prune", "task-aware")}
    del model
    docs = [dataclasses.replace(d, text=d.text[: args.doc_chars])
            for d in build_stream(ITEMS_DIR / "ppl", 1, args.requests)]
    cfgs = configs(args.threads)
    if args.only:
        keep = set(args.only.split(","))
        cfgs = {k: v for k, v in cfgs.items() if k in keep or k in ("full", f"prune {BUDGET:.0%}")}
    common = ["--max-batch", str(args.max_batch), "--max-queue", "10000", "--max-wait-ms", str(args.max_wait_ms)]
    phases = set(args.phases.split(","))
    out_path = harness.options.results_dir / args.out
    result: dict = {"requests": args.requests, "clients": args.clients, "rate": args.rate,
                    "max_tokens": args.max_tokens, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
                    "threads": args.threads, "doc_chars": args.doc_chars, "budget": BUDGET}
    records: dict[str, list[dict]] = {}  # the first repeat's (what the NLL tables and per-domain figures read)
    repeats: dict[str, list[list[dict]]] = {}  # every repeat's, in repeat order
    # with --repeats and both phases, each repeat's load is followed by its own calibration, so the simulator can
    # be checked against every repeat with the costs of its own session (the machine drifts between repeats)
    per_repeat_calibration = {"load", "calibrate"} <= set(args.phases.split(",")) and harness.options.repeats > 1
    calibrations: list[dict] = []

    step_runs: dict[str, int] = {}

    def measure(label: str) -> dict:
        key, threads, flags = cfgs[label]
        logs = None
        if args.step_logs is not None and "--replicas" in flags:  # the replicas inherit the variable through Ray
            step_runs[label] = step_runs.get(label, 0) + 1
            logs = args.step_logs / f"{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}-{step_runs[label]}"
            os.environ[steplog.ENV] = str(logs)
        else:
            os.environ.pop(steplog.ENV, None)
        with Fleet(bundles[key].path, threads, *common, *flags) as srv:
            session = latest_session() if "--replicas" in flags else None  # the fleet's own Ray session
            cpu0, own0, m0 = cpu_by_role(srv.proc.pid), os.times(), sample_load()
            t0 = time.perf_counter()
            with CpuTimeline(srv.proc.pid) if "--replicas" in flags else contextlib.nullcontext() as timeline:
                recs = asyncio.run(load(srv.url, srv.model(), docs, args.clients, args.rate, args.max_tokens,
                                        False))
            seconds = time.perf_counter() - t0
            cpu1, own1, m1 = cpu_by_role(srv.proc.pid), os.times(), sample_load()
            h = srv.health()
            extra = {"layer_swaps": srv.metric("lightmoe_swaps"),
                     "set_moves": srv.metric("lightmoe_fleet_set_moves") if "--replicas" in flags else None,
                     "fleet": {k: h[k] for k in ("counts", "router") if k in h}}
            extra["exit_code"] = srv.stop()
        if session is not None:  # each request's hops (proxy, ingress, which replica, its call) from Ray's logs
            try:
                recs = join(recs, session)
            except SystemExit as e:
                print(f"{label}: no hops joined ({e})")
        records.setdefault(label, recs)
        repeats.setdefault(label, []).append(recs)
        s = summarise_load(recs, seconds) | extra
        s["layer_swaps_per_request"] = s["layer_swaps"] / max(s["answered"], 1)
        # where the cores went, per answered request (the client is this process)
        cpu = {k: (cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) / max(s["answered"], 1) for k in cpu1}
        cpu["client"] = (own1.user + own1.system - own0.user - own0.system) / max(s["answered"], 1)
        s["cpu_s_per_request"] = cpu
        s["cpu_s_per_request_total"] = sum(cpu.values())
        if timeline is not None:  # seconds from the load's start; CPU seconds so far per role, machine totals
            s["cpu_timeline"] = timeline.samples
        if logs is not None:  # the replicas flushed their logs when /health asked them for their state
            s["step_logs"] = str(logs)
            s["step_costs"] = fit_costs(steplog.read(logs))
        # cores' worth of CPU that processes outside this benchmark (server tree and client) used meanwhile
        ours = sum(cpu1.values()) - sum(cpu0.values()) + own1.user + own1.system - own0.user - own0.system
        if m0.busy_s is not None and m1.busy_s is not None:
            s["other_cores"] = max(0.0, m1.busy_s - m0.busy_s - ours) / (m1.wall - m0.wall)
        if s["set_moves"] is not None:
            s["set_moves_per_request"] = s["set_moves"] / max(s["answered"], 1)
        s["detected_right"] = (sum(r.get("task") == r["domain"] for r in recs if r["status"] == 200)
                               / max(s["answered"], 1)) if "--replicas" in flags else None
        if per_repeat_calibration and label == list(cfgs)[-1]:  # a repeat ends: its own calibration
            calibrations.append(calibrate(bundles["task-aware"].path, common, args))
        return s

    if "load" in phases:
        runs = harness.measure(list(cfgs), measure, warmup=False)
        result["load"] = {label: {k: statistics.median([r[k] for r in rs]) if all(
            isinstance(r.get(k), (int, float)) for r in rs) else rs[0].get(k) for k in rs[0]}
            for label, rs in runs.items()}
        result["nll"] = nll_table(records, {k: None for k in cfgs}, [BUDGET])
        result["per_domain"] = per_domain(records)
        # per request: where it was served and where its time went (fleet_hops.split; the fleets' records carry
        # their Ray hops)
        result["breakdown"] = {label: breakdown(recs) for label, recs in records.items()}
        result["records"] = records
        if harness.options.repeats > 1:
            # per repeat: each configuration's summary and records, and its calibration where one was taken
            result["repeats"] = [{"load": {label: rs[i] for label, rs in runs.items()},
                                  "records": {label: rs[i] for label, rs in repeats.items()}}
                                 | ({"calibrate": calibrations[i]} if i < len(calibrations) else {})
                                 for i in range(harness.options.repeats)]
        base = f"2 replicas round-robin {BUDGET:.0%}"
        rows_cfg = [Config(label, baseline=base if label.startswith("2 replicas affinity") or
                           label.startswith("1 replica") else None, bounds={"requests_per_s": None})
                    for label in cfgs]
        metrics = [Metric("requests_per_s", "req/s"),
                   Metric("latency_p50", "p50 s", higher_is_better=False, ratio=False),
                   Metric("latency_p99", "p99 s", higher_is_better=False, ratio=False),
                   Metric("nll_per_token", "NLL/tok", higher_is_better=False, ratio=False, fmt=".4f"),
                   Metric("layer_swaps_per_request", "layer swaps/req", ratio=False),
                   Metric("set_moves_per_request", "set moves/req", ratio=False),
                   Metric("cpu_s_per_request_total", "CPU s/req", higher_is_better=False, ratio=False, fmt=".3f")]
        rows = analyse(rows_cfg, runs, metrics, None)
        harness.finish(rows, metrics, "lightmoe serve --replicas: 2 replicas vs 1 (x round-robin: throughput ratio)",
                       result, out_path)
        print_nll(result)
    if "calibrate" in phases:
        # taken with each repeat's load, the first repeat's is the file's `calibrate` (the others: `repeats`)
        result["calibrate"] = calibrations[0] if calibrations else calibrate(bundles["task-aware"].path, common, args)
        print(f"calibration: {result['calibrate']['model']}")
    if "shift" in phases:
        result["shift"] = shift_run(bundles["task-aware"].path, common, docs, args)
        print(f"shift: {result['shift']}")
    if "kill" in phases:
        result["kill"] = kill_run(bundles["task-aware"].path, common, docs[: args.kill_requests], args)
        print(f"kill: {result['kill']['client']} ingress {result['kill']['ingress']} "
              f"back after {result['kill']['back_after_s']} s")
    if "load" not in phases or phases - {"load"}:
        merged = {}
        if out_path.exists():
            import json

            merged = json.loads(out_path.read_text())
        write_json(out_path, merged | {k: v for k, v in result.items() if k in ("calibrate", "kill", "shift")
                                       or "load" in phases})
        print(f"wrote {out_path}")


def per_domain(records: dict[str, list[dict]]) -> dict:
    """Per config and domain: NLL per token and mean scored tokens per request (what the simulator reads)."""
    out: dict = {}
    for label, recs in records.items():
        by: dict[str, list[dict]] = {}
        for r in recs:
            if r["status"] == 200:
                by.setdefault(r["domain"], []).append(r)
        out[label] = {d: {"nll_per_token": sum(r["nll"] for r in rs) / sum(r["tokens"] for r in rs),
                          "tokens_per_request": sum(r["tokens"] for r in rs) / len(rs), "requests": len(rs)}
                      for d, rs in sorted(by.items())}
    return out


def calibrate(bundle: Path, common: list[str], args) -> dict:
    """Bursts of n same-task requests on a 1-replica, 1-thread fleet -> the simulator's ServiceModel."""
    import json

    import openai

    from lightmoe_cli.paths import ITEMS_DIR

    domains = {p.stem: [json.loads(x)["text"][: args.doc_chars] for x in p.read_text().splitlines() if x.strip()]
               for p in sorted((ITEMS_DIR / "ppl").glob("*.jsonl"))}
    sizes, raw = (1, 4, 8), []
    with Fleet(bundle, 1, *common, "--replicas", "1") as srv:
        model = srv.model()
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=600)

        async def timed(text: str, new: int) -> tuple[float, object]:
            t0 = time.perf_counter()
            r = await client.completions.create(model=model, prompt=text, max_tokens=new, echo=True, logprobs=0,
                                                temperature=0)
            return time.perf_counter() - t0, r

        async def burst(domain: str, n: int, new: int, offset: int) -> tuple[float, dict]:
            texts = [domains[domain][(offset + i) % len(domains[domain])] for i in range(n)]
            t0 = time.perf_counter()
            got = await asyncio.gather(*(timed(t, new) for t in texts))
            seconds = time.perf_counter() - t0
            ttft = [r.model_extra["lightmoe"].get("first_token_seconds") for _, r in got]
            outside = [lat - f for (lat, _), f in zip(got, ttft, strict=True) if f is not None]
            return seconds, {"prompt_tokens": sum(r.usage.prompt_tokens for _, r in got),
                             "outside_s": statistics.median(outside) if outside else None}

        async def run() -> None:
            await burst(next(iter(domains)), 2, 2, 0)  # warm-up
            for n in sizes:
                for new in (1, args.max_tokens):
                    for k, d in enumerate(domains):
                        moves0 = srv.metric("lightmoe_fleet_set_moves")
                        swaps0 = srv.metric("lightmoe_swaps")
                        first, _ = await burst(d, n, new, 20 + k)  # the set moves to d first
                        moved = srv.metric("lightmoe_fleet_set_moves") - moves0
                        layers = srv.metric("lightmoe_swaps") - swaps0
                        again, seen = await burst(d, n, new, 20 + k)  # the same documents on the same set
                        raw.append({"n": n, "new_tokens": new, "domain": d, "after_move_s": first, "same_set_s": again,
                                    "set_moves": moved, "layer_swaps": layers} | seen)
            await client.close()

        cpu0, own0, m0 = cpu_by_role(srv.proc.pid), os.times(), sample_load()
        asyncio.run(run())
        cpu1, own1, m1 = cpu_by_role(srv.proc.pid), os.times(), sample_load()
        srv.stop()
    ours = sum(cpu1.values()) - sum(cpu0.values()) + own1.user + own1.system - own0.user - own0.system
    other = (max(0.0, m1.busy_s - m0.busy_s - ours) / (m1.wall - m0.wall)
             if m0.busy_s is not None and m1.busy_s is not None else None)
    return {"raw": raw, "model": fit_service(raw, args.max_tokens), "other_cores": other,
            "load1": [m0.load1, m1.load1]}


def fit_service(raw: list[dict], new_tokens: int, prompt_tokens: dict[str, float] | None = None) -> dict:
    """Least squares over the same-set bursts. One new token: T(n) = overhead + n * prefill, plus
    prefill_per_token * (the burst's prompt tokens) when they are known (recorded per burst, or `prompt_tokens`
    per domain: a prefill's cost follows its prompt, 295-495 tokens across the demo's domains). Decode:
    T(n, m) - T(n, 1) of the same documents = (m - 1) * (step + n * step_per_row), the median over domains per n,
    each n weighted by the inverse of its median deviation across domains. A set move costs the median of (after
    a move) - (same set). The fixed latency outside the replica's engine is the lone 1-token requests' median of
    latency - the replica's arrival-to-first-token where it was recorded, else the first fit's intercept."""
    import numpy as np

    def tokens(r: dict) -> float | None:
        if r.get("prompt_tokens") is not None:
            return float(r["prompt_tokens"])
        return r["n"] * prompt_tokens[r["domain"]] if prompt_tokens and r["domain"] in prompt_tokens else None

    ns = sorted({r["n"] for r in raw})
    one = [r for r in raw if r["new_tokens"] == 1]
    per_token = 0.0
    if one and all(tokens(r) is not None for r in one):
        a = np.array([[1.0, r["n"], tokens(r)] for r in one])
        overhead, prefill, per_token = np.linalg.lstsq(a, np.array([r["same_set_s"] for r in one]), rcond=None)[0]
    else:
        t1 = [statistics.median(r["same_set_s"] for r in one if r["n"] == n) for n in ns]
        overhead, prefill = np.linalg.lstsq(np.vstack([np.ones(len(ns)), ns]).T, np.array(t1), rcond=None)[0]
    # each m-token burst against the 1-token burst of the same documents (the k-th of its kind in `raw`: runs
    # pooled in order)
    seen: dict[tuple, list[dict]] = {}
    for r in raw:
        seen.setdefault((r["n"], r["domain"], r["new_tokens"]), []).append(r)
    per_n, spread = [], []
    for n in ns:
        diffs = [(b["same_set_s"] - a["same_set_s"]) / (new_tokens - 1)
                 for (n_, d, m), rs in seen.items() if n_ == n and m == new_tokens
                 for a, b in zip(seen.get((n, d, 1), []), rs, strict=False)]
        per_n.append(statistics.median(diffs))
        spread.append(statistics.median(abs(x - per_n[-1]) for x in diffs))
    # each size's median weighted by its precision: a lone request's decode is measured to ~0.1 ms per step, a
    # burst of 4's as the difference of two 0.3 s bursts (the quiet run: median deviations 0.15, 2.3 and 1.4 ms per
    # step for n = 1, 4, 8), and an unweighted line let the noisiest size set the 1-row step (2.4 ms against the
    # lone requests' 2.8)
    w = 1.0 / np.maximum(np.array(spread), max(max(spread) * 1e-3, 1e-12))
    a = np.vstack([np.ones(len(ns)), ns]).T
    step, per_row = np.linalg.lstsq(a * w[:, None], np.array(per_n) * w, rcond=None)[0]
    lone = [r["outside_s"] for r in one if r["n"] == ns[0] and r.get("outside_s") is not None]
    if lone:
        overhead = statistics.median(lone)
    moved = [r for r in raw if r["set_moves"] > 0]
    swap = statistics.median(r["after_move_s"] - r["same_set_s"] for r in moved) if moved else 0.0
    layers = sum(r["layer_swaps"] for r in moved) / max(sum(r["set_moves"] for r in moved), 1)
    return {"prefill_s": float(max(prefill, 0.0)), "prefill_per_token_s": float(max(per_token, 0.0)),
            "step_s": float(max(step, 0.0)), "step_per_row_s": float(max(per_row, 0.0)),
            "swap_s": float(max(swap, 0.0)), "overhead_s": float(max(overhead, 0.0)), "layers_per_swap": layers}


def fit_overhead_growth(runs: list[list[dict]], overhead_s: float) -> float:
    """Seconds each computing replica adds to a request's time outside the engines (the simulator's
    `overhead_per_busy_s`), from load runs' per-request records joined with their Ray hops (one list per run:
    each has its own clock and replicas): least squares of (latency - the replica's `done_seconds`) -
    `overhead_s` (the lone requests' figure) on how many engines computed meanwhile (fleet_hops.busy_outside),
    through the origin."""
    from benchmarks.fleet_hops import busy_outside

    pairs = [(b, r["latency"] - r["done_seconds"] - overhead_s) for recs in runs
             for r, b in zip(recs, busy_outside(recs), strict=True) if b is not None]
    den = sum(b * b for b, _ in pairs)
    return max(sum(b * y for b, y in pairs) / den, 0.0) if den > 0 else 0.0


def shift_run(bundle: Path, common: list[str], docs, args, hot: str = "python_code") -> dict:
    """The traffic mix changes: `--shift-requests` interleaved documents, then as many of one domain. How the
    affinity router's assignment follows (reassignments, the hot task's replicas, overflow) and what it costs."""
    import json

    from lightmoe_cli.evaluation.stream import StreamRequest
    from lightmoe_cli.paths import ITEMS_DIR

    n = args.shift_requests
    texts = [json.loads(x)["text"][: args.doc_chars] for x in (ITEMS_DIR / "ppl" / f"{hot}.jsonl").read_text()
             .splitlines() if x.strip()]
    mixed, hot_docs = docs[:n], [StreamRequest(hot, texts[i % len(texts)], 0, i) for i in range(n)]
    out: dict = {"hot_task": hot, "requests_per_phase": n}
    with Fleet(bundle, 1, *common, "--replicas", "2") as srv:
        model = srv.model()
        for name, part in (("mixed", mixed), ("hot", hot_docs)):
            before = srv.health()
            t0 = time.perf_counter()
            recs = asyncio.run(load(srv.url, model, part, args.clients, args.rate, args.max_tokens, False))
            seconds = time.perf_counter() - t0
            after = srv.health()
            r0, r1 = before["router"], after["router"]
            out[name] = {"requests_per_s": summarise_load(recs, seconds)["requests_per_s"],
                         "answered": sum(r["status"] == 200 for r in recs),
                         "routed": [b - a for a, b in zip(r0["routed"], r1["routed"], strict=True)],
                         "reasons": {k: v - r0["reasons"].get(k, 0) for k, v in r1["reasons"].items()},
                         "reassignments": r1["reassignments"] - r0["reassignments"],
                         "assignment_after": r1["assignment"],
                         "set_moves": sum(x.get("set_moves", 0) for x in after["replicas"])
                         - sum(x.get("set_moves", 0) for x in before["replicas"])}
        out["exit_code"] = srv.stop()
    return out


def kill_run(bundle: Path, common: list[str], docs, args) -> dict:
    """The load against a 2-replica affinity fleet, one replica SIGKILLed `--kill-at` s in."""
    import random

    import openai

    outcomes: list[str] = [""] * len(docs)
    with Fleet(bundle, 1, *common, "--replicas", "2") as srv:
        model = srv.model()
        h0 = srv.health()
        victim = h0["replicas"][0]

        async def run() -> float:
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=300)
            rng = random.Random(0)
            arrivals, t = [], 0.0
            for _ in docs:
                arrivals.append(t)
                t += rng.expovariate(args.rate)
            gate = asyncio.Semaphore(args.clients)
            t0 = time.perf_counter()

            async def one(i, doc):
                await asyncio.sleep(max(arrivals[i] - (time.perf_counter() - t0), 0))
                async with gate:
                    try:
                        await client.completions.create(model=model, prompt=doc.text, max_tokens=args.max_tokens,
                                                        echo=True, logprobs=0, temperature=0)
                        outcomes[i] = "answered"
                    except openai.APIStatusError as e:
                        outcomes[i] = f"status {e.status_code}"
                    except Exception as e:  # noqa: BLE001 - no HTTP answer at all: lost
                        outcomes[i] = f"lost ({type(e).__name__})"

            async def killer():
                import httpx

                await asyncio.sleep(args.kill_at)
                async with httpx.AsyncClient(timeout=30) as http:
                    for _ in range(200):  # kill it while it holds requests
                        state = (await http.get(srv.url + "/health")).json()
                        if state["router"]["inflight"][0] >= 2:
                            break
                        await asyncio.sleep(0.05)
                os.kill(victim["pid"], signal.SIGKILL)
                return time.perf_counter(), state["router"]["inflight"]

            done = await asyncio.gather(killer(), *(one(i, d) for i, d in enumerate(docs)))
            await client.close()
            return done[0]

        killed_at, inflight = asyncio.run(run())
        h1 = srv.health()
        back = None
        while time.perf_counter() - killed_at < 300:
            h = srv.health()
            if all(r["live"] for r in h["replicas"]) and h["counts"]["relearned"] >= 1:
                back = time.perf_counter() - killed_at
                break
            time.sleep(0.5)
        h2 = srv.health()
        exit_code = srv.stop()
    client = {k: outcomes.count(k) for k in sorted(set(outcomes))}
    return {"requests": len(docs), "kill_at_s": args.kill_at, "victim": victim, "inflight_at_kill": inflight,
            "client": client,
            "ingress": h1["counts"], "ingress_after_restart": h2["counts"], "back_after_s": back,
            "new_pid": h2["replicas"][0].get("pid"), "assignment_after": h2["router"].get("assignment"),
            "reassignments": h2["router"]["reassignments"], "exit_code": exit_code}


def print_nll(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="held-out NLL through the fleet (paired vs prune, 95% interval)")
    for col in ("config", "NLL/tok", "vs prune", "gap closed", "detected right"):
        t.add_column(col)
    for label, r in result["nll"].items():
        if "error" in r:
            t.add_row(label, r["error"], "", "", "")
            continue
        d = r["vs_prune"]
        det = result["load"][label].get("detected_right")
        t.add_row(label, f"{r['nll_per_token']:.4f}", f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]",
                  "-" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}", "-" if det is None else f"{det:.1%}")
    Console(width=160).print(t)


if __name__ == "__main__":
    main()
