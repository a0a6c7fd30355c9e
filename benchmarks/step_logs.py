"""What the fleet's replicas' engines really spent per step, prefill and set move (their step logs), by config.

Reads the folders `bench_fleet.py --step-logs DIR` leaves (DIR/<config>-<n>/steps-replica-<i>-<pid>.jsonl, from
serve/steplog.py) and sets, per configuration over its runs: a decode step's median seconds by its rows, with
the other replica's engine idle ("alone": under 10% of the step) and computing ("shared": over 90%); a prefill's
median seconds per prompt token, alone and shared; a set move's median. Why: the fleet model prices these from
calibration bursts and stretches them by one factor while replicas share cores (fleet/sim.py, `replica_speed`);
this is what they cost inside the fleet, timed where the engine thread calls them, so a router's replicas can be
compared at equal rows and equal sharing.

    python benchmarks/step_logs.py DIR [--out benchmarks/results/fleet-step-logs.json]
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, write_json  # noqa: E402
from lightmoe_cli.serve.steplog import read  # noqa: E402


def busy_share(intervals: list[tuple[float, float]], starts: list[float], a: float, b: float) -> float:
    """The share of [a, b] that `intervals` (sorted, not overlapping: one engine thread's calls) cover."""
    if b <= a:
        return 0.0
    covered = 0.0
    for s, e in intervals[max(bisect.bisect_left(starts, a) - 1, 0):]:
        if s >= b:
            break
        covered += max(0.0, min(b, e) - max(a, s))
    return covered / (b - a)


def summarise(runs: dict[str, dict[str, list[dict]]], most_rows: int = 4, least: int = 5) -> dict:
    """runs: run name -> that run's logs (file stem -> records); runs named <config>-<n> pool by config."""
    out: dict[str, dict] = {}
    for name, logs in sorted(runs.items()):
        if len(logs) < 2:
            continue  # a lone replica has no "shared"
        cfg = name.rsplit("-", 1)[0]
        acc = out.setdefault(cfg, {"runs": 0, "step": {}, "prefill": {"alone": [], "shared": []}, "move": []})
        acc["runs"] += 1
        spans = {k: sorted((x["t"], x["t"] + x["s"]) for x in v) for k, v in logs.items()}
        starts = {k: [a for a, _ in v] for k, v in spans.items()}  # once per log, not per record
        for me, records in logs.items():
            others = [k for k in logs if k != me]
            for x in records:
                share = max(busy_share(spans[o], starts[o], x["t"], x["t"] + x["s"]) for o in others)
                cond = "alone" if share < 0.1 else "shared" if share > 0.9 else None
                if x["kind"] == "move":
                    acc["move"].append(x["s"])
                elif cond and x["kind"] == "step":
                    acc["step"].setdefault(f"{x['n']} {cond}", []).append(x["s"])
                elif cond and x["kind"] == "prefill" and x["n"]:
                    acc["prefill"][cond].append(x["s"] / x["n"])
    summary = {}
    for cfg, acc in out.items():
        med = {k: {"median_s": statistics.median(v), "n": len(v)} for k, v in acc["step"].items() if len(v) >= least}
        summary[cfg] = {"runs": acc["runs"],
                        "step": {f"{rows} {cond}": med[f"{rows} {cond}"] for rows in range(1, most_rows + 1)
                                 for cond in ("alone", "shared") if f"{rows} {cond}" in med},
                        "prefill_per_token": {c: {"median_s": statistics.median(v), "n": len(v)}
                                              for c, v in acc["prefill"].items() if len(v) >= least},
                        "move": {"median_s": statistics.median(acc["move"]), "n": len(acc["move"])}
                        if acc["move"] else None}
    return summary


def fit_costs(logs: dict[str, list[dict]]) -> dict[str, float] | None:
    """One run's engine costs from its replicas' step logs pooled, in the fleet model's terms (seconds): a decode
    step `step_s` + `step_per_row_s` * rows and a prefill `prefill_s` + `prefill_per_token_s` * prompt tokens
    (least squares over every call), a set move's median `swap_s`. As they ran: sharing the cores, waiting for
    the interpreter while the replica's HTTP side held it. None without steps and prefills."""
    from benchmarks.bench_task_locality import line_fit

    rows = [x for v in logs.values() for x in v]
    steps = [(x["n"], x["s"]) for x in rows if x["kind"] == "step"]
    prefills = [(x["n"], x["s"]) for x in rows if x["kind"] == "prefill"]
    moves = [x["s"] for x in rows if x["kind"] == "move"]
    if len(steps) < 2 or len(prefills) < 2:
        return None
    a, b = line_fit([n for n, _ in steps], [s for _, s in steps])
    c, d = line_fit([n for n, _ in prefills], [s for _, s in prefills])
    return {"step_s": max(a, 0.0), "step_per_row_s": max(b, 0.0), "prefill_s": max(c, 0.0),
            "prefill_per_token_s": max(d, 0.0), "swap_s": statistics.median(moves) if moves else 0.0,
            "steps": len(steps), "prefills": len(prefills), "moves": len(moves)}


def annotate(fleet_path: Path) -> int:
    """Put each fleet load's `step_costs` (fit_costs of its `step_logs` folder) into bench_fleet.py's results,
    where the folder is still there; returns how many loads got them."""
    import json

    data = json.loads(fleet_path.read_text())
    done = 0
    for rep in data.get("repeats") or [{"load": data.get("load", {})}]:
        for s in rep["load"].values():
            folder = s.get("step_logs")
            if folder and Path(folder).is_dir() and (costs := fit_costs(read(Path(folder)))):
                s["step_costs"] = costs
                done += 1
    write_json(fleet_path, data)
    return done


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("logs", type=Path, help="bench_fleet.py --step-logs DIR")
    ap.add_argument("--out", type=Path, default=RESULTS / "fleet-step-logs.json")
    ap.add_argument("--annotate", type=Path, default=None, help="bench_fleet.py's results of the run that left DIR: "
                    "each load gets its replicas' fitted engine costs (`step_costs`, for sim_fleet.py --in-situ)")
    args = ap.parse_args()
    if not args.logs.is_dir():
        raise SystemExit(f"{args.logs} is not a folder: give the DIR of bench_fleet.py --step-logs DIR")
    runs = {p.name: read(p) for p in sorted(args.logs.iterdir()) if p.is_dir()}
    summary = summarise(runs)
    if not summary:
        raise SystemExit(f"no 2-replica step logs under {args.logs}")
    from rich.console import Console
    from rich.table import Table

    t = Table(title="fleet replicas' engines, median ms (n): a step by rows with the other engine idle / computing; "
                    "a prefill per token; a set move")
    cfgs = list(summary)
    t.add_column("")
    for c in cfgs:
        t.add_column(f"{c} ({summary[c]['runs']} runs)")
    keys = sorted({k for s in summary.values() for k in s["step"]}, key=lambda k: (int(k.split()[0]), k))
    for k in keys:
        t.add_row(f"step, {k.split()[0]} rows, {k.split()[1]}",
                  *[f"{s['step'][k]['median_s'] * 1e3:.2f} ({s['step'][k]['n']})" if k in s["step"] else "-"
                    for s in summary.values()])
    for c in ("alone", "shared"):
        t.add_row(f"prefill per token, {c}", *[f"{s['prefill_per_token'][c]['median_s'] * 1e3:.4f} "
                                               f"({s['prefill_per_token'][c]['n']})" if c in s["prefill_per_token"]
                                               else "-" for s in summary.values()])
    t.add_row("set move", *[f"{s['move']['median_s'] * 1e3:.2f} ({s['move']['n']})" if s["move"] else "-"
                            for s in summary.values()])
    Console(width=160).print(t)
    write_json(args.out, {"from": str(args.logs), "configs": summary, "date": time.strftime("%Y-%m-%d")})
    print(f"wrote {args.out}")
    if args.annotate is not None:
        if not args.annotate.exists():
            raise SystemExit(f"{args.annotate} not found: give the bench_fleet.py results of the --step-logs run")
        print(f"{annotate(args.annotate)} loads of {args.annotate} got their engine costs (step_costs)")


if __name__ == "__main__":
    main()
