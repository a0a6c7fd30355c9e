"""`lightmoe tune` against the exhaustive grid it replaces (issue 23): wall time, and the pick's held-out NLL.

For each memory M: `lightmoe tune --memory M` (successive halving on its default documents) and the grid,
`lightmoe tune --memory M --exhaustive --docs-per-task 25` (every candidate scored on every one of 25 documents
per task, each timed). Each command is its own process, timed from its start to its exit, as a user waits for it.
The runs go interleaved (tune M1, grid M1, tune M2, ...) and repeated; the ratio of a repeat is tune's wall over
the grid's of the same repeat, so both met the same machine. The pick is judged on the grid's documents: tune's
pick's NLL increase there against the grid's best (goal: within 0.02 nats/token; wall ratio goal <= 1/5).

The machine is judged quiet at the start and over the whole run (benchmarks/harness.py): a run with other work
competing for the cores is refused (its figures kept beside, as .refused.json). The memory-bandwidth probe is off
by default (`--probe-mib 0`): this is process wall time, mostly compute, and a bandwidth drift says nothing about
it (a 27-minute run was once refused for an 18% drift). Prints a table, writes
benchmarks/results/tune-vs-grid-demo.json.

    python benchmarks/bench_tune.py                      # 25/50/75%, 5 repeats (~27 min on 2 cores)
    python benchmarks/bench_tune.py --memories 50 --repeats 1
    just bench-tune
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Harness, HarnessOptions, summarise, write_json  # noqa: E402

LIGHTMOE = [sys.executable, "-m", "lightmoe_cli.cli"]
GOAL_RATIO = 0.2
GOAL_NATS = 0.02


def command(kind: str, memory: str, out: Path, threads: int, grid_docs: int) -> list[str]:
    cmd = [*LIGHTMOE, "tune", "--memory", f"{memory}%", "--threads", str(threads), "--out", str(out), "--force"]
    return cmd + (["--exhaustive", "--docs-per-task", str(grid_docs)] if kind == "grid" else [])


def run_one(kind: str, memory: str, work: Path, threads: int, grid_docs: int) -> dict:
    """One command in its own process: wall seconds from start to exit, and its tune.json."""
    out = work / f"{kind}{memory}"
    t0 = time.perf_counter()
    res = subprocess.run(command(kind, memory, out, threads, grid_docs), capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if res.returncode:
        raise SystemExit(f"{kind} {memory}% failed:\n{(res.stdout + res.stderr)[-2000:]}")
    data = json.loads(out.with_name(out.name + ".tune.json").read_text())
    return {"wall_s": wall, "tune_json": data}


def nll_at(data: dict, name: str) -> float | None:
    """A candidate's NLL increase on the most documents it was scored on (the grid: all of them)."""
    for c in data["candidates"]:
        if c["name"] == name and c["nll_increase"]:
            return c["nll_increase"][max(c["nll_increase"], key=int)]
    return None


def nested_check(grid: dict) -> dict:
    """Per serving (policy, parameters, activation rule): did the grid's largest budget score a lower NLL than
    every smaller one? The rule tune prunes by without a target (tune/request.py:_nested_pruned)."""
    by_serving: dict[str, list[tuple[float, float]]] = {}
    for c in grid["candidates"]:
        key = json.dumps([c["policy"], c["params"], c["activation"], c["active"]])
        if c["nll_increase"]:
            by_serving.setdefault(key, []).append((c["budget"], nll_at(grid, c["name"])))
    pairs = held = 0
    for points in by_serving.values():
        top_budget, top_nll = max(points)
        for b, nll in points:
            if b < top_budget:
                pairs, held = pairs + 1, held + (top_nll <= nll)
    return {"pairs": pairs, "larger_budget_lower_nll": held}


def compare(tune: dict, grid: dict) -> dict:
    """One memory, one repeat: wall ratio, and tune's pick judged on the grid's documents."""
    best = min((c for c in grid["tune_json"]["candidates"] if c["nll_increase"]),
               key=lambda c: nll_at(grid["tune_json"], c["name"]))
    pick = tune["tune_json"]["pick"]
    pick_nll, best_nll = nll_at(grid["tune_json"], pick), nll_at(grid["tune_json"], best["name"])
    return {"tune_wall_s": tune["wall_s"], "grid_wall_s": grid["wall_s"], "ratio": tune["wall_s"] / grid["wall_s"],
            "tune_pick": pick, "tune_pick_nll_on_grid_docs": pick_nll, "grid_best": best["name"],
            "grid_best_nll": best_nll, "pick_gap_nats": pick_nll - best_nll,
            "tune_seconds": tune["tune_json"]["seconds"], "grid_seconds": grid["tune_json"]["seconds"],
            "tune_rungs": tune["tune_json"]["rungs"], "grid_documents": grid["tune_json"]["documents"],
            "tune_pruned": tune["tune_json"]["pruned_before_measuring"],
            # every grid candidate's NLL increase on all the grid's documents: what a nested budget step scored
            "grid_nll": {c["name"]: nll_at(grid["tune_json"], c["name"]) for c in grid["tune_json"]["candidates"]},
            "nested_check": nested_check(grid["tune_json"])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--memories", default="25,50,75", help="memory shares in percent (default 25,50,75)")
    ap.add_argument("--grid-docs", type=int, default=25, help="documents per task the grid scores (default 25)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="tune-vs-grid-demo.json", help="file name under the results folder")
    HarnessOptions.add_arguments(ap, repeats=5)
    ap.set_defaults(probe_mib=0)
    args = ap.parse_args()
    options = HarnessOptions.from_args(args)
    memories = [m.strip() for m in args.memories.split(",") if m.strip()]
    harness = Harness("bench_tune", args.threads, options)
    labels = [f"{kind} {m}" for m in memories for kind in ("tune", "grid")]
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        runs = harness.measure(labels, lambda label: run_one(*label.split(), Path(tmp), args.threads,
                                                               args.grid_docs))
    verdict = harness.verdict([], [])
    by_memory: dict[str, dict] = {}
    for m in memories:
        reps = [compare(t, g) for t, g in zip(runs[f"tune {m}"], runs[f"grid {m}"], strict=True)]
        ratios = summarise([r["ratio"] for r in reps])
        by_memory[m] = {"repeats": reps, "ratio": ratios.to_json(),
                        "tune_wall_s": summarise([r["tune_wall_s"] for r in reps]).to_json(),
                        "grid_wall_s": summarise([r["grid_wall_s"] for r in reps]).to_json(),
                        "max_pick_gap_nats": max(r["pick_gap_nats"] for r in reps),
                        "ratio_goal_met_every_repeat": all(r["ratio"] <= GOAL_RATIO for r in reps),
                        "pick_goal_met_every_repeat": all(r["pick_gap_nats"] <= GOAL_NATS for r in reps)}
    payload = {"commands": {"tune": " ".join(command("tune", "M", Path("OUT"), args.threads, args.grid_docs)[2:]),
                            "grid": " ".join(command("grid", "M", Path("OUT"), args.threads, args.grid_docs)[2:])},
               "goal": {"wall_ratio_at_most": GOAL_RATIO, "pick_within_nats": GOAL_NATS},
               "noisy": verdict.noisy, "machine": harness.machine_json(verdict), "memories": by_memory,
               "date": time.strftime("%Y-%m-%d")}
    out = options.results_dir / args.out
    if verdict.noisy and not options.allow_noisy:  # kept for inspection, never as the result file
        write_json(out.with_name(out.stem + ".refused.json"), payload | {"refused": True})
    harness.refuse_if_noisy(verdict)
    render(by_memory, options.repeats, verdict.noisy)
    print(f"wrote {write_json(out, payload)}")


def _cell(s: dict) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def render(by_memory: dict[str, dict], repeats: int, noisy: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=("NOISY: " if noisy else "") + f"tune vs the exhaustive grid, median [min-max] of {repeats} "
              "interleaved repeats")
    for col in ("memory", "tune's pick", "grid's best", "pick - best (nats)", "tune wall s", "grid wall s",
                "ratio", f"ratio <= {GOAL_RATIO} every repeat"):
        t.add_column(col)
    for m, r in by_memory.items():
        picks = sorted({x["tune_pick"] for x in r["repeats"]})
        bests = sorted({x["grid_best"] for x in r["repeats"]})
        t.add_row(f"{m}%", ", ".join(picks), ", ".join(bests), f"{r['max_pick_gap_nats']:+.4f}",
                  _cell(r["tune_wall_s"]), _cell(r["grid_wall_s"]), _cell(r["ratio"]),
                  "yes" if r["ratio_goal_met_every_repeat"] else "no")
    Console(width=200).print(t)


if __name__ == "__main__":
    main()
