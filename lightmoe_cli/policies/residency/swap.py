"""`swap`: dynamic swapping without stalls -- the equal-latency baseline a task-aware runtime must beat.

Same slots and initial residents as prune and lru. A pick of a missing expert is re-routed among the residents at
once (as the pruned router would) and the expert is read on a background thread; when the read is done it
replaces the least recently (or frequently) used resident at the layer's next forward (`--admission demand`: only
while its recent demand beats the weakest resident's).
`--pinned S` keeps a share S of each layer's slots as a pinned core -- the highest-mass experts, never evicted --
and lets only the rest (the dynamic region) admit and evict (`policies/region.py`). `--double-buffer` adds a spare
row per layer that the loader thread fills, so the main thread installs an expert by flipping one table entry
and never copies one; the spare row is charged to the memory budget (one resident fewer per layer).
Its cost is I/O overlapped with compute, not stall time; its accuracy is measured against prune (never loads) and
lru (always waits) in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.policies.base import (
    BundlePlan,
    Missing,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    layer_plans,
    param,
)
from lightmoe_cli.policies.region import core_of
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.resident import allocate_slots, select_residents


@dataclass(frozen=True)
class SwapParams(PolicyParams):
    eviction: str = param("lru", "which resident a finished load replaces: lru (least recently used) or lfu "
                          "(least frequently used)", choices=("lru", "lfu"))
    max_pending: int = param(8, "expert reads queued at most (more misses are served by re-routing only)",
                             minimum=1)
    admission: str = param("always", "always: read every missed expert and install it when read; demand: only "
                           "while its recent demand beats the weakest resident's (about 3x less I/O on the demo "
                           "model, same quality)", choices=("always", "demand"))
    decay: float = param(0.9, "per-forward decay of the demand counts admission compares", above=0.0,
                         maximum=1.0)
    pinned: float = param(0.0, "share of each layer's slots pinned to its highest-mass experts, never evicted; "
                          "only the rest (the dynamic region) admits and evicts (0: every slot may be evicted)",
                          minimum=0.0, maximum=1.0)
    read_budget: float = param(0.0, "experts per token each layer's cache may read (0: unbounded): bounds what "
                               "the reads cost per decoded token on a slow link or few cores", minimum=0.0)
    double_buffer: bool = param(False, "a spare slot per layer that the loader thread fills; the main thread "
                                "swaps it in by index and never copies an expert (costs one resident per layer of "
                                "the budget)")


@register_policy
class Swap(Policy):
    name = "swap"
    export_refusal = ("loads experts at run time, so no single set of weights is it: export a prune bundle of "
                      "the same budget (`lightmoe build-bundle --policy prune --uniform`)")
    stream_baseline = True
    summary = "expert cache without stalls: misses re-routed now, their experts loaded in the background"
    Params = SwapParams

    def min_slots_per_layer(self, params: SwapParams, top_k: int) -> int:
        return top_k + (1 if params.double_buffer else 0)  # the spare row is paid from the budget

    def runtime_spec(self, inputs: PlanInputs, params: SwapParams) -> RuntimeSpec:
        return RuntimeSpec(Serving.BACKGROUND, Missing.REROUTE, eviction=params.eviction,
                           max_pending=params.max_pending, admission=params.admission, decay=params.decay,
                           read_budget=params.read_budget or None, spare_slots=1 if params.double_buffer else 0)

    def plan(self, inputs: PlanInputs, params: SwapParams) -> BundlePlan:
        spec = self.runtime_spec(inputs, params)
        top_k = max(inputs.top_k.values())
        # the spare rows come out of each layer's slots: equal memory means one resident fewer per layer
        slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=top_k + spec.spare_slots)
        plan = BundlePlan(layer_plans(inputs, select_residents(inputs.mass, {li: n - spec.spare_slots
                                                                             for li, n in slots.items()})), spec)
        for lp in plan.layers:
            lp.pinned = sorted(core_of(ranked_residents(inputs.mass[lp.layer_index], lp.resident), lp.slots,
                                       params.pinned))
        return plan


def ranked_residents(mass, resident: list[int]) -> list[int]:
    """`resident` by descending calibration mass (ties: lower id first)."""
    return sorted(resident, key=lambda e: (-float(mass[e]), e))
