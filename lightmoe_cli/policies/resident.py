"""Frequency-aware resident sets: spend a global slot budget where it covers the most router gate mass.

Why global, not uniform per layer: layers differ in how concentrated their routing is. A layer whose top few
experts take most of the gate mass needs fewer slots than a layer that spreads it; greedy allocation on each
layer's normalised gate mass gives the next slot to whichever layer gains the most covered mass.
"""

from __future__ import annotations

import heapq

import numpy as np


def rank_experts(mass: np.ndarray) -> np.ndarray:
    """Expert ids by descending mass (ties: lower id first)."""
    return np.argsort(-np.asarray(mass, dtype=np.float64), kind="stable")


def allocate_slots(mass: dict[int, np.ndarray], total_slots: int, min_per_layer: int = 1) -> dict[int, int]:
    """Slots per layer (sum == total_slots) maximising the summed share of each layer's gate mass covered.

    mass: per layer (E,) gate mass (or counts). Every layer gets at least `min_per_layer` and at most E.
    """
    layers = sorted(mass)
    caps = {li: len(mass[li]) for li in layers}
    if total_slots < min_per_layer * len(layers) or total_slots > sum(caps.values()):
        raise ValueError(f"total_slots {total_slots} outside [{min_per_layer * len(layers)}, {sum(caps.values())}]")
    shares = {}
    for li in layers:
        m = np.asarray(mass[li], dtype=np.float64)
        total = m.sum()
        shares[li] = np.sort(m)[::-1] / total if total > 0 else np.full(len(m), 1.0 / len(m))
    slots = {li: min(min_per_layer, caps[li]) for li in layers}
    heap = [(-shares[li][slots[li]], li) for li in layers if slots[li] < caps[li]]
    heapq.heapify(heap)
    for _ in range(total_slots - sum(slots.values())):
        _, li = heapq.heappop(heap)
        slots[li] += 1
        if slots[li] < caps[li]:
            heapq.heappush(heap, (-shares[li][slots[li]], li))
    return slots


def select_residents(mass: dict[int, np.ndarray], slots: dict[int, int]) -> dict[int, list[int]]:
    """Per layer, the `slots[li]` experts with the most mass, as sorted expert ids."""
    return {li: sorted(int(e) for e in rank_experts(mass[li])[: slots[li]]) for li in sorted(mass)}


def covered_share(mass: np.ndarray, resident: list[int]) -> float:
    """Share of a layer's mass that lands on resident experts."""
    m = np.asarray(mass, dtype=np.float64)
    return float(m[resident].sum() / m.sum()) if m.sum() > 0 else 0.0


def mean_covered_share(mass: dict[int, np.ndarray], resident: dict[int, list[int]]) -> float:
    """`covered_share` averaged over the layers of `mass`: how much of a task's gate mass a per-layer set serves."""
    return float(np.mean([covered_share(mass[li], resident[li]) for li in sorted(mass)]))
