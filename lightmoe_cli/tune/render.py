"""What `lightmoe tune` shows: the candidates and the Pareto frontier as rich tables, the frontier as a PNG."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from lightmoe_cli.tune.request import TuneReport

MiB = 2**20


def candidates_table(report: TuneReport) -> Table:
    """Every measured candidate, best NLL first: its evidence (documents), figures and fate."""
    t = Table(title=f"tune: {len(report.figures)} candidates at --memory {report.memory} "
                    f"({report.fraction:.0%} of the experts resident at most)")
    for col in ("candidate", "memory MiB", "docs", "NLL vs full", "decode tok/s", "status"):
        t.add_column(col, justify="left" if col in ("candidate", "status") else "right",
                     no_wrap=col == "candidate")
    rows = sorted(report.figures, key=lambda f: (-f.evidence, f.nll if f.nll is not None else 1e9))
    for f in rows:
        if not f.nll_increase:
            continue
        status = "PICK" if f is report.pick else _status(f)
        t.add_row(f.candidate.name, f"{f.memory_bytes / MiB:.1f}", str(f.evidence),
                  f"{f.nll:+.4f}" if f.nll is not None else "-",
                  f"{f.decode_tps:.1f}" if f.decode_tps else "-", status)
    return t


def _status(f) -> str:
    """The fate of a candidate in a few words (tune.json keeps the whole reason)."""
    if f.dropped is None:
        return "finalist"
    if f.dropped.startswith("halving"):
        return f"halved at {f.evidence} docs"
    if f.dropped.startswith("not among"):
        return "not a finalist"
    return "not buildable" if f.dropped.startswith("cannot") else f.dropped[:24]


def frontier_table(report: TuneReport) -> Table:
    t = Table(title="Pareto frontier (memory, NLL increase over full, decode speed)")
    for col in ("configuration", "memory MiB", "NLL vs full", "decode tok/s"):
        t.add_column(col, justify="left" if col == "configuration" else "right", no_wrap=col == "configuration")
    for f in sorted(report.frontier, key=lambda f: f.memory_bytes):
        t.add_row(("* " if f is report.pick else "") + f.candidate.name, f"{f.memory_bytes / MiB:.1f}",
                  f"{f.nll:+.4f}", f"{f.decode_tps:.1f}")
    if report.full_tps:
        t.add_row("full (reference)", "-", "+0.0000", f"{report.full_tps:.1f}")
    return t


def frontier_plot(report: TuneReport, path: Path) -> None:
    """NLL increase against memory for every candidate scored on all documents, coloured by decode speed where
    measured; the frontier joined and the pick ringed."""
    from lightmoe_cli.profile.plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    full = [f for f in report.figures if f.evidence == report.documents and f.nll is not None]
    ax.scatter([f.memory_bytes / MiB for f in full], [f.nll for f in full], c="lightgray", label="scored")
    timed = [f for f in full if f.decode_tps]
    if timed:
        sc = ax.scatter([f.memory_bytes / MiB for f in timed], [f.nll for f in timed],
                        c=[f.decode_tps for f in timed], cmap="viridis", label="finalists")
        fig.colorbar(sc, ax=ax, label="decode tokens/s")
    front = sorted(report.frontier, key=lambda f: f.memory_bytes)
    ax.plot([f.memory_bytes / MiB for f in front], [f.nll for f in front], "k--", lw=1, label="frontier")
    ax.scatter([report.pick.memory_bytes / MiB], [report.pick.nll], s=200, facecolors="none", edgecolors="red",
               label=f"pick: {report.pick.candidate.name}")
    ax.set_xlabel("memory (MiB: non-expert + resident experts)")
    ax.set_ylabel("held-out NLL increase over full (nats/token)")
    ax.set_title(f"lightmoe tune, --memory {report.memory}"
                 + (f", traffic blocks:{report.traffic}" if report.traffic else ""))
    ax.legend(fontsize=8)
    _save(fig, path)


def write_sidecars(report: TuneReport, force: bool = False) -> tuple[Path, Path | None]:
    """tune.json (every candidate, its figures, why the pick) and the frontier PNG, beside the bundle."""
    import json

    from lightmoe_cli.files import write_output
    from lightmoe_cli.tune.request import TUNE_KIND

    out = Path(report.bundle)
    js = out.with_name(out.name + ".tune.json")
    write_output(js, json.dumps(report.to_json(), indent=1), TUNE_KIND, force, flag="--out")
    png = out.with_name(out.name + ".frontier.png")
    frontier_plot(report, png)
    return js, png
