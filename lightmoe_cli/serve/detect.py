"""Name a request's task from its prompt, before it is scheduled.

Two detectors, both answering `detect(prompt_ids, text) -> (task | None, score)`:
- `RoutingDetector`: the gate mass of the prompt's first `probe_tokens` tokens at the FIRST MoE layer, matched
  (smallest KL divergence) against each task's profiled gate mass (the bundle's task signatures). That layer's
  input depends only on the embeddings and the first attention block, never on which experts are resident, so
  the probe is exact under any resident set; it costs one partial forward (it stops after the first router).
- `TextDetector` (serve/classifier.py): a scikit-learn text classifier trained at build-bundle on the
  calibration text; costs no forward at all.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SMOOTHING = 1e-4  # share of uniform mass mixed into a signature, so a task never scores an infinite KL


def gate_mass(index: np.ndarray, weights: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, K) picks and router weights -> (E,) normalised gate mass (picks past E, zero-compute experts, ignored)."""
    idx, w = index.reshape(-1), weights.reshape(-1).astype(np.float64)
    keep = idx < num_experts
    mass = np.bincount(idx[keep], weights=w[keep], minlength=num_experts)
    total = mass.sum()
    return mass / total if total > 0 else mass


def match_signature(mass: np.ndarray, signatures: dict[str, np.ndarray]) -> tuple[str | None, float]:
    """The task whose signature is closest to `mass` (KL(mass || signature)); (None, inf) without mass."""
    if not signatures or mass.sum() <= 0:
        return None, float("inf")
    p = mass / mass.sum()
    best, best_kl = None, float("inf")
    for task, sig in signatures.items():
        q = np.asarray(sig, dtype=np.float64)
        q = (1 - SMOOTHING) * q / max(q.sum(), 1e-12) + SMOOTHING / len(q)
        nz = p > 0
        kl = float(np.sum(p[nz] * np.log(p[nz] / q[nz])))
        if kl < best_kl:
            best, best_kl = task, kl
    return best, best_kl


class RoutingDetector:
    """Matches the first MoE layer's routing of a prompt to the bundle's task signatures.

    `probe(ids) -> ((T, K) index, (T, K) weights)` runs the model up to the first MoE layer's router; the engine
    supplies it (it owns the model)."""

    name = "routing"

    def __init__(self, signatures: dict[str, dict[int, list[float]]], layer_index: int,
                 probe: Callable[[list[int]], tuple[np.ndarray, np.ndarray]], probe_tokens: int = 64):
        self.layer_index, self.probe, self.probe_tokens = layer_index, probe, probe_tokens
        self.signatures = {t: np.asarray(s[layer_index], dtype=np.float64) for t, s in signatures.items()
                           if layer_index in s}

    @property
    def tasks(self) -> list[str]:
        return sorted(self.signatures)

    def detect(self, prompt_ids: list[int], text: str) -> tuple[str | None, float]:
        if not prompt_ids or not self.signatures:
            return None, float("inf")
        index, weights = self.probe(prompt_ids[: self.probe_tokens])
        num_experts = len(next(iter(self.signatures.values())))
        return match_signature(gate_mass(index, weights, num_experts), self.signatures)
