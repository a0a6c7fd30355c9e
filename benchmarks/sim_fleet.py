"""The fleet past this machine: K = 1..64 replicas, 8..64 tasks, Zipf task popularity, Poisson arrivals, for
round-robin and affinity routing (lightmoe_cli/fleet/sim.py, the same router objects as the ingress and the
server's own task scheduler in every replica).

Its inputs are measured, not assumed: the per-request costs (prefill, fixed and per prompt token, decode step
and its per-row part, a set move, the fixed overhead outside the replica) from bench_fleet.py's calibrate phase;
what each computing replica adds to the path outside the engines, from a load run's per-request records
(`--records`, bench_fleet.fit_overhead_growth); the CPU a replica loses when it shares a core, from
bench_core_share.py (`--core-share`); and per-domain prompt tokens and NLL per token served with the request's
own set (the 2-replica affinity run) and with prune's set, from its load phase (a simulated task past the 8
measured domains reuses their figures in turn). First it replays the measured load (the same domain order, the
client's own send times, the same clients) at 1 and 2 replicas and prints the prediction beside the
measurement; then the sweep. Table to the terminal, JSON to benchmarks/results/sim_fleet.json, plot to
benchmarks/results/sim_fleet.png.

The checks also give the time to first token (arrival at the replica to its first token: the replica's own
meter, so it leaves out the ingress and the hops), which tells a replica's queue and prefill apart from the rest,
and the median of each part of a request's latency (waiting for its prefill, the prefill, the decode, outside
the engine), measured where the load run kept per-request records. Each check is replayed under `--seeds` draws of
the engine's costs' spread and the detector's errors: its figures are their medians, with the latencies' 5-95%
band, and a measured figure outside the band is marked. The replica's HTTP side per request on its engine's
timeline is fitted to the checked run's 1-replica load only (`with_engine_fit`), so the 2-replica points are
predictions. Where the run holds several repeats (bench_fleet.py --repeats N --phases load,calibrate), the
model is also checked against each repeat with that repeat's own inputs (`repeated_check`): per point and
figure, the measured median [min-max] beside the simulated median [5-95%] and a match rule (`matches`).

    python benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-quiet.json   # just sim-fleet
    python benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-records.json \
        --calibrations benchmarks/results/fleet-quiet.json   # the records run checked too
    python benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-records-2.json \
        --records benchmarks/results/fleet-records-2.json \
        --out benchmarks/results/sim_fleet-records-2.json   # calibration and load from one session
    python benchmarks/sim_fleet.py --fleet benchmarks/results/fleet-records-3.json \
        --records benchmarks/results/fleet-records-3.json --no-sweep \
        --out benchmarks/results/sim_fleet-records-3.json   # every repeat (just sim-fleet-repeats)
    python benchmarks/sim_fleet.py                    # reads benchmarks/results/fleet.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, write_json  # noqa: E402
from lightmoe_cli.fleet.router import ROUTERS  # noqa: E402
from lightmoe_cli.fleet.sim import Quality, ServiceModel, Workload, percentile, simulate  # noqa: E402

CHECKS = {  # simulated point -> the measured config it must match
    (1, "affinity"): "1 replica x1 thread 50%",
    (2, "round-robin"): "2 replicas round-robin 50%",
    (2, "affinity"): "2 replicas affinity 50%",
}
KEYS = ("requests_per_s", "latency_p50", "latency_p99", "ttft_p50", "ttft_p99", "set_moves_per_request",
        "nll_per_token", "replica_s_per_request")
# the figures the repeated check compares, measured against simulated
FIGURES = ("requests_per_s", "latency_p50", "latency_p99", "ttft_p50", "ttft_p99", "set_moves_per_request")
# the repeated check's match rule: the simulated 5-95% band overlaps the measured [min, max] over repeats, and the
# simulated median is within these ratios of the measured median
MATCH_RATIO = (0.85, 1.15)


def prompt_tokens(fleet: dict) -> dict[str, float]:
    """Mean prompt tokens per request per domain in the measured load (scored tokens + the first)."""
    return {d: v["tokens_per_request"] + 1 for d, v in fleet["per_domain"]["2 replicas affinity 50%"].items()}


def measured_order(fleet: dict, names: list[str]) -> tuple[int, ...]:
    """The load's domain order, as indices into `names`: bench_fleet's own documents (the same call)."""
    from lightmoe_cli.evaluation.stream import build_stream
    from lightmoe_cli.paths import ITEMS_DIR

    return tuple(names.index(d.domain) for d in build_stream(ITEMS_DIR / "ppl", 1, fleet["requests"]))


def fleet_runs(records: dict) -> list[list[dict]]:
    """A load run's per-request records of its fleet configurations (those joined with their Ray hops)."""
    return [recs for recs in (records.get("records") or {}).values() if any("replica_s" in r for r in recs)]


def sharing_loss(core_share: dict) -> float:
    """The part of a replica's CPU time lost while it shares a core (bench_core_share.py: two replicas beside
    the outside work ran at `speed` of one alone on `cores_each` cores)."""
    c = core_share["configs"]["2 replicas + outside work"]
    return max(1.0 - c["speed"] / c["cores_each"], 0.0)


def measured_parts(recs: list[dict]) -> dict[str, float]:
    """The median of each part of the latency over a load run's records (the simulator's `parts_p50`)."""
    ok = [r for r in recs if r.get("status") == 200 and r.get("done_seconds") is not None]
    get = {"queue_s": lambda r: r["queue_seconds"],
           "prefill_s": lambda r: r["first_token_seconds"] - r["queue_seconds"],
           "decode_s": lambda r: r["done_seconds"] - r["first_token_seconds"],
           "outside_s": lambda r: r["latency"] - r["done_seconds"]}
    return {k: percentile([f(r) for r in ok], 0.5) for k, f in get.items()} if ok else {}


def _cv(ratios: list[float]) -> float | None:
    """Coefficient of variation of ratios over their median (so a run slower all through counts as no spread)."""
    if len(ratios) < 20:
        return None
    mid = statistics.median(ratios)
    xs = [x / mid for x in ratios]
    return statistics.pstdev(xs) / statistics.mean(xs)


def cost_spread(recs: list[dict], svc: ServiceModel) -> tuple[float | None, float | None]:
    """The spread of a replica's engine costs (coefficients of variation), from a 1-replica load run's
    per-request records: one replica, so no other replica's work stretches its costs (the model's sharing rule
    does that).

    Prefill: each request's measured prefill (first token - start) over the model's for its prompt tokens. On
    the records run successive requests' ratios are uncorrelated (lag-1 autocorrelation 0.03), so each prefill
    is drawn independently. Decode step: each request's in-situ step (fleet_hops.decode_steps: its decode less
    the prefills that joined meanwhile, over its steps; needs the records' Ray hops) over the model's step at
    its mean rows; that is a mean over its steps, so a step's own spread is it times the square root of the
    steps (independent steps: an upper bound if slow steps come in runs)."""
    from benchmarks.fleet_hops import decode_steps

    ok = [r for r in recs if r.get("status") == 200 and r.get("first_token_seconds") is not None
          and r.get("prompt_tokens")]
    prefill = _cv([(r["first_token_seconds"] - r["queue_seconds"]) / svc.prefill(r["prompt_tokens"]) for r in ok])
    step = None
    if ok and all("replica_start_s" in r for r in ok):
        got = [(s, r) for s, r in zip(decode_steps(ok), ok, strict=True) if s is not None]
        per_request = _cv([s["step_s"] / svc.step(s["rows"]) for s, _ in got])
        if per_request is not None:
            steps = statistics.median(r["new_tokens"] - 1 for _, r in got)
            step = per_request * math.sqrt(steps)
    return prefill, step


def replayed(fleet: dict, records: dict | None, label: str, order: tuple[int, ...], names: list[str]) \
        -> tuple[tuple[float, ...], tuple[int, ...]]:
    """Per request of the measured load: its prompt tokens, and the task the replica was told (the detector's
    answer), from `fleet`'s own records of `label` when it kept them; else the prompt tokens from another run's
    records of the same documents (`records`; the detector's answers there are another detector's: not taken).
    Empty where neither has them."""
    own = (fleet.get("records") or {}).get(label) or []
    if own and [names.index(r["domain"]) for r in own] == list(order):
        tokens = tuple(float(r["prompt_tokens"]) for r in own) if all(r.get("prompt_tokens") for r in own) else ()
        labels = tuple(names.index(r["task"]) for r in own) if all(r.get("task") in names for r in own) else ()
        return tokens, labels
    for recs in ((records or {}).get("records") or {}).values():
        if [names.index(r["domain"]) for r in recs] == list(order) and all(r.get("prompt_tokens") for r in recs):
            return tuple(float(r["prompt_tokens"]) for r in recs), ()
    return (), ()


def detector_errors(order: tuple[int, ...], replica_of: dict[int, int], routed: list[int], right: float,
                    seed: int) -> tuple[int, ...]:
    """The detector's answers for the measured order, drawn so that each replica gets the requests the measured
    affinity run routed to it (`routed`; its assignment never changed, so a request's replica is its label's).
    The quiet run's errors were lopsided: 6 wrong, and replica 1 got 105 of 200 where right answers give it 100,
    so 5 requests of replica 0's tasks were named as replica 1's; drawn at random (each error to any other task)
    they move requests both ways and nearly cancel. Which requests were wrong, and the errors that stay on their
    replica, are drawn (`seed`)."""
    import random

    rng = random.Random(seed)
    labels = list(order)
    errors = round((1.0 - right) * len(order))
    got = [0] * len(routed)
    for t in order:
        got[replica_of[t]] += 1
    need = [m - g for m, g in zip(routed, got, strict=True)]  # > 0: the replica got more than right answers give
    tasks_on = {r: [t for t, x in replica_of.items() if x == r] for r in range(len(routed))}
    while errors > 0 and any(n > 0 for n in need):
        to = rng.choice([r for r, n in enumerate(need) if n > 0])
        src = [r for r, n in enumerate(need) if n < 0] or [r for r in range(len(routed)) if r != to]
        pick = rng.choice([i for i, t in enumerate(order) if replica_of[t] in src and labels[i] == t])
        need[replica_of[order[pick]]] += 1
        need[to] -= 1
        labels[pick] = rng.choice(tasks_on[to])
        errors -= 1
    for _ in range(errors):  # the rest stay on their replica (another of its tasks, where it has one)
        pick = rng.choice([i for i, t in enumerate(order) if labels[i] == t])
        others = [t for t in tasks_on[replica_of[order[pick]]] if t != order[pick]]
        if others:
            labels[pick] = rng.choice(others)
    return tuple(labels)


def band(xs: list[float]) -> dict:
    """Median and the 5-95% band (rank rule: the 5th and 95th percentiles of the draws)."""
    xs = sorted(x for x in xs if not math.isnan(x))
    return {"median": statistics.median(xs), "p5": percentile(xs, 0.05), "p95": percentile(xs, 0.95),
            "draws": len(xs)}


def inputs(fleet: dict, calibrations: list[dict], records: dict | None = None) -> tuple[ServiceModel, Quality]:
    """The costs fitted to the calibration bursts of every given run together (one run's fit moves with the
    machine's noise), the growth of the path outside the engines from `records`' per-request records (none: no
    growth), the CPU outside the replicas and the NLL figures from `fleet`."""
    from benchmarks.bench_fleet import fit_overhead_growth, fit_service

    raw = [r for c in calibrations for r in c["calibrate"]["raw"]]
    model = fit_service(raw, fleet["max_tokens"], prompt_tokens(fleet))
    growth = fit_overhead_growth(fleet_runs(records), model["overhead_s"]) if records else 0.0
    # CPU outside the replicas per request (ingress, Ray's proxy and others, the client), from the 1-replica run
    split = fleet["load"].get("1 replica x1 thread 50%", {}).get("cpu_s_per_request") or {}
    outside = sum(v for k, v in split.items() if k != "replicas")
    svc = ServiceModel(**model | {"cpu_outside_s": outside, "overhead_per_busy_s": growth})
    # the costs' spread, from the 1-replica load's records (its own run's first, then `records`' run)
    one = (fleet.get("records") or {}).get("1 replica x1 thread 50%") or \
        ((records or {}).get("records") or {}).get("1 replica x1 thread 50%") or []
    prefill_cv, step_cv = cost_spread(one, svc)
    svc = dataclasses.replace(svc, prefill_cv=prefill_cv or 0.0, step_cv=step_cv or 0.0)
    dom = fleet["per_domain"]
    own, prune = dom["2 replicas affinity 50%"], dom["prune 50%"]
    names = sorted(own)
    acc = fleet["load"]["2 replicas affinity 50%"].get("detected_right") or 1.0
    q = Quality(tuple(own[d]["nll_per_token"] for d in names), tuple(prune[d]["nll_per_token"] for d in names),
                tuple(own[d]["tokens_per_request"] for d in names), accuracy=acc)
    return svc, q


def engine_busy_s(windows: list[tuple[int, float, float]]) -> float:
    """Seconds some request was in its replica's engine (from its prefill's start to its last token), summed over
    replicas; `windows` are (replica, start, end) per request. Why: the same requests' busy time measured and
    simulated says how far a run's engines ran from the model's costs, apart from the queues it causes (at
    75-80% of capacity a few percent of it moves the latency medians by tens of percent)."""
    by_replica: dict[int, list[tuple[float, float]]] = {}
    for replica, a, b in windows:
        by_replica.setdefault(replica, []).append((a, b))
    total = 0.0
    for spans in by_replica.values():
        end = -math.inf
        for a, b in sorted(spans):
            if b > end:
                total += b - max(a, end)
                end = b
    return total


def measured_busy_s(recs: list[dict]) -> float | None:
    """`engine_busy_s` of a load run's records (None without the replica's own meter and Ray's hops)."""
    ok = [r for r in recs if r.get("status") == 200 and r.get("done_seconds") is not None and "replica_start_s" in r]
    if not ok:
        return None
    return engine_busy_s([(r["fleet"]["replica"], r["replica_start_s"] + r["queue_seconds"],
                           r["replica_start_s"] + r["done_seconds"]) for r in ok])


def run(k: int, router: str, tasks: int, svc: ServiceModel, q: Quality, w: Workload, max_batch: int,
        max_wait_s: float, cores: float | None = None, loss: float = 0.0, noise_seed: int = 0,
        busy: bool = False) -> dict:
    """One simulated load; with `busy`, its engines' busy time too (`engine_busy_s`: the checks set it beside the
    measured one, the sweep has nothing to set it beside)."""
    r = simulate(ROUTERS.get(router)(k, [f"t{i}" for i in range(tasks)]), svc, w, max_batch, max_wait_s, q, cores,
                 loss, noise_seed)
    out = r.to_json() | {"tasks": tasks, "set_moves_per_request": r.set_moves / max(r.requests, 1)}
    if busy:
        out["engine_busy_s"] = engine_busy_s([(x["replica"], x["sent"] + x["queue_s"], x["sent"] + x["queue_s"]
                                               + x["prefill_s"] + x["decode_s"]) for x in r.records])
    return out


def run_seeds(k: int, router: str, svc: ServiceModel, q: Quality, w: Workload, max_batch: int, max_wait_s: float,
              cores: float | None, loss: float, seeds: int, routed: list[int] | None = None) -> dict:
    """The measured load replayed under `seeds` draws of the costs' spread and the detector's errors (matching
    the measured run's `routed` per replica where given: `detector_errors`): each figure is the draws' median
    (parts: seed 0's), with the 5-95% band of the latencies beside it. A p99 over 200 requests is its 2nd slowest
    request, so one draw of the noise moves it; the band says how far."""
    runs = []
    for s in range(max(seeds, 1)):
        ws = w
        if routed is not None and not w.labels:
            replica_of = {int(t[1:]): rs[0] for t, rs in ROUTERS.get(router)(k, [f"t{i}" for i in range(w.tasks)])
                          .assignment.replicas_of.items()}
            ws = dataclasses.replace(w, labels=detector_errors(w.sequence, replica_of, routed, q.accuracy, s))
        runs.append(run(k, router, 8, svc, q, ws, max_batch, max_wait_s, cores, loss, s, busy=True))
    out = dict(runs[0])
    for x in KEYS + ("latency_p50", "latency_p99"):
        vals = [r[x] for r in runs if isinstance(r.get(x), (int, float))]
        if vals:
            out[x] = statistics.median(vals)
    out["bands"] = {x: band([r[x] for r in runs]) for x in ("latency_p50", "latency_p99", "ttft_p99",
                                                            "requests_per_s")}
    out["draws"] = {x: [r[x] for r in runs] for x in FIGURES + ("engine_busy_s",)}
    return out


def check_workload(fleet: dict, records: dict | None, label: str, names: list[str], lengths: tuple[float, ...]) \
        -> Workload:
    """The measured load of `label` to replay: its domain order, the client's send times (seed 0), its clients,
    each request's prompt tokens and detected task where records kept them."""
    order = measured_order(fleet, names)
    tokens, labels = replayed(fleet, records, label, order, names)
    return Workload(tasks=8, requests=fleet["requests"], rate=fleet["rate"], clients=fleet["clients"],
                    sequence=order, prompt_tokens=lengths, new_tokens=fleet["max_tokens"], request_tokens=tokens,
                    labels=labels)


def fit_engine_per_request(svc: ServiceModel, q: Quality, w: Workload, measured_rps: float, max_batch: int,
                           max_wait_s: float, cores: float | None, loss: float, seeds: int = 8,
                           most_s: float = 0.1) -> float:
    """The replica's HTTP-side work per request on its engine's timeline (`ServiceModel.engine_per_request_s`):
    the value that makes the simulated 1-replica load (`w`, replayed as measured, on `cores`) serve the measured
    `measured_rps` (the median over `seeds` draws of the costs' spread; bisection). 0 where the model is already
    slower without it.

    Why the throughput and not the in-situ decode step's excess over the calibration: the calibration's prefill
    is fitted from bursts of n requests sent together, whose other requests' HTTP work runs while the engine
    prefills, so that fit already holds part of the per-request cost (in-situ prefills run below it: 60 ms
    measured against the model's 67 at p50 in fleet-records-2.json); the decode excess alone would count that
    part twice. The 1-replica load is saturated (12 requests/s offered against about 10 served), so its
    throughput is the engine's whole time per request: fitting to it nets the two out. The 1-replica run only:
    the 2-replica points stay predictions (the 1-replica throughput is then matched by construction)."""
    import dataclasses as dc

    names = [f"t{i}" for i in range(w.tasks)]

    def rate(c: float) -> float:
        s = dc.replace(svc, engine_per_request_s=c)
        return statistics.median(simulate(ROUTERS.get("affinity")(1, names), s, w, max_batch, max_wait_s, q, cores,
                                          loss, k).requests_per_s for k in range(seeds))

    if rate(0.0) <= measured_rps:
        return 0.0
    lo, hi = 0.0, most_s
    if rate(hi) > measured_rps:
        return hi
    for _ in range(14):  # to most_s / 2**14: ~6 us
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) > measured_rps else (lo, mid)
    return (lo + hi) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fleet", type=Path, default=RESULTS / "fleet.json", help="bench_fleet.py's results")
    ap.add_argument("--calibrations", default="", help="comma-separated bench_fleet.py results whose calibration "
                    "bursts are pooled for the fit (default: --fleet's own)")
    ap.add_argument("--records", type=Path, default=RESULTS / "fleet-records.json", help="bench_fleet.py load "
                    "results with per-request records joined with Ray's hops: how much each computing replica adds "
                    "to the path outside the engines (missing: nothing)")
    ap.add_argument("--core-share", type=Path, default=RESULTS / "core-share.json", help="bench_core_share.py's "
                    "results: the CPU a replica loses while it shares a core (missing: none)")
    ap.add_argument("--replicas", default="1,2,4,8,16,32,64")
    ap.add_argument("--tasks", default="8,16,64")
    ap.add_argument("--zipf", type=float, default=1.0)
    ap.add_argument("--requests-per-replica", type=int, default=200)
    ap.add_argument("--clients-per-replica", type=int, default=8, help="the measured run: 16 clients, 2 replicas")
    ap.add_argument("--rate-per-replica", type=float, default=12.0, help="Poisson arrivals per second per "
                    "replica: above a replica's capacity (~8/s measured), so throughput is capacity, as in the "
                    "measured run (12/s offered)")
    ap.add_argument("--machine-cores", type=float, default=2.0, help="the measuring machine's cores, shared by its "
                    "replicas and the work outside them (the checks are simulated with and without sharing)")
    ap.add_argument("--seeds", type=int, default=40, help="draws of the costs' spread and the detector's errors per "
                    "check (the figures are their medians, with the 5-95%% band of the latencies)")
    ap.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=True, help="the K-replica sweep "
                    "and its plot (--no-sweep: the checks only)")
    ap.add_argument("--more-repeats", default="", help="comma-separated bench_fleet.py --repeats results of the "
                    "same load whose repeats join --fleet's in the repeated check (more sessions of the same figures)")
    ap.add_argument("--in-situ", action="store_true", help="the repeated check with each load's own engine costs "
                    "from its step logs (bench_fleet.py --step-logs; the path outside the engines from "
                    "--calibrations)")
    ap.add_argument("--out", type=Path, default=RESULTS / "sim_fleet.json")
    args = ap.parse_args()
    if not args.fleet.exists():
        raise SystemExit(f"{args.fleet} not found: run benchmarks/bench_fleet.py first (its load and calibrate "
                         "phases)")
    fleet = pooled(json.loads(args.fleet.read_text()), [Path(p) for p in args.more_repeats.split(",") if p])
    cal_paths = [Path(p) for p in args.calibrations.split(",") if p] or [args.fleet]
    cals = [json.loads(p.read_text()) for p in cal_paths]
    if "load" not in fleet or any("calibrate" not in c for c in cals):
        raise SystemExit(f"{args.fleet} lacks the load phase or a calibration file its calibrate phase: run "
                         "bench_fleet.py --phases load,calibrate")
    records = json.loads(args.records.read_text()) if args.records.exists() else None
    loss = sharing_loss(json.loads(args.core_share.read_text())) if args.core_share.exists() else 0.0
    svc, q = inputs(fleet, cals, records)
    names = sorted(prompt_tokens(fleet))
    lengths = tuple(prompt_tokens(fleet)[d] for d in names)
    mb, mw = fleet["max_batch"], fleet["max_wait_ms"] / 1000
    t0 = time.perf_counter()
    svc = with_engine_fit(svc, q, fleet, records, names, lengths, args.machine_cores, loss)
    checks = []
    for (k, router), label in CHECKS.items():
        w = check_workload(fleet, records, label, names, lengths)
        tokens, labels = w.request_tokens, w.labels
        real = fleet["load"].get(label)
        if real is None:
            continue
        real = real | {"nll_per_token": fleet["nll"][label]["nll_per_token"],
                       "replica_s_per_request": (real.get("cpu_s_per_request") or {}).get("replicas")}
        parts = measured_parts((fleet.get("records") or {}).get(label, []))
        # where the measured affinity run kept one assignment, its replicas' counts tell the detector's errors apart
        state = (real.get("fleet") or {}).get("router") or {}
        routed = state.get("routed") if router == "affinity" and k > 1 and state.get("reassignments") == 0 and \
            len(state.get("routed") or []) == k else None
        # a core per replica; this machine's cores shared; and those less what other processes used meanwhile
        options = [None, args.machine_cores]
        if real.get("other_cores"):
            options.append(round(args.machine_cores - real["other_cores"], 2))
        for cores in options:
            sim = run_seeds(k, router, svc, q, w, mb, mw, cores, loss, args.seeds, routed)
            bands = sim["bands"]
            checks.append({"replicas": k, "router": router, "cores": cores, "measured_config": label,
                           "sim": {x: sim[x] for x in KEYS}, "measured": {x: real.get(x) for x in KEYS},
                           "bands": bands, "replayed": {"prompt_tokens": bool(tokens), "labels": bool(labels),
                                                        "routed": routed},
                           "inside_band": {x: bands[x]["p5"] <= real[x] <= bands[x]["p95"] for x in bands
                                           if isinstance(real.get(x), (int, float))},
                           "sim_over_measured": {x: sim[x] / real[x] if real.get(x) else None for x in KEYS},
                           "parts_p50": {"sim": sim["parts_p50"], "measured": parts or None}})
    if args.in_situ:
        repeated = in_situ_check(fleet, cals, names, lengths, args.seeds)
    else:
        repeated = repeated_check(fleet, names, lengths, loss, args.machine_cores, args.seeds) \
            if fleet.get("repeats") else None
    sweep = []
    for tasks in (int(x) for x in args.tasks.split(",") if args.sweep):
        for k in (int(x) for x in args.replicas.split(",")):
            w = Workload(tasks=tasks, requests=args.requests_per_replica * k, rate=args.rate_per_replica * k,
                         clients=args.clients_per_replica * k, zipf=args.zipf, new_tokens=fleet["max_tokens"],
                         prompt_tokens=lengths)
            for router in ("round-robin", "affinity"):
                sweep.append(run(k, router, tasks, svc, q, w, mb, mw) | {"zipf": args.zipf})
    reaction = router_reaction()
    payload = {"reaction": reaction, "inputs": {"service": svc.__dict__, "quality": q.__dict__, "from": str(args.fleet),
                          "calibrations": [str(p) for p in cal_paths], "prompt_tokens": dict(zip(names, lengths,
                                                                                                 strict=True)),
                          "records": str(args.records) if records else None, "sharing_loss": loss,
                          # cores other processes used while each calibration ran (None: not recorded then)
                          "calibration_other_cores": [c["calibrate"].get("other_cores") for c in cals],
                          "fleet_date": fleet.get("date")},
               "settings": vars(args) | {"fleet": str(args.fleet), "out": str(args.out)}, "checks": checks,
               "repeated_check": repeated, "sweep": sweep, "seconds": time.perf_counter() - t0,
               "date": time.strftime("%Y-%m-%d")}
    write_json(args.out, payload)
    render(checks, sweep, args.machine_cores, reaction)
    if repeated:
        render_repeated(repeated)
    if not sweep:
        print(f"wrote {args.out}")
        return
    png = args.out.with_suffix(".png")
    plot(sweep, png, f"fleet simulation (Zipf {args.zipf}, {args.clients_per_replica} clients and "
                     f"{args.rate_per_replica:g} req/s per replica)")
    print(f"wrote {args.out} and {png}")


ONE = "1 replica x1 thread 50%"
# what must agree for repeats of two bench_fleet.py runs to be pooled: the same load
SAME_LOAD = ("requests", "clients", "rate", "max_tokens", "max_batch", "max_wait_ms", "doc_chars", "budget")


def pooled(fleet: dict, more: list[Path]) -> dict:
    """`fleet` with the repeats of the runs in `more` after its own (for the repeated check); one clear error
    where a run is missing, has no repeats or measured another load."""
    repeats = list(fleet.get("repeats") or [])
    for path in more:
        if not path.exists():
            raise SystemExit(f"{path} not found: give bench_fleet.py --repeats N results to --more-repeats")
        other = json.loads(path.read_text())
        differs = [k for k in SAME_LOAD if other.get(k) != fleet.get(k)]
        if differs or not other.get("repeats"):
            raise SystemExit(f"{path} cannot be pooled with {fleet.get('date', 'the --fleet run')}: "
                             + (f"its {', '.join(differs)} differ" if differs else "it has no repeats"))
        repeats += other["repeats"]
    return fleet | {"repeats": repeats} if more else fleet


def prefill_in_situ(recs: list[dict], svc: ServiceModel) -> float | None:
    """The 1-replica load's prefills against the calibration's (median of each request's measured prefill, first
    token - start, over the model's for its prompt tokens; None without records).

    Why: the calibration fits a prefill from bursts of n requests sent together, and the other requests' HTTP
    work (parsing, tokenizing, answering) runs while the engine prefills, so the burst's cost per request holds
    it. Under load a request is prefilled long after its own HTTP work was done (it waited in the queue, while
    other requests decoded), so its prefill runs below the calibration's: 0.74-0.79 of it in the three repeats
    of fleet-records-3.json, 0.84 in fleet-records-2.json, while the decode steps ran 1.12-1.38x. Scaling the
    prefill by this ratio takes the HTTP work out of it; `engine_per_request_s` then puts it where it lands."""
    ok = [r for r in recs if r.get("status") == 200 and r.get("first_token_seconds") is not None
          and r.get("prompt_tokens")]
    if len(ok) < 20:
        return None
    return statistics.median((r["first_token_seconds"] - r["queue_seconds"]) / svc.prefill(r["prompt_tokens"])
                             for r in ok)


def with_engine_fit(svc: ServiceModel, q: Quality, fleet: dict, records: dict | None, names: list[str],
                    lengths: tuple[float, ...], cores: float, loss: float) -> ServiceModel:
    """`svc` fitted to `fleet`'s 1-replica load, in two steps: its prefill scaled to the load's own in-situ
    prefills (`prefill_in_situ`, where `fleet` kept that load's records: another session's would carry its own
    machine's speed), then the HTTP side's per-request engine cost that makes the model serve the measured
    requests per second (`fit_engine_per_request`, on this machine's `cores` shared: the setting the checks are
    judged on). The 2-replica points are not used: they stay predictions."""
    real = fleet["load"].get(ONE)
    if not real:
        return svc
    scale = prefill_in_situ((fleet.get("records") or {}).get(ONE) or [], svc)
    if scale is not None:
        svc = dataclasses.replace(svc, prefill_s=svc.prefill_s * scale,
                                  prefill_per_token_s=svc.prefill_per_token_s * scale)
    w = check_workload(fleet, records, ONE, names, lengths)
    c = fit_engine_per_request(svc, q, w, real["requests_per_s"], fleet["max_batch"], fleet["max_wait_ms"] / 1000,
                               cores, loss)
    return dataclasses.replace(svc, engine_per_request_s=c)


def matches(measured: list[float], sim: list[float]) -> dict:
    """One figure of one point: the measured median [min-max] over repeats beside the simulated median [5-95%
    band] over every repeat's draws, and the rule (`MATCH_RATIO`, the band overlapping the measured range).

    Why this rule: the measured range is how far the real fleet moved between repeats of one session, the band how
    far the model moves between draws of what a replay cannot fix (the costs' spread, the detector's errors);
    they overlap when the model can give what was measured. The ratio bounds the bias: 15% is about what a few
    percent of throughput moves the p50 by at 12 requests/s offered against 10-11 served (docs/fleet.md), and a
    p99 over 200 requests is their 2nd slowest."""
    b = band(sim)
    mid = statistics.median(measured)
    ratio = b["median"] / mid if mid else None
    overlap = b["p5"] <= max(measured) and b["p95"] >= min(measured)
    return {"measured": {"median": mid, "min": min(measured), "max": max(measured), "values": measured},
            "sim": b, "ratio": ratio, "overlap": overlap,
            "match": bool(overlap and ratio is not None and MATCH_RATIO[0] <= ratio <= MATCH_RATIO[1])}


RULE = (f"the simulated 5-95% band overlaps the measured [min, max] over repeats, and simulated median / measured "
        f"median is within {MATCH_RATIO[0]}-{MATCH_RATIO[1]}")


def check_points(fleet: dict, sims: dict[str, dict[str, list[float]]],
                 fitted: tuple[str, str] | None = None) -> list[dict]:
    """Per checked point (config) and figure: the measured values over `fleet`'s repeats against the simulated
    draws (`sims`: config -> figure -> draws), by `matches`; `fitted` names the (config, figure) a fit targeted."""
    points = []
    for (k, router), label in CHECKS.items():
        if label not in sims:
            continue
        measured = {x: [rep["load"][label][x] for rep in fleet["repeats"]] for x in FIGURES}
        figs = {x: matches(measured[x], sims[label][x]) | {"fitted": (label, x) == fitted} for x in FIGURES}
        points.append({"replicas": k, "router": router, "measured_config": label, "figures": figs,
                       "match": all(f["match"] for f in figs.values())})
    return points


def repeated_check(fleet: dict, names: list[str], lengths: tuple[float, ...], loss: float, cores: float,
                   seeds: int) -> dict:
    """The model against every repeat of a `bench_fleet.py --repeats N --phases load,calibrate` run: each repeat
    with the inputs of its own session (its calibration, its records' growth of the outside path and costs'
    spread, the HTTP side's cost fitted to its own 1-replica throughput, its requests' prompt tokens and detected
    tasks), replayed under `seeds` draws on this machine's `cores` shared; per point and figure, `matches`."""
    per_repeat, sims, inputs_of = [], {}, []
    for i, rep in enumerate(fleet["repeats"]):
        if "calibrate" not in rep or not rep.get("records"):
            raise SystemExit(f"repeat {i + 1} has no calibration or no records: run bench_fleet.py --phases "
                             "load,calibrate --repeats N")
        view = fleet | {"load": rep["load"], "records": rep["records"], "calibrate": rep["calibrate"]}
        base, q = inputs(view, [view], view)
        svc = with_engine_fit(base, q, view, view, names, lengths, cores, loss)
        inputs_of.append(svc.__dict__ | {"prefill_scale": prefill_in_situ(rep["records"][ONE], base)
                                         if ONE in rep["records"] else None})
        mb, mw = fleet["max_batch"], fleet["max_wait_ms"] / 1000
        for (k, router), label in CHECKS.items():
            if label not in rep["load"]:
                continue
            w = check_workload(view, view, label, names, lengths)
            sim = run_seeds(k, router, svc, q, w, mb, mw, cores, loss, seeds)
            for x in FIGURES:
                sims.setdefault(label, {}).setdefault(x, []).extend(sim["draws"][x])
            busy = measured_busy_s(rep["records"][label])
            sim_busy = statistics.median(sim["draws"]["engine_busy_s"])
            per_repeat.append({"repeat": i + 1, "config": label, "sim_parts_p50": sim["parts_p50"],
                               "measured_parts_p50": measured_parts(rep["records"][label]) or None,
                               "sim_median": {x: statistics.median(sim["draws"][x]) for x in FIGURES},
                               "measured": {x: rep["load"][label].get(x) for x in FIGURES},
                               "engine_busy_s": {"measured": busy, "sim": sim_busy,
                                                 "ratio": busy / sim_busy if busy and sim_busy else None}})
    # the 1-replica throughput is the fit's target (met unless the fit is 0)
    points = check_points(fleet, sims, fitted=(ONE, "requests_per_s"))
    return {"rule": RULE, "repeats": len(fleet["repeats"]), "draws_per_repeat": seeds, "cores": cores,
            "inputs": inputs_of, "points": points, "per_repeat": per_repeat}


ENGINE_COSTS = ("step_s", "step_per_row_s", "prefill_s", "prefill_per_token_s", "swap_s")


def in_situ_check(fleet: dict, calibrations: list[dict], names: list[str], lengths: tuple[float, ...],
                  seeds: int) -> dict:
    """The queues alone: the model against every repeat's loads, each simulated with its own replicas' engine
    costs as their step logs timed them (`step_costs`, from `bench_fleet.py --step-logs`: sharing the cores and
    waiting for the interpreter included, so no core-sharing stretch and no HTTP-side engine cost on top), the
    rest of the model's inputs as in the repeated check (the path outside the engines from `calibrations`).

    Why: at 75-80% of capacity a run's own engine speed moves its latency medians about three times as much
    (`engine_busy_s`: correlation 0.92 over 12 runs), and the engines' speed moved by +-12% between interleaved
    runs of one session. With each run's own costs, what is judged is the part the model is for: the queues that
    its scheduler, router and batches build from those costs."""
    if not any((rep.get("load", {}).get(label) or {}).get("step_costs") for rep in fleet.get("repeats") or []
               for label in CHECKS.values()):
        raise SystemExit("no load has step_costs: run bench_fleet.py --repeats N --step-logs DIR (or step_logs.py "
                         "DIR --annotate its results)")
    per_repeat, sims, inputs_of = [], {}, []
    mb, mw = fleet["max_batch"], fleet["max_wait_ms"] / 1000
    for i, rep in enumerate(fleet["repeats"]):
        view = fleet | {"load": rep["load"], "records": rep["records"]}
        base, q = inputs(view, calibrations, view)
        for (k, router), label in CHECKS.items():
            costs = (rep["load"].get(label) or {}).get("step_costs")
            if not costs:
                continue
            svc = dataclasses.replace(base, engine_per_request_s=0.0, **{c: costs[c] for c in ENGINE_COSTS})
            inputs_of.append({"repeat": i + 1, "config": label} | {c: costs[c] for c in ENGINE_COSTS})
            w = check_workload(view, view, label, names, lengths)
            sim = run_seeds(k, router, svc, q, w, mb, mw, None, 0.0, seeds)
            for x in FIGURES:
                sims.setdefault(label, {}).setdefault(x, []).extend(sim["draws"][x])
            per_repeat.append({"repeat": i + 1, "config": label,
                               "sim_median": {x: statistics.median(sim["draws"][x]) for x in FIGURES},
                               "measured": {x: rep["load"][label].get(x) for x in FIGURES}})
    points = check_points(fleet, sims)  # nothing fitted to a load's figures
    return {"rule": RULE, "title": "each load with its own engine costs (step logs)", "repeats": len(fleet["repeats"]),
            "draws_per_repeat": seeds, "cores": None, "inputs": inputs_of, "points": points,
            "per_repeat": per_repeat}


def render_repeated(rc: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    fmt = {"requests_per_s": ".2f", "latency_p50": ".3f", "latency_p99": ".3f", "ttft_p50": ".3f",
           "ttft_p99": ".3f", "set_moves_per_request": ".3f"}
    where = f"{rc['cores']:g} cores shared" if rc["cores"] else rc.get("title", "")
    t = Table(title=escape(f"the model against {rc['repeats']} repeats ({rc['draws_per_repeat']} draws each, "
                           f"{where}); match: {rc['rule']}"))
    for col in ("point", "figure", "measured median [min-max]", "sim median [5-95%]", "sim / measured",
                "band overlaps", "match"):
        t.add_column(escape(col))
    for pt in rc["points"]:
        for x, f in pt["figures"].items():
            m, s, v = f["measured"], f["sim"], fmt[x]
            t.add_row(pt["measured_config"], x + (" (fitted)" if f["fitted"] else ""),
                      escape(f"{m['median']:{v}} [{m['min']:{v}}-{m['max']:{v}}]"),
                      escape(f"{s['median']:{v}} [{s['p5']:{v}}-{s['p95']:{v}}]"),
                      "-" if f["ratio"] is None else f"{f['ratio']:.2f}", "yes" if f["overlap"] else "no",
                      "yes" if f["match"] else "[bold]no[/bold]")
    Console(width=170).print(t)
    svc = rc["inputs"]
    if not svc or "prefill_scale" not in svc[0]:
        return
    print("fitted per repeat to its 1-replica load: HTTP side's engine cost per request (ms) "
          + ", ".join(f"{x['engine_per_request_s'] * 1e3:.2f}" for x in svc) + "; prefill in situ / calibration "
          + ", ".join("-" if x["prefill_scale"] is None else f"{x['prefill_scale']:.3f}" for x in svc))
    ratios = [(r["config"], r["repeat"], r["engine_busy_s"]["ratio"]) for r in rc["per_repeat"]
              if r.get("engine_busy_s", {}).get("ratio")]
    for label in dict.fromkeys(c for c, _, _ in ratios):
        print(f"engines' busy time, measured / simulated, per repeat: {label}: "
              + ", ".join(f"{x:.2f}" for c, _, x in ratios if c == label))


def router_reaction(tasks: int = 8) -> list[dict]:
    """The affinity router alone (no timing): after 200 interleaved requests, how many requests of one task it
    takes until that task has every replica; and on 4,000 interleaved requests, how many reassignments the
    estimate's noise causes. Defaults against shorter half-lives: reaction bought with churn."""
    from lightmoe_cli.fleet.router import AffinityRouter

    names = [f"t{i}" for i in range(tasks)]
    out = []
    for half_life, every in ((None, None), (32, 16), (16, 8)):
        for k in (2, 4):
            r = AffinityRouter(k, names, half_life=half_life, rebalance_every=every)
            for i in Workload(tasks=tasks, requests=4000, order="shift", seed=3).task_sequence():
                r.done(r.route(names[i]).replica)
            churn = r.reassignments
            r = AffinityRouter(k, names, half_life=half_life, rebalance_every=every)
            seq = [names[i] for i in Workload(tasks=tasks, requests=200, order="shift").task_sequence()]
            for i in seq:
                r.done(r.route(i).replica)
            took = None
            for j in range(1, 1001):
                r.done(r.route(names[5]).replica)
                if len(r.assignment.replicas_of[names[5]]) == k:
                    took = j
                    break
            out.append({"half_life": half_life or "default", "replicas": k,
                        "requests_until_hot_task_has_every_replica": took, "reassignments_on_4000_uniform": churn})
    return out


def render(checks: list[dict], sweep: list[dict], args_cores: float = 2.0, reaction: list | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    c = Console(width=170)
    t = Table(title="simulation vs measurement (the measured load replayed)")
    for col in ("replicas", "router", "", "req/s", "p50 s", "p99 s", "TTFT p50 s", "TTFT p99 s", "set moves/req",
                "NLL/tok", "replica s/req"):
        t.add_column(col)
    shown = set()
    for ch in checks:
        rows = [("measured", ch["measured"])] if ch["measured_config"] not in shown else []
        shown.add(ch["measured_config"])
        where = "a core each" if ch["cores"] is None else f"{ch['cores']:g} cores shared"
        if ch["cores"] is not None and ch["cores"] != args_cores:
            where = f"{ch['cores']:g} cores left by other processes"
        rows.append((f"sim, {where}", ch["sim"]))
        for kind, v in rows:
            t.add_row(str(ch["replicas"]), ch["router"], kind, f"{v['requests_per_s']:.2f}", f"{v['latency_p50']:.2f}",
                      f"{v['latency_p99']:.2f}", *("-" if v.get(x) is None else f"{v[x]:.3f}"
                                                  for x in ("ttft_p50", "ttft_p99")),
                      "-" if v["set_moves_per_request"] is None else
                      f"{v['set_moves_per_request']:.2f}", f"{v['nll_per_token']:.4f}",
                      "-" if v.get("replica_s_per_request") is None else f"{v['replica_s_per_request']:.3f}")
        r = ch["sim_over_measured"]
        t.add_row("", "", "  sim / measured", *(f"{r[x]:.2f}" if r[x] else "-" for x in KEYS))
        if ch.get("bands"):
            b, inside = ch["bands"], ch.get("inside_band", {})
            t.add_row("", "", f"  sim 5-95% ({b['latency_p99']['draws']} draws)",
                      *(f"{b[x]['p5']:.2f}-{b[x]['p95']:.2f}{'' if inside.get(x, True) else ' !'}" if x in b else ""
                        for x in ("requests_per_s", "latency_p50", "latency_p99", "ttft_p50", "ttft_p99")))
    c.print(t)
    t = Table(title="where a request's time goes (median ms: waiting for its prefill / prefill / decode / outside "
              f"the engine), {args_cores:g} cores shared")
    for col in ("replicas", "router", "sim", "measured"):
        t.add_column(col)
    for ch in checks:
        if ch["cores"] == args_cores:
            sim, real = ch["parts_p50"]["sim"], ch["parts_p50"]["measured"]
            t.add_row(str(ch["replicas"]), ch["router"], " / ".join(f"{v * 1e3:.0f}" for v in sim.values()),
                      " / ".join(f"{v * 1e3:.0f}" for v in real.values()) if real else "- (no records)")
    c.print(t)
    c.print(f"router reaction vs churn: {reaction}")
    t = Table(title="fleet simulation: affinity vs round-robin")
    for col in ("tasks", "replicas", "rr req/s", "aff req/s", "aff / rr", "rr p99 s", "aff p99 s", "rr moves/req",
                "aff moves/req", "aff mean batch", "reassignments", "overflow", "NLL/tok", "prune NLL/tok"):
        t.add_column(col)
    by = {(r["tasks"], r["replicas"], r["router"]): r for r in sweep}
    for tasks, k in sorted({(r["tasks"], r["replicas"]) for r in sweep}):
        rr, af = by[(tasks, k, "round-robin")], by[(tasks, k, "affinity")]
        t.add_row(str(tasks), str(k), f"{rr['requests_per_s']:,.1f}", f"{af['requests_per_s']:,.1f}",
                  f"{af['requests_per_s'] / rr['requests_per_s']:.2f}", f"{rr['latency_p99']:.2f}",
                  f"{af['latency_p99']:.2f}", f"{rr['set_moves_per_request']:.3f}",
                  f"{af['set_moves_per_request']:.3f}", f"{af['mean_batch']:.2f}", str(af["reassignments"]),
                  str(af["overflow"]), f"{af['nll_per_token']:.4f}", f"{af['nll_prune_per_token']:.4f}")
    c.print(t)


def plot(sweep: list[dict], path: Path, title: str) -> None:
    """Three panels against replicas (log): throughput per replica, p99 latency, set moves per request; one
    colour per task count, solid affinity, dashed round-robin."""
    from lightmoe_cli.evaluation.plots import _plt, _save

    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True)
    colors = dict(zip(sorted({r["tasks"] for r in sweep}), ("tab:blue", "tab:orange", "tab:green", "tab:red"),
                      strict=False))
    for tasks, color in colors.items():
        for router, style in (("affinity", "-"), ("round-robin", "--")):
            rows = sorted((r for r in sweep if r["tasks"] == tasks and r["router"] == router),
                          key=lambda r: r["replicas"])
            ks = [r["replicas"] for r in rows]
            label = f"{tasks} tasks, {router}"
            axes[0].plot(ks, [r["requests_per_s"] / r["replicas"] for r in rows], style, color=color, marker="o",
                         label=label)
            axes[1].plot(ks, [r["latency_p99"] for r in rows], style, color=color, marker="o", label=label)
            axes[2].plot(ks, [r["set_moves_per_request"] for r in rows], style, color=color, marker="o", label=label)
    for ax, ylabel in zip(axes, ("requests/s per replica", "p99 latency (s)", "set moves per request"),
                          strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("replicas")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    _save(fig, path)


if __name__ == "__main__":
    main()
