"""Paired differences between two systems scored on the same items, with seeded bootstrap intervals. Pure.

Why paired: two policies answer the same items, so most of the item-to-item variance cancels in their
difference; an interval on the difference is far tighter than two intervals compared by eye. Why stratified:
the report averages per task (each task weighs the same), so a bootstrap replicate resamples items within each
task and averages the tasks, exactly as the reported statistic is computed.

Two statistics, both a macro average over tasks:
- `mean`: per task, the mean of per-item scores (accuracy: 0/1 per item);
- `ratio`: per task, sum(values) / sum(weights) (NLL per token: per-document NLL sums over token counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    """A difference (a - b) and its 95% bootstrap interval."""

    diff: float
    lo: float
    hi: float

    @property
    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def to_json(self) -> dict:
        return {"diff": self.diff, "lo": self.lo, "hi": self.hi}


def macro_statistic(values: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None) -> float:
    """Mean over tasks of the per-task mean (no weights) or ratio of sums (weights)."""
    per_task = []
    for t in sorted(values):
        v = np.asarray(values[t], dtype=np.float64)
        per_task.append(v.mean() if weights is None else v.sum() / np.asarray(weights[t], dtype=np.float64).sum())
    return float(np.mean(per_task))


def paired_bootstrap(a: dict[str, np.ndarray], b: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None,
                     replicates: int = 2000, seed: int = 0, level: float = 0.95) -> Interval:
    """Difference statistic(a) - statistic(b) over the same items, with a stratified percentile bootstrap.

    a[task], b[task]: (n_task,) per-item values in the same item order; weights[task] (n_task,) makes the
    statistic a ratio of sums (both systems share the weights, e.g. tokens per document)."""
    if set(a) != set(b):
        raise ValueError(f"tasks differ: {sorted(set(a) ^ set(b))}")
    rng = np.random.default_rng(seed)
    boot = np.zeros(replicates)
    for t in sorted(a):
        x, y = np.asarray(a[t], dtype=np.float64), np.asarray(b[t], dtype=np.float64)
        if x.shape != y.shape or x.ndim != 1 or x.size == 0:
            raise ValueError(f"task {t}: paired arrays must have the same non-empty length ({x.shape} vs {y.shape})")
        idx = rng.integers(0, x.size, size=(replicates, x.size))  # (B, n) items drawn with replacement
        d = x - y
        if weights is None:
            boot += d[idx].mean(axis=1)
        else:
            w = np.asarray(weights[t], dtype=np.float64)
            boot += d[idx].sum(axis=1) / w[idx].sum(axis=1)
    boot /= len(a)
    point = macro_statistic(a, weights) - macro_statistic(b, weights)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(boot, [tail, 100 - tail])
    return Interval(point, float(lo), float(hi))


def gap_closed(policy: float, prune: float, full: float) -> float | None:
    """Share of the prune -> full gap a policy closes: (prune - policy) / (prune - full) for a lower-is-better
    metric (NLL), the same formula for accuracy with the signs flipping together. None when there is no gap."""
    gap = prune - full
    return None if abs(gap) < 1e-12 else (prune - policy) / gap
