"""Terminal rendering of an `EvalReport`: tables that stay readable at 100 columns (data in, tables out).

- summary: one row per policy x budget: MC accuracy and NLL per token, each difference to `prune` with its
  paired 95% interval, the share of prune's gap to `full` closed, memory, speed, swaps;
- versus full: the same differences against the full model;
- per task: accuracy per MC task, NLL per token per held-out text task;
- the task-shift streams (NLL per token per block length).
"""

from __future__ import annotations

from pathlib import Path

from rich import box
from rich.table import Table
from rich.text import Text


def _iv(d: dict | None, scale: float = 1.0, digits: int = 1) -> Text:
    """'+1.2 ±0.9*': the difference and half the width of its 95% interval (the bounds are in results.json);
    * when the interval excludes 0."""
    if not d:
        return Text("-")
    mark = "*" if d["lo"] > 0 or d["hi"] < 0 else " "
    half = (d["hi"] - d["lo"]) / 2 * scale
    return Text(f"{d['diff'] * scale:+.{digits}f} ±{half:.{digits}f}{mark}")


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _table(title: str, caption: str | None = None) -> Table:
    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=(0, 1), title_justify="left",
                 caption_justify="left")


def summary_table(rows: list[dict]) -> Table:
    t = _table("policies x budgets: differences to prune, paired 95% intervals",
               "mem = resident expert budget; Δ ± half-width of the 95% interval;\nΔacc in points, NLL in "
               "nats/token; * = interval excludes 0; gap = share of prune's gap to full closed")
    for col in ("policy", "mem", "acc", "Δacc", "NLL", "ΔNLL", "gap", "MiB", "tok/s"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for r in rows:
        gap = r.get("gap_closed", {})
        g = gap.get("nll", gap.get("acc"))
        t.add_row(r["policy"], _mem(r), _num(r.get("average"), ".3f"),
                  _iv(r.get("vs_prune", {}).get("acc"), 100), _num(r.get("nll_per_token"), ".3f"),
                  _iv(r.get("vs_prune", {}).get("nll"), 1, 3), "-" if g is None else f"{g:.0%}",
                  f"{r['resident_expert_bytes'] / 2**20:.1f}", f"{r['decode_tokens_per_s']:.0f}")
    return t


def versus_full_table(rows: list[dict]) -> Table:
    t = _table("differences to the full model, paired 95% intervals",
               "MiB in: expert bytes loaded at run time\nre-route (or drop), miss: share of router picks")
    for col in ("policy", "mem", "Δacc", "ΔNLL", "swaps", "MiB in", "re-route", "miss"):
        t.add_column(col, justify="left" if col == "policy" else "right", no_wrap=True)
    for r in rows:
        if r["policy"] == "full":
            continue
        vs = r.get("vs_full", {})
        t.add_row(r["policy"], _mem(r), _iv(vs.get("acc"), 100), _iv(vs.get("nll"), 1, 3),
                  str(r["swaps"]), f"{r['bytes_loaded'] / 2**20:,.0f}", f"{r['reroute_or_drop_rate']:.0%}",
                  f"{r['miss_rate']:.0%}")
    return t


def per_task_table(rows: list[dict], tasks: list[str], key: str, title: str, fmt: str) -> Table | None:
    tasks = [x for x in tasks if any(x in r.get(key, {}) for r in rows)]
    if not tasks:
        return None
    t = _table(title)
    t.add_column("policy", no_wrap=True)
    t.add_column("budget", justify="right")
    for x in tasks:
        t.add_column(x.removeprefix("demo_").removesuffix("_ppl")[:8], justify="right")
    for r in rows:
        t.add_row(r["policy"], _mem(r), *[_num(r.get(key, {}).get(x), fmt) for x in tasks])
    return t


def stream_table(rows: list[dict]) -> Table:
    t = _table("task-shift streams: held-out text, the domain changes every `block` requests",
               "ΔNLL vs prune ± half-width of the paired 95% interval (requests), * = excludes 0;\n"
               "gap = share of prune's gap to full closed; oracle = share of the oracle's gain reached")
    for col in ("block", "config", "NLL", "ΔNLL vs prune", "gap", "oracle", "swaps", "MiB moved", "s"):
        t.add_column(col, justify="left" if col == "config" else "right", no_wrap=True)
    for r in rows:
        g, o = r.get("gap_closed"), r.get("oracle_share")
        t.add_row(str(r["block"]), r["config"], f"{r['nll_per_token']:.3f}", _iv(r.get("vs_prune"), 1, 3),
                  "-" if g is None else f"{g:.0%}", "-" if o is None else f"{o:.0%}", str(r["swaps"]),
                  f"{r['bytes_loaded'] / 2**20:.1f}", f"{r['seconds']:.0f}")
    return t


def eval_tables(report) -> list[Table]:
    tables = [summary_table(report.rows), versus_full_table(report.rows),
              per_task_table(report.rows, report.tasks, "scores", "accuracy per multiple-choice task", ".3f"),
              per_task_table(report.rows, report.tasks, "nll", "NLL per token per held-out text task", ".3f")]
    if report.shift:
        tables.append(stream_table(report.shift))
    return [t for t in tables if t is not None]


def render_eval(console, report) -> None:
    for table in eval_tables(report):
        console.print(table)
    if report.precision_note:
        console.print(report.precision_note)
    plots = [str(p) for p in (report.plot, report.shift_plot) if p]
    console.print(f"results written to {report.out / 'results.json'}" + (f"; plots: {', '.join(plots)}" if plots
                                                                          else ""))


def _md_iv(d: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not d:
        return "-"
    star = " *" if d["lo"] > 0 or d["hi"] < 0 else ""
    return (f"{d['diff'] * scale:+.{digits}f} [{d['lo'] * scale:+.{digits}f}, {d['hi'] * scale:+.{digits}f}]"
            f"{star}")


def markdown_report(payload: dict) -> str:
    """The README's result tables from a results.json payload (so the README is rebuilt, not retyped)."""
    rows = payload["rows"]
    out = [f"`lightmoe eval` on {Path(payload['model']).name if payload.get('model') else 'bundles'} "
           f"({payload['date']}, {payload['machine']}, limit {payload['limit']} items / documents per task):", "",
           "| policy | budget | MC acc | Δacc vs prune (points) | NLL/token | ΔNLL vs prune | ΔNLL vs full "
           "| gap closed | experts MiB | decode tok/s | swaps | MiB moved |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        g = r.get("gap_closed", {}).get("nll")
        out.append(f"| {r['policy']} | {_mem(r)} | {_num(r.get('average'), '.3f')} | "
                   f"{_md_iv(r.get('vs_prune', {}).get('acc'), 100)} | {_num(r.get('nll_per_token'), '.3f')} | "
                   f"{_md_iv(r.get('vs_prune', {}).get('nll'), 1, 3)} | {_md_iv(r.get('vs_full', {}).get('nll'), 1, 3)}"
                   f" | {'-' if g is None else f'{g:.0%}'} | {r['resident_expert_bytes'] / 2**20:.1f} | "
                   f"{r['decode_tokens_per_s']:.1f} | {r['swaps']} | {r['bytes_loaded'] / 2**20:,.1f} |")
    out += ["", "[lo, hi] = paired 95% bootstrap interval, * = excludes 0. " + payload.get("precision_note", ""), ""]
    shift = payload.get("task_shift", {}).get("rows", [])
    if shift:
        out += [f"Task-shift streams at budget {payload['task_shift']['budget']:.2f} "
                f"({payload['task_shift']['stream_requests']} held-out documents per stream):", "",
                "| block | config | NLL/token | ΔNLL vs prune | gap closed | oracle share | swaps | MiB moved |",
                "|---|---|---|---|---|---|---|---|"]
        for r in shift:
            g, o = r.get("gap_closed"), r.get("oracle_share")
            out.append(f"| {r['block']} | {r['config']} | {r['nll_per_token']:.3f} | {_md_iv(r.get('vs_prune'), 1, 3)}"
                       f" | {'-' if g is None else f'{g:.0%}'} | {'-' if o is None else f'{o:.0%}'} | {r['swaps']} | "
                       f"{r['bytes_loaded'] / 2**20:.1f} |")
    return "\n".join(out) + "\n"


def _mem(r: dict) -> str:
    """A row's expert memory: what its bundle holds (full 1.00), else the budget it was built for."""
    return f"{r.get('resident_fraction', r['budget_fraction']):.2f}"
