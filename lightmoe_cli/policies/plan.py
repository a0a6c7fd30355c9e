"""From routing statistics and a slot budget to a bundle plan, for every policy. Pure: arrays in, plan out.

Policies (registered by name; the CLI lists them):
- lightmoe: frequency-aware resident set (global slot allocation on gate mass), redirect table (missing expert
  -> most similar resident when one is similar enough; otherwise the token is re-routed among the residents as a
  pruned router would, or the pick dropped), per-task resident sets and the runtime manager's parameters, so
  experts are swapped when the task changes.
- prune: the same resident set; the router only sees resident experts (renormalised over them); no swaps.
- lru: the same number of slots per layer, pre-filled with the same resident set; misses are loaded on demand
  and evict the least recently used expert (dynamic swapping, as mixtral-offloading / MoE-Infinity).
- full: every expert resident (the upper bound).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from lightmoe_cli.policies.manager import ManagerParams
from lightmoe_cli.policies.redirect import redirect_table
from lightmoe_cli.policies.resident import allocate_slots, covered_share, select_residents


@dataclass
class LayerPlan:
    layer_index: int
    num_experts: int
    top_k: int
    slots: int
    resident: list[int]
    redirect: list[int]  # (E,) expert -> resident expert, or -1 (drop); identity for residents
    covered_mass: float  # share of calibration gate mass on the resident set


@dataclass
class BundlePlan:
    policy: str
    layers: list[LayerPlan]
    task_resident: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    manager: dict | None = None
    eviction: str | None = None
    min_similarity: float | None = None
    missing: str | None = None  # lightmoe: what a missing, dissimilar pick does: "reroute" or "drop"

    def to_json(self) -> dict:
        d = asdict(self)
        d["task_resident"] = {t: {str(k): v for k, v in m.items()} for t, m in self.task_resident.items()}
        return d


@dataclass(frozen=True)
class PlanInputs:
    """What every policy may use. mass[layer] (E,): calibration gate mass over all tasks; task_mass[task][layer]
    (E,): the same per task; similarity[layer] (E, E): the chosen similarity kind."""

    mass: dict[int, np.ndarray]
    task_mass: dict[str, dict[int, np.ndarray]]
    similarity: dict[int, np.ndarray]
    top_k: dict[int, int]
    total_slots: int


def _layers(inputs: PlanInputs, resident: dict[int, list[int]], min_similarity: float | None) -> list[LayerPlan]:
    out = []
    for li in sorted(inputs.mass):
        e = len(inputs.mass[li])
        if min_similarity is None:  # no redirect: missing experts are unreachable (prune) or loaded (lru)
            table = np.where(np.isin(np.arange(e), resident[li]), np.arange(e), -1)
        else:
            table = redirect_table(inputs.similarity[li], resident[li], min_similarity)
        out.append(LayerPlan(li, e, inputs.top_k[li], len(resident[li]), resident[li], table.tolist(),
                             covered_share(inputs.mass[li], resident[li])))
    return out


def plan_lightmoe(inputs: PlanInputs, min_similarity: float = 0.5, manager: ManagerParams | None = None,
                  missing: str = "reroute") -> BundlePlan:
    if missing not in ("reroute", "drop"):
        raise ValueError(f"missing must be reroute or drop, not {missing!r}")
    # re-routing picks top-k among residents, so it needs top-k of them per layer, like prune
    floor = max(inputs.top_k.values()) if missing == "reroute" else 1
    slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=floor)
    resident = select_residents(inputs.mass, slots)
    per_task = {t: select_residents(m, slots) for t, m in inputs.task_mass.items()}
    return BundlePlan("lightmoe", _layers(inputs, resident, min_similarity), per_task,
                      asdict(manager or ManagerParams()), min_similarity=min_similarity, missing=missing)


def plan_prune(inputs: PlanInputs) -> BundlePlan:
    # a pruned router still picks top-k, so every layer keeps at least top-k experts
    slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=max(inputs.top_k.values()))
    return BundlePlan("prune", _layers(inputs, select_residents(inputs.mass, slots), None))


def plan_lru(inputs: PlanInputs, eviction: str = "lru") -> BundlePlan:
    # one token's k picks must fit at once, so every layer has at least top-k slots
    slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=max(inputs.top_k.values()))
    return BundlePlan("lru", _layers(inputs, select_residents(inputs.mass, slots), None), eviction=eviction)


def plan_full(inputs: PlanInputs) -> BundlePlan:
    resident = {li: list(range(len(m))) for li, m in inputs.mass.items()}
    return BundlePlan("full", _layers(inputs, resident, None))


POLICIES: dict[str, Callable[..., BundlePlan]] = {
    "lightmoe": plan_lightmoe,
    "prune": plan_prune,
    "lru": plan_lru,
    "full": plan_full,
}
MIN_SLOTS_PER_LAYER = {"lightmoe": lambda k: k, "prune": lambda k: k, "lru": lambda k: k, "full": lambda k: 1}
