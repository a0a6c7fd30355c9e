"""`random`: uniformly random resident experts at prune's per-layer slot counts, served as prune: the floor a
frequency-aware choice must beat (a report's control row)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
from lightmoe_cli.policies.resident import allocate_slots


@dataclass(frozen=True)
class RandomParams(PolicyParams):
    seed: int = param(0, "seed of the random resident sets", minimum=0)


@register_policy
class RandomResidents(Policy):
    name = "random"
    summary = "uniformly random resident sets at prune's slot counts, router sliced (the floor)"
    Params = RandomParams
    replicates = 3  # one draw is noise: the report's floor is the mean of three seeds

    def plan(self, inputs: PlanInputs, params: RandomParams) -> BundlePlan:
        slots = allocate_slots(inputs.mass, inputs.total_slots, min_per_layer=max(inputs.top_k.values()))
        rng = np.random.default_rng(params.seed)
        resident = {li: sorted(int(e) for e in rng.choice(len(inputs.mass[li]), slots[li], replace=False))
                    for li in sorted(inputs.mass)}
        return BundlePlan(layer_plans(inputs, resident), RuntimeSpec(Serving.PRUNED_ROUTER))
