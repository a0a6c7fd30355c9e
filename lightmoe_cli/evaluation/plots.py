"""Plots of an evaluation: the memory trade-off (pareto.png) and the task-shift streams (task_shift.png)."""

from __future__ import annotations

from pathlib import Path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    from lightmoe_cli.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))


def pareto_plot(rows: list[dict], path: Path, title: str) -> None:
    """Two panels against resident expert memory, one line per policy: quality (NLL per token above the full
    model's, or accuracy below it, with paired 95% interval bars) and cost (expert bytes moved for the same
    requests, log scale): a policy that keeps quality by loading experts on demand shows its price on the right
    (decode speed is in the tables; on a small model the loads hide in the page cache)."""
    plt = _plt()
    metric = "nll" if any(r.get("vs_full", {}).get("nll") for r in rows) else "acc"
    scale = 1.0 if metric == "nll" else 100.0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for policy in sorted({r["policy"] for r in rows} - {"full"}):
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["resident_expert_bytes"])
        mib = [r["resident_expert_bytes"] / 2**20 for r in mine]
        ivs = [r.get("vs_full", {}).get(metric) for r in mine]
        if all(ivs):
            y = [iv["diff"] * scale for iv in ivs]
            err = [[(iv["diff"] - iv["lo"]) * scale for iv in ivs], [(iv["hi"] - iv["diff"]) * scale for iv in ivs]]
            ax.errorbar(mib, y, yerr=err, marker="o", capsize=3, label=policy)
        ax2.plot(mib, [max(r["bytes_loaded"] / 2**20, 0.1) for r in mine], marker="o", label=policy)
    ax.axhline(0, color="black", linestyle="--", label="full model")
    ax.set_xlabel("resident expert memory (MiB)")
    ax.set_ylabel("NLL per token above the full model (nats)" if metric == "nll"
                  else "accuracy vs the full model (points)")
    ax.set_title(f"{title}: quality (paired 95% intervals)")
    ax2.set_xlabel("resident expert memory (MiB)")
    ax2.set_ylabel("expert MiB moved during the evaluation (log; none drawn at 0.1)")
    ax2.set_yscale("log")
    ax2.set_title("cost: expert bytes moved for the same requests")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)



def task_shift_plot(rows: list[dict], path: Path) -> None:
    """One panel per block length: NLL per token by requests since the last shift, one line per config."""
    plt = _plt()
    blocks = sorted({r["block"] for r in rows})
    fig, axes = plt.subplots(1, len(blocks), figsize=(4.2 * len(blocks), 4), constrained_layout=True, squeeze=False)
    for ax, block in zip(axes[0], blocks, strict=True):
        for r in (r for r in rows if r["block"] == block):
            style = "--" if r["config"] in ("full", "prune", "oracle") else "-"
            ax.plot(range(len(r["curve"])), r["curve"], style, marker="o", markersize=3,
                    label=f"{r['config']} ({r['nll_per_token']:.3f})")
        ax.set_title(f"blocks of {block} request(s)")
        ax.set_xlabel("requests since the domain changed")
        ax.set_ylabel("NLL per token (nats)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def hit_rate_plot(rows: list[dict], path: Path, title: str) -> None:
    """Hit rate against cache capacity (share of each layer's experts), one line per cache policy."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for policy in dict.fromkeys(r["policy"] for r in rows):
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["fraction"])
        style = "--" if policy == "belady" else "-"
        ax.plot([100 * r["fraction"] for r in mine], [100 * r["hit_rate"] for r in mine], style, marker="o",
                label=policy + (" (offline optimum)" if policy == "belady" else ""))
        ax2.plot([100 * r["fraction"] for r in mine], [max(r["loads_per_token"], 1e-3) for r in mine], style,
                 marker="o", label=policy)
    ax.set_xlabel("cache capacity (% of each layer's experts)")
    ax.set_ylabel("hit rate (% of router picks already in memory)")
    ax.set_title(f"{title}: hit rate")
    ax2.set_xlabel("cache capacity (% of each layer's experts)")
    ax2.set_ylabel("experts loaded per token (log; 0 drawn at 0.001)")
    ax2.set_yscale("log")
    ax2.set_title("cost: experts moved")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    _save(fig, path)
    plt.close(fig)
