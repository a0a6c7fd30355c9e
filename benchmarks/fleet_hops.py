"""Where a fleet request's time went, per request and per hop, from Ray Serve's own access logs.

Why: the load client keeps one latency per request; the fleet simulator's 2-replica check needs to know whether
the time the model misses sits outside the replicas (client, Ray's HTTP proxy, the ingress, the hops between
them) or inside a replica. Ray Serve logs every request once per deployment it passes, with the same request id:
the proxy's time, the ingress's, and the replica call's (which replica, when it ended). Those three per request
give the hops (proxy - ingress, ingress - replica call) and each replica's arrivals and time in flight.

Input: one Ray session per measured configuration (`/tmp/ray/session_*`, the load phase starts one fleet, so one
session, per configuration); optionally bench_fleet.py's results, for the replicas' CPU seconds per request
(then: the cores a replica got while the other was in flight too). Output: a JSON of per-request records and a
summary per configuration.

    python benchmarks/fleet_hops.py --fleet benchmarks/results/fleet-quiet.json \
        "2 replicas round-robin 50%=/tmp/ray/session_2026-12-01_10-00-43_777955_17248" ...
    python benchmarks/fleet_hops.py --records benchmarks/results/fleet-records.json

bench_fleet.py's load phase now joins its records with their hops itself (`join`, by the `x-request-id` the
client sends) and keeps `breakdown` per configuration; `--records` reads such a file: the path outside the
engines by the engines computing meanwhile, and the decode step in situ.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, write_json  # noqa: E402
from lightmoe_cli.fleet.sim import percentile  # noqa: E402

# INFO 2026-12-01 10:00:55,172 proxy 192.0.2.2 <request id> -- POST / 200 139.7ms
# INFO 2026-12-01 10:00:55,166 lightmoe_replica-0 v8dpljm6 <request id> -- CALL call OK 118.6ms
LINE = re.compile(r"^INFO (\S+ \S+) (\S+) \S+ (\S+) -- (?:POST / 200|CALL call OK) ([\d.]+)ms")


def read_session(session: Path) -> list[dict]:
    """Per answered request, sorted by arrival at the proxy: its request id, its arrival (s from the first), and
    per hop its time (proxy, ingress, replica call), which replica served it, and when the replica call began."""
    hops: dict[str, dict] = {}
    for path in sorted((session / "logs" / "serve").glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            m = LINE.match(line)
            if not m:
                continue
            stamp, who, rid, ms = m.groups()
            end = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
            role = "proxy" if who == "proxy" else "ingress" if who.endswith("ingress") else "replica"
            rec = hops.setdefault(rid, {})
            rec[role] = (end - float(ms) / 1000, float(ms) / 1000)  # (start, seconds)
            if role == "replica":
                rec["replica_name"] = who.split("_", 1)[-1]
    recs = sorted(((rid, r) for rid, r in hops.items() if {"proxy", "ingress", "replica"} <= r.keys()),
                  key=lambda x: x[1]["proxy"][0])
    if not recs:
        raise SystemExit(f"{session}: no request found in Ray Serve's access logs (logs/serve/*.log)")
    t0 = recs[0][1]["proxy"][0]
    return [{"request_id": rid, "arrival_s": round(r["proxy"][0] - t0, 4), "proxy_s": r["proxy"][1],
             "ingress_s": r["ingress"][1], "replica": r["replica_name"],
             "replica_start_s": round(r["replica"][0] - t0, 4), "replica_s": r["replica"][1]} for rid, r in recs]


def latest_session(root: Path | None = None) -> Path | None:
    """The newest local Ray session (`session_latest` under Ray's temp dir: $RAY_TMPDIR or /tmp/ray)."""
    import os

    link = (root or Path(os.environ.get("RAY_TMPDIR", "/tmp/ray"))) / "session_latest"
    return link.resolve() if link.exists() else None


def in_flight(recs: list[dict]) -> dict[str, list[tuple[float, float]]]:
    """Per replica, the merged intervals during which it had at least one call in flight."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in sorted(recs, key=lambda r: r["replica_start_s"]):
        s, e = r["replica_start_s"], r["replica_start_s"] + r["replica_s"]
        ivs = out.setdefault(r["replica"], [])
        if ivs and s <= ivs[-1][1]:
            ivs[-1] = (ivs[-1][0], max(ivs[-1][1], e))
        else:
            ivs.append((s, e))
    return out


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(e, e2) - max(s, s2)) for s, e in a for s2, e2 in b)


PARTS = ("client_s", "proxy_s", "ingress_s", "replica_http_s", "answer_s", "queue_s", "prefill_s", "decode_s")


def split(rec: dict) -> dict[str, float] | None:
    """One load record joined with its hops -> where its latency went (they sum to it): the client's side and
    the network (`client_s`), Ray's proxy and the hop to the ingress, the ingress and the hop to the replica, the
    replica's HTTP side around the engine (parsing and tokenizing before, JSON and Ray's relay after), the HTTP
    side waking up and building the answer (`answer_s`), and in the engine: waiting, the prefill (and a set
    move), the decode. None when a figure is missing."""
    need = ("latency", "proxy_s", "ingress_s", "replica_s", "queue_seconds", "first_token_seconds", "done_seconds",
            "answer_seconds")
    if any(rec.get(k) is None for k in need):
        return None
    engine = rec["done_seconds"] + rec["answer_seconds"]
    return {"client_s": rec["latency"] - rec["proxy_s"], "proxy_s": rec["proxy_s"] - rec["ingress_s"],
            "ingress_s": rec["ingress_s"] - rec["replica_s"], "replica_http_s": rec["replica_s"] - engine,
            "answer_s": rec["answer_seconds"], "queue_s": rec["queue_seconds"],
            "prefill_s": rec["first_token_seconds"] - rec["queue_seconds"],
            "decode_s": rec["done_seconds"] - rec["first_token_seconds"]}


def company(recs: list[dict]) -> list[int]:
    """Per record, how many other calls its replica had in flight at some time during its own call."""
    out = []
    for r in recs:
        s, e = r["replica_start_s"], r["replica_start_s"] + r["replica_s"]
        out.append(sum(x is not r and x["replica"] == r["replica"] and x["replica_start_s"] < e
                       and x["replica_start_s"] + x["replica_s"] > s for x in recs))
    return out


def _merge(ivs: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for s, e in sorted(ivs):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def engine_windows(recs: list[dict]) -> list[dict | None]:
    """Per record joined with its hops, its times in the engine on the logs' clock (s from the first request at the
    proxy): arrival, prefill start, first token, handed back (None when a figure is missing). The replica's HTTP
    time around the engine (`split`'s `replica_http_s`) is taken as half before, half after: the logs do not tell
    them apart."""
    out: list[dict | None] = []
    for r in recs:
        p = split(r)
        if p is None:
            out.append(None)
            continue
        arrive = r["replica_start_s"] + p["replica_http_s"] / 2
        out.append({"replica": r["replica"], "arrive": arrive, "start": arrive + r["queue_seconds"],
                    "first": arrive + r["first_token_seconds"], "done": arrive + r["done_seconds"]})
    return out


def busy_outside(recs: list[dict]) -> list[float | None]:
    """Per record joined with its hops, how many replicas' engines were computing, on average, while it was
    outside the engine: from the proxy's start to its engine arrival and from the engine handing it back to the
    proxy's end (None when a figure is missing). A replica's engine computes while it holds a request: from the
    request's arrival at the engine to its `done_seconds`."""
    wins = engine_windows(recs)
    engine: dict[str, list[tuple[float, float]]] = {}
    for w in wins:
        if w is not None:
            engine.setdefault(w["replica"], []).append((w["arrive"], w["done"]))
    merged = [_merge(v) for v in engine.values()]
    out: list[float | None] = []
    for r, w in zip(recs, wins, strict=True):
        if w is None:
            out.append(None)
            continue
        parts = [(r["arrival_s"], w["arrive"]), (w["done"], r["arrival_s"] + r["proxy_s"])]
        span = sum(max(e - s, 0.0) for s, e in parts)
        out.append(sum(overlap(parts, ivs) for ivs in merged) / span if span > 0 else 0.0)
    return out


def decode_steps(recs: list[dict]) -> list[dict | None]:
    """Per record joined with its hops (and at least 3 decode steps), what a decode step cost it in situ: its
    decode time less the prefills of requests that joined its replica meanwhile, over its steps (new tokens - 1);
    the mean rows decoded beside it (itself and the other requests in their decode meanwhile), and the share of
    that time another replica's engine was computing."""
    wins = engine_windows(recs)
    engine: dict[str, list[tuple[float, float]]] = {}
    for w in wins:
        if w is not None:
            engine.setdefault(w["replica"], []).append((w["start"], w["done"]))
    out: list[dict | None] = []
    for r, w in zip(recs, wins, strict=True):
        steps = (r.get("new_tokens") or 0) - 1
        if w is None or steps < 3 or w["done"] <= w["first"]:
            out.append(None)
            continue
        span = [(w["first"], w["done"])]
        same = [x for x in wins if x is not None and x is not w and x["replica"] == w["replica"]]
        joined = sum(overlap(span, [(x["start"], x["first"])]) for x in same)
        rows = 1.0 + sum(overlap(span, [(x["first"], x["done"])]) for x in same) / (w["done"] - w["first"])
        others = [overlap(span, _merge(v)) for k, v in engine.items() if k != w["replica"]]
        out.append({"step_s": (w["done"] - w["first"] - joined) / steps, "rows": rows,
                    "other_busy": max(others) / (w["done"] - w["first"]) if others else 0.0})
    return out


def records_report(recs: list[dict]) -> dict:
    """One load run's fleet records: the path outside the engine (from the proxy's start and back to its end) by
    the engines computing meanwhile, and the in-situ decode step while another replica idled or computed."""
    out: dict = {}
    bins = {"none": (0.0, 0.25), "about one": (0.75, 1.25), "two": (1.75, 2.01)}
    pairs = [(b, r["proxy_s"] - r["done_seconds"]) for r, b in zip(recs, busy_outside(recs), strict=True)
             if b is not None]
    out["outside_by_engines_computing"] = {
        k: {"requests": len(v), "p50_s": percentile(v, 0.5)}
        for k, (lo, hi) in bins.items() if (v := [y for b, y in pairs if lo <= b < hi])}
    steps = [s for s in decode_steps(recs) if s is not None]
    for name, keep in (("other idle", lambda s: s["other_busy"] < 0.2), ("other computing", lambda s: s["other_busy"]
                                                                         >= 0.8)):
        got = [s for s in steps if keep(s)]
        if got:
            out[f"decode_step_{name.replace(' ', '_')}"] = {
                "requests": len(got), "step_p50_s": percentile([s["step_s"] for s in got], 0.5),
                "rows_mean": sum(s["rows"] for s in got) / len(got)}
    return out


def breakdown(recs: list[dict]) -> dict:
    """Load records joined with their hops (`replica_start_s`, `replica_s`, `proxy_s`, `ingress_s` beside the
    client's latency and the replica's meter) -> the mean and median of each part of the latency (`split`), for
    all of them and by the company their replica had (0, 1, 2-3, 4+ other calls in flight during theirs)."""
    rows = [(r, p) for r in recs if (p := split(r)) is not None]
    if not rows:
        return {}
    groups: dict[str, list[dict]] = {"all": [p for _, p in rows]}
    for (_, p), n in zip(rows, company([r for r, _ in rows]), strict=True):
        groups.setdefault("0" if n == 0 else "1" if n == 1 else "2-3" if n <= 3 else "4+", []).append(p)

    def stats(ps: list[dict]) -> dict:
        return {"requests": len(ps), "mean": {k: sum(p[k] for p in ps) / len(ps) for k in PARTS},
                "p50": {k: percentile([p[k] for p in ps], 0.5) for k in PARTS},
                "latency_mean": sum(sum(p.values()) for p in ps) / len(ps),
                "latency_p50": percentile([sum(p.values()) for p in ps], 0.5)}

    return {"all": stats(groups["all"])} | {f"company {k}": stats(groups[k]) for k in ("0", "1", "2-3", "4+")
                                            if k in groups}


def join(recs: list[dict], session: Path) -> list[dict]:
    """The load's records with their hops from the Ray session's access logs, by request id (a record whose id
    is not in the logs stays as it was)."""
    hops = {h["request_id"]: h for h in read_session(session)}
    return [r | {k: v for k, v in hops.get(r.get("request_id"), {}).items() if k != "request_id"} for r in recs]


def summarise(recs: list[dict], replica_cpu_s: float | None = None) -> dict:
    """Percentiles per hop; per replica its time in flight; with two replicas, the time both were in flight and
    (given the replicas' CPU seconds) the cores a replica got while the other was in flight too, taking one core
    while alone."""

    def pcts(xs: list[float]) -> dict:
        return {f"p{q}": percentile(xs, q / 100) for q in (10, 50, 90, 99)}

    out = {"requests": len(recs),
           "proxy_s": pcts([r["proxy_s"] for r in recs]),
           "replica_call_s": pcts([r["replica_s"] for r in recs]),
           # time spent in the proxy and the ingress and on the hops between them and the replica
           "outside_replica_s": pcts([r["proxy_s"] - r["replica_s"] for r in recs]),
           "proxy_minus_ingress_s": pcts([r["proxy_s"] - r["ingress_s"] for r in recs]),
           "ingress_minus_replica_s": pcts([r["ingress_s"] - r["replica_s"] for r in recs])}
    # a replica call by what else its replica held: calls already in flight when it began, calls begun during it
    by: dict[str, list[float]] = {}
    for r in recs:
        s, e = r["replica_start_s"], r["replica_start_s"] + r["replica_s"]
        same = [(x["replica_start_s"], x["replica_start_s"] + x["replica_s"]) for x in recs
                if x["replica"] == r["replica"] and x is not r]
        before, during = sum(s2 < s < e2 for s2, e2 in same), sum(s < s2 < e for s2, _ in same)
        by.setdefault(f"before {min(before, 2)}{'+' if before >= 2 else ''}, during {min(during, 2)}"
                      f"{'+' if during >= 2 else ''}", []).append(r["replica_s"])
    out["replica_call_by_company_s"] = {k: {"requests": len(v), "p50": round(percentile(v, 0.5), 4)}
                                         for k, v in sorted(by.items())}
    flight = in_flight(recs)
    out["in_flight_s"] = {k: sum(e - s for s, e in v) for k, v in flight.items()}
    if len(flight) == 2:
        both = overlap(*flight.values())
        out["both_in_flight_s"] = both
        if replica_cpu_s is not None:
            alone = sum(out["in_flight_s"].values()) - 2 * both
            out["replica_cpu_s"] = replica_cpu_s
            out["cores_each_while_both_in_flight"] = (replica_cpu_s - alone) / (2 * both) if both > 0 else None
    elif replica_cpu_s is not None:
        out["replica_cpu_s"] = replica_cpu_s
        out["cores_while_in_flight"] = replica_cpu_s / sum(out["in_flight_s"].values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sessions", nargs="*", help="LABEL=RAY_SESSION_DIR, one per configuration (the label as in "
                    "bench_fleet.py's results)")
    ap.add_argument("--fleet", type=Path, help="bench_fleet.py's results (for the replicas' CPU seconds)")
    ap.add_argument("--records", type=Path, help="instead: bench_fleet.py results with per-request records "
                    "(already joined with their hops): print where the time outside the engines and the decode went")
    ap.add_argument("--out", type=Path, default=RESULTS / "fleet-quiet-hops.json")
    args = ap.parse_args()
    if args.records:
        for label, recs in json.loads(args.records.read_text()).get("records", {}).items():
            if any("replica_s" in r for r in recs):
                print(f"{label}: {json.dumps(records_report(recs))}")
        return
    if not args.sessions:
        ap.error("give LABEL=RAY_SESSION_DIR sessions, or --records")
    fleet = json.loads(args.fleet.read_text()) if args.fleet else {}
    payload: dict = {"fleet": str(args.fleet) if args.fleet else None, "configs": {}}
    for item in args.sessions:
        label, _, session = item.partition("=")
        recs = read_session(Path(session))
        load = fleet.get("load", {}).get(label, {})
        cpu = (load.get("cpu_s_per_request") or {}).get("replicas")
        summary = summarise(recs, cpu * load["answered"] if cpu is not None else None)
        payload["configs"][label] = {"session": Path(session).name, "summary": summary, "requests": recs}
        s = summary
        print(f"{label}: replica call p50 {s['replica_call_s']['p50']:.3f} p99 {s['replica_call_s']['p99']:.3f} s; "
              f"outside it p50 {s['outside_replica_s']['p50'] * 1e3:.0f} ms p99 "
              f"{s['outside_replica_s']['p99'] * 1e3:.0f} ms; in flight "
              + ", ".join(f"{k} {v:.1f} s" for k, v in s["in_flight_s"].items())
              + (f"; both {s['both_in_flight_s']:.1f} s" if "both_in_flight_s" in s else "")
              + (f"; cores each while both {s['cores_each_while_both_in_flight']:.2f}"
                 if s.get("cores_each_while_both_in_flight") is not None else ""))
    write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
