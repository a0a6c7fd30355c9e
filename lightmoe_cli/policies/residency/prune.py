"""`prune`: static expert pruning (NAEE/REAP-style), the baseline a user would otherwise pick.

The global slot budget goes where it covers the most calibration mass (`allocate_slots`), each layer keeps its
highest-mass experts, and the router is sliced to them and renormalised: missing experts are unreachable.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.policies.base import (
    BundlePlan,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    layer_plans,
    param,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.resident import allocate_slots, select_residents


def frequency_residents(inputs: PlanInputs, min_per_layer: int) -> tuple[dict[int, int], dict[int, list[int]]]:
    """Slots per layer (global greedy on covered mass) and the highest-mass experts in them."""
    slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=min_per_layer)
    return slots, select_residents(inputs.mass, slots)


def frequency_plan(inputs: PlanInputs, runtime: RuntimeSpec) -> BundlePlan:
    """prune's resident sets (at least top-k experts per layer: one token's picks must fit) served as `runtime`:
    the plan of prune and of the caches that start from the same set (lru, swap, predict)."""
    _, resident = frequency_residents(inputs, max(inputs.top_k.values()))
    return BundlePlan(layer_plans(inputs, resident), runtime)


def uniform_residents(inputs: PlanInputs, min_per_layer: int) -> dict[int, list[int]]:
    """The same number of experts in every layer (the budget split evenly), each layer's highest-mass ones."""
    per_layer = max(min_per_layer, inputs.total_slots // len(inputs.mass))
    return select_residents(inputs.mass, {li: min(per_layer, len(m)) for li, m in inputs.mass.items()})


@dataclass(frozen=True)
class PruneParams(PolicyParams):
    uniform: bool = param(False, "keep the same number of experts in every layer (a pruned model whose config "
                                 "has one expert count: what `lightmoe export --format hf` needs)")


@register_policy
class Prune(Policy):
    name = "prune"
    stream_baseline = True
    summary = "static pruning: router sliced to the resident experts and renormalised; no swaps"
    Params = PruneParams

    def plan(self, inputs: PlanInputs, params: PruneParams) -> BundlePlan:
        runtime = RuntimeSpec(Serving.PRUNED_ROUTER)
        if params.uniform:  # a pruned router still picks top-k: every layer keeps top-k or more
            return BundlePlan(layer_plans(inputs, uniform_residents(inputs, max(inputs.top_k.values()))), runtime)
        return frequency_plan(inputs, runtime)
