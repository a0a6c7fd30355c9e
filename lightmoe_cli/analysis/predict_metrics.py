"""Scores of an expert-activation predictor: how many of the experts a layer will pick does it name?

Per (token, layer) example with the true top-K set T and the predictor's K highest-scored experts P:
recall@K = |P & T| / |T|, precision@K = |P & T| / K (equal when |T| = K), F1 their harmonic mean, and the
flattened binary accuracy MoE-Beyond reports (every expert a 0/1 label), always beside the all-inactive
predictor's (E - K) / E -- with 64 experts and top-6 that trivial baseline already scores 90.6%. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PredictionScores:
    examples: int
    recall_at_k: float
    precision_at_k: float
    f1: float
    binary_accuracy: float
    all_inactive_accuracy: float  # the trivial baseline of binary accuracy


def top_k_sets(scores: np.ndarray, k: int) -> np.ndarray:
    """(N, E) scores -> (N, k) indices of the k highest (ties broken by index)."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def score_predictions(scores: np.ndarray, true_ids: np.ndarray) -> PredictionScores:
    """scores: (N, E) predicted activation scores; true_ids: (N, K) the experts really picked."""
    n, e = scores.shape
    k = true_ids.shape[1]
    pred = top_k_sets(scores, k)
    truth = np.zeros((n, e), dtype=bool)
    np.put_along_axis(truth, true_ids, True, axis=1)
    guess = np.zeros((n, e), dtype=bool)
    np.put_along_axis(guess, pred, True, axis=1)
    hits = (truth & guess).sum(axis=1)
    true_count = truth.sum(axis=1)  # K unless a pick repeats
    recall = float(np.mean(hits / np.maximum(true_count, 1)))
    precision = float(np.mean(hits / k))
    f1 = 2 * recall * precision / (recall + precision) if recall + precision else 0.0
    binary = float((truth == guess).mean())
    inactive = float((~truth).mean())
    return PredictionScores(n, recall, precision, f1, binary, inactive)
