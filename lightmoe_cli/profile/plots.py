"""PNG plots of a profile: expert frequency by task (one panel per layer) and a similarity heatmap."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightmoe_cli.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png"))


def frequency_heatmap(freq: dict[int, np.ndarray], tasks: list[str], path: Path, title: str) -> None:
    """freq[layer] is (n_tasks, E) selection share per task; one panel per layer."""
    plt = _plt()
    layers = sorted(freq)
    cols = 1 if len(layers) <= 4 else 2
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(9 * cols, 0.3 * len(tasks) * rows + 1.2 * rows + 0.6),
                             squeeze=False, constrained_layout=True)
    for ax, li in zip(axes.flat, layers, strict=False):
        im = ax.imshow(freq[li], aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_title(f"layer {li}")
        ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
        ax.set_xlabel("expert")
        fig.colorbar(im, ax=ax, fraction=0.025, label="share of picks")
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.suptitle(title)
    _save(fig, path)
    plt.close(fig)


def similarity_heatmaps(sims: dict[str, np.ndarray], layer_index: int, path: Path) -> None:
    """One panel per similarity kind for one layer."""
    plt = _plt()
    kinds = list(sims)
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.6 * len(kinds), 4.6), squeeze=False, constrained_layout=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        m = sims[kind].copy()
        np.fill_diagonal(m, np.nan)
        im = ax.imshow(m, cmap="magma", interpolation="nearest")
        ax.set_title(f"{kind} similarity, layer {layer_index}")
        ax.set_xlabel("expert")
        ax.set_ylabel("expert")
        fig.colorbar(im, ax=ax, fraction=0.046)
    _save(fig, path)
    plt.close(fig)


def similarity_histograms(models: dict[str, dict[int, dict[str, np.ndarray]]], path: Path) -> None:
    """Per-layer histograms of expert-pair similarity (off-diagonal), one row per layer and one column per
    kind, every model overlaid: do two models' experts differ in how alike they are?"""
    plt = _plt()
    names = list(models)
    layers = sorted(next(iter(models.values())))
    kinds = [k for k in ("output", "weight", "coactivation") if all(k in models[n][layers[0]] for n in names)]
    fig, axes = plt.subplots(len(layers), len(kinds), figsize=(4.2 * len(kinds), 2.2 * len(layers)),
                             squeeze=False, constrained_layout=True)
    bins = np.linspace(-0.2, 1.0, 49)
    for r, li in enumerate(layers):
        for c, kind in enumerate(kinds):
            ax = axes[r, c]
            for name in names:
                if li not in models[name]:
                    continue
                m = np.asarray(models[name][li][kind], dtype=np.float64)
                off = np.clip(m[~np.eye(len(m), dtype=bool)], bins[0], bins[-1])
                ax.hist(off, bins=bins, alpha=0.55, density=True, label=name)
            ax.set_title(f"layer {li}: {kind}", fontsize=9)
            ax.tick_params(labelsize=7)
            if r == len(layers) - 1:
                ax.set_xlabel("cosine similarity of an expert pair", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("expert-pair similarity per layer")
    _save(fig, path)
    plt.close(fig)
