"""`full`: every expert resident, whatever the budget: the accuracy ceiling and the memory upper bound."""

from __future__ import annotations

from lightmoe_cli.policies.base import BundlePlan, PlanInputs, Policy, PolicyParams, RuntimeSpec, Serving, layer_plans
from lightmoe_cli.policies.registry import register_policy


@register_policy
class Full(Policy):
    name = "full"
    summary = "all experts resident (the upper bound; ignores the budget)"
    uses_budget = False

    def min_slots_per_layer(self, params: PolicyParams, top_k: int) -> int:
        return 1

    def plan(self, inputs: PlanInputs, params: PolicyParams) -> BundlePlan:
        resident = {li: list(range(len(m))) for li, m in inputs.mass.items()}
        return BundlePlan(layer_plans(inputs, resident), RuntimeSpec(Serving.REMAP))
