"""Terminal rendering of an `EvalReport`: the comparison table and the task-shift table (data in, tables out)."""

from __future__ import annotations

from rich.table import Table


def results_table(rows: list[dict], tasks: list[str]) -> Table:
    t = Table(title="accuracy x memory x speed (acc on each demo task, multiple choice)")
    for col in ("policy", "budget", *[x.removeprefix("demo_")[:9] for x in tasks], "avg", "experts MiB",
                "peak RSS MiB", "decode tok/s", "swaps", "redirect", "reroute/drop", "miss"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["policy"], f"{r['budget_fraction']:.2f}", *[f"{r['scores'][x]:.3f}" for x in tasks],
                  f"[bold]{r['average']:.3f}[/]", f"{r['resident_expert_bytes'] / 2**20:.1f}",
                  f"{r['peak_rss_mib']:.0f}", f"{r['decode_tokens_per_s']:.1f}", str(r["swaps"]),
                  f"{r['redirect_rate']:.1%}", f"{r['reroute_or_drop_rate']:.1%}", f"{r['miss_rate']:.1%}")
    return t


def shift_table(results) -> Table:
    t = Table(title="task-shift stream (accuracy per block; swaps; MiB loaded; seconds)")
    t.add_column("config")
    for i, b in enumerate(results[0].blocks):
        t.add_column(f"{i + 1}: {b.domain}", justify="right")
    t.add_column("overall", justify="right")
    for r in results:
        t.add_row(r.name, *[f"{b.accuracy:.2f} ({b.swaps} sw, {b.bytes_loaded / 2**20:.1f} MiB, {b.seconds:.0f}s)"
                            for b in r.blocks], f"[bold]{r.accuracy:.3f}[/]")
    return t


def render_eval(console, report) -> None:
    console.print(results_table(report.rows, report.tasks))
    if report.shift:
        console.print(shift_table(report.shift))
    console.print(f"results written to {report.out / 'results.json'}"
                  + (f" and {report.plot}" if report.plot else ""))
