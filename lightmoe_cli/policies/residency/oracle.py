"""`oracle`: the task is GIVEN. Each request is served by its own task's calibration resident set, at the same
per-layer slot counts as prune (missing picks re-routed as prune's router would): the ceiling of task-aware
residency, the row a task-aware manager is measured against. The caller names the task (`Runtime.use_task`);
the evaluation does so per task."""

from __future__ import annotations

from lightmoe_cli.policies.base import (
    BundlePlan,
    Missing,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    layer_plans,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import frequency_residents
from lightmoe_cli.policies.resident import select_residents


@register_policy
class Oracle(Policy):
    name = "oracle"
    summary = "task given: each task served by its own calibration resident set at prune's slot counts (ceiling)"

    def plan(self, inputs: PlanInputs, params: PolicyParams) -> BundlePlan:
        slots, resident = frequency_residents(inputs, max(inputs.top_k.values()))
        per_task = {t: select_residents(m, slots) for t, m in inputs.task_mass.items()}
        spec = RuntimeSpec(Serving.REMAP, Missing.REROUTE, task_given=True)
        return BundlePlan(layer_plans(inputs, resident), spec, per_task)
