"""Which experts are replaced and what each one is built on (pure: arrays in, lists out).

Compression is the share of expert parameters removed. A replaced expert still costs its low-rank term
(`lowrank_share` of a full expert), so keeping a share f of the experts removes 1 - f - (1 - f) * s of the
parameters: f = (1 - c - s) / (1 - s). The kept experts are chosen by one global ranking (the same greedy
allocation as prune), which gives each layer its own count; every layer keeps at least its top-k.
"""

from __future__ import annotations

import math

import numpy as np

from lightmoe_cli.errors import LightMoEError


def lowrank_bytes(hidden: int, intermediate: int, rank: int, element_size: int) -> int:
    """Bytes of one expert's factors: gate_up (2I x r + r x H) and down (H x r + r x I)."""
    return rank * (2 * intermediate + hidden + hidden + intermediate) * element_size


def kept_fraction(compression: float, lowrank_share: float) -> float:
    """Share of the experts kept whole for `compression` when a replaced one costs `lowrank_share` of an expert."""
    return (1.0 - compression - lowrank_share) / (1.0 - lowrank_share)


def max_compression(lowrank_share: float, top_k: int, num_experts: int) -> float:
    """The largest compression that still keeps top-k experts whole in every layer."""
    return (1.0 - lowrank_share) * (1.0 - top_k / num_experts)


def kept_slots(compression: float, lowrank_share: float, top_k: int, num_experts: int, num_layers: int) -> int:
    """Experts kept whole over all layers; a compression that would leave fewer than top-k in a layer is refused
    with the range that works."""
    if lowrank_share >= 1.0:
        raise LightMoEError(f"a rank-{lowrank_share:.2f} low-rank term is as large as the expert: lower --rank")
    top = max_compression(lowrank_share, top_k, num_experts)
    kept = math.floor(kept_fraction(compression, lowrank_share) * num_experts * num_layers)
    if not 0 < compression or kept < top_k * num_layers:
        raise LightMoEError(f"--compression {compression} leaves fewer than top-k={top_k} of {num_experts} experts "
                            f"whole in a layer at this rank: use a value in (0, {math.floor(top * 100) / 100:.2f}]")
    return kept


def base_experts(similarity: np.ndarray, kept: list[int]) -> dict[int, int]:
    """Replaced expert -> the kept expert most similar to it (its shared base; ties: the lower id)."""
    kept_arr = np.asarray(sorted(kept))
    out = {}
    for e in range(similarity.shape[0]):
        if e in set(kept):
            continue
        row = similarity[e, kept_arr]
        out[e] = int(kept_arr[int(np.argmax(row))])
    return out


def keep_value(mass: np.ndarray, similarity: np.ndarray) -> np.ndarray:
    """(E,) how much keeping each expert whole is worth when the others can be rebuilt from it: its share of the
    gate mass times how unlike it is to its nearest neighbour (1 - cosine, clipped to [0, 1]). An expert a kept
    one can stand in for (a near-duplicate) is cheap to replace; ties fall back on mass alone."""
    share = mass / max(float(mass.sum()), 1e-12)
    sim = np.array(similarity, dtype=np.float64)
    np.fill_diagonal(sim, -np.inf)
    nearest = np.clip(sim.max(axis=1), 0.0, 1.0)
    return share * (1.0 - nearest) + 1e-9 * share
