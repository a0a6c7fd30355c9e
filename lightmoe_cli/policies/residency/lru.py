"""`lru`: dynamic swapping, as mixtral-offloading / MoE-Infinity: the same slots as prune, pre-filled with the
same experts; a missing expert is loaded from the expert store before the token continues, evicting by rule."""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.policies.base import (
    BundlePlan,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    param,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import frequency_plan


@dataclass(frozen=True)
class LRUParams(PolicyParams):
    eviction: str = param("lru", "which cached expert a miss evicts: lru (least recently used) or lfu "
                          "(least frequently used)", choices=("lru", "lfu"))


@register_policy
class LRU(Policy):
    name = "lru"
    export_refusal = ("loads experts at run time, so no single set of weights is it: export a prune bundle of "
                      "the same budget (`lightmoe build-bundle --policy prune --uniform`)")
    per_token_refusal = "on-demand loading"
    stream_baseline = True
    summary = "expert cache: misses loaded on demand before the token continues (LRU/LFU eviction)"
    Params = LRUParams

    def plan(self, inputs: PlanInputs, params: LRUParams) -> BundlePlan:
        return frequency_plan(inputs, RuntimeSpec(Serving.ON_DEMAND, eviction=params.eviction))
