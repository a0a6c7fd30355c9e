"""Pure statistics of expert routing: distributions, divergences, concentration. Arrays in, numbers out.

Why pure: the same functions serve the demo model's card, `lightmoe profile` and the policies, and they are
tested on ten-element arrays. No torch hooks, no files, no printing here.
"""

from __future__ import annotations

import numpy as np


def normalise(counts: np.ndarray) -> np.ndarray:
    """Counts -> probability distribution along the last axis (an all-zero row stays all zero)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)


def entropy_bits(p: np.ndarray) -> float:
    """Shannon entropy in bits of one distribution (0 log 0 = 0)."""
    p = normalise(p)
    nz = p[p > 0]
    return float(-(nz * np.log2(nz)).sum())


def js_divergence_bits(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits between two distributions: 0 = identical, 1 = disjoint supports."""
    p, q = normalise(p), normalise(q)
    m = 0.5 * (p + q)
    return float(entropy_bits(m) - 0.5 * entropy_bits(p) - 0.5 * entropy_bits(q))


def pairwise_js_bits(counts: np.ndarray) -> np.ndarray:
    """(n_tasks, n_experts) counts -> (n_tasks, n_tasks) symmetric JS matrix in bits."""
    n = counts.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = js_divergence_bits(counts[i], counts[j])
    return out


def mean_offdiagonal(matrix: np.ndarray) -> float:
    """Mean of the off-diagonal entries of a square matrix (the average pairwise divergence)."""
    n = matrix.shape[0]
    if n < 2:
        return 0.0
    return float((matrix.sum() - np.trace(matrix)) / (n * (n - 1)))


def top_fraction_experts(counts: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """Indices of the most frequent `fraction` of experts (at least one), most frequent first."""
    k = max(1, int(round(len(counts) * fraction)))
    return np.argsort(-np.asarray(counts), kind="stable")[:k]


def coverage(counts: np.ndarray, experts: np.ndarray) -> float:
    """Share of the activations in `counts` that land on `experts`."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return float(counts[experts].sum() / total) if total > 0 else 0.0


def top_half_coverage(counts: np.ndarray) -> float:
    """Share of a task's activations covered by its own most frequent half of experts (0.5 = uniform)."""
    return coverage(counts, top_fraction_experts(counts, 0.5))


def cross_coverage(counts: np.ndarray) -> np.ndarray:
    """(n_tasks, n_experts) -> (n_tasks, n_tasks): entry [i, j] = share of task j's activations covered by
    task i's top half. The diagonal is `top_half_coverage`; low off-diagonal values mean the halves differ."""
    n = counts.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        top = top_fraction_experts(counts[i], 0.5)
        for j in range(n):
            out[i, j] = coverage(counts[j], top)
    return out
