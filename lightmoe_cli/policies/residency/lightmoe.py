"""`lightmoe`: task-aware expert availability (the core method).

- frequency-aware initial resident set: the global slot budget is spent where it covers the most calibration
  gate mass, each layer keeps its highest-mass experts;
- similarity-based redirection: a missing expert's picks go to the most similar resident when the similarity
  reaches `min_similarity`; otherwise the token is re-routed among the residents as a pruned router would
  (`missing=reroute`, never worse than prune) or the pick is dropped (`missing=drop`). Off by default
  (min_similarity 1.0): measured on two demo models, one with experts 0.7-0.9 alike (upcycled), re-routing beat
  redirecting at every threshold where redirect fired (+0.02 to +0.06 nats per token), so it is opt-in;
- task-level replacement: per-task resident sets are stored, and the runtime manager swaps experts coarsely,
  at check points, when the missed gate mass says the task has shifted;
- with `--region S`, composed with a non-blocking cache: a share S of each layer's slots is a dynamic region
  (`swap`'s background loads, admission by demand) around a pinned core; the manager moves the core with the
  task, the region catches what the task's set misses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from lightmoe_cli.errors import LightMoEError
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
from lightmoe_cli.policies.manager import ManagerParams
from lightmoe_cli.policies.region import core_of
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import frequency_residents
from lightmoe_cli.policies.residency.swap import ranked_residents
from lightmoe_cli.policies.resident import select_residents


@dataclass(frozen=True)
class LightMoEParams(PolicyParams):
    similarity: str = param("output", "redirect by output | weight | coactivation similarity",
                            choices=("output", "weight", "coactivation"))
    min_similarity: float = param(1.0, "redirect only to a resident at least this similar (cosine); 1.0 = only "
                                  "to an identical copy, i.e. off: on both demo models (trained from scratch and "
                                  "upcycled) every threshold at which redirect fired was worse than re-routing "
                                  "(benchmarks/bench_redirect.py)", minimum=-1.0, maximum=1.0)
    missing: str = param("reroute", "a missing expert with no similar resident: reroute (top-k among "
                         "residents, as a pruned router) or drop (weight 0, renormalise)", choices=("reroute", "drop"))
    window: int = param(256, "manager: tokens of demand it looks at", minimum=1)
    threshold: float = param(0.25, "manager: missed gate-mass share that triggers a swap", minimum=0.0,
                             maximum=1.0)
    max_swap: int = param(4, "manager: experts replaced per layer per swap", minimum=1)
    cooldown: int = param(512, "manager: tokens between two swaps of a layer", minimum=0)
    check_every: int = param(64, "manager: tokens between check points (plus every request boundary)",
                             minimum=1)
    swap_rule: str = param("jump", "manager: incremental (swap the most-missed experts when missed "
                           "mass stays high) or jump (recognise the task at request boundaries and move to its "
                           "set when the next request is likely the same task)", choices=("incremental", "jump"))
    margin: float = param(0.02, "manager (jump): expected coverage gain a move must bring", minimum=0.0,
                          maximum=1.0)
    region: float = param(0.0, "share of each layer's slots left to a non-blocking cache around the task's core "
                          "(0: none); the manager moves the core, the region loads missed experts in the "
                          "background", minimum=0.0, maximum=1.0)

    def validate(self) -> None:
        super().validate()
        if self.region > 0 and self.missing != "reroute":
            raise LightMoEError("--region needs --missing reroute: the region's misses are re-routed while their "
                                "experts load")

    def manager(self) -> ManagerParams:
        return ManagerParams(self.window, self.threshold, self.max_swap, self.cooldown, self.check_every,
                             self.swap_rule, self.margin)


@register_policy
class LightMoE(Policy):
    name = "task-aware"
    aliases: ClassVar[tuple[str, ...]] = ("lightmoe",)  # the name before the rename keeps working
    summary = ("task-aware: frequency-aware resident set, similarity redirect (else re-route as prune), "
               "coarse swaps when the task shifts")
    Params = LightMoEParams
    needs_similarity = True

    def min_slots_per_layer(self, params: LightMoEParams, top_k: int) -> int:
        # re-routing picks top-k among residents, so it needs top-k of them per layer, like prune
        return top_k if params.missing == "reroute" else 1

    def plan(self, inputs: PlanInputs, params: LightMoEParams) -> BundlePlan:
        slots, resident = frequency_residents(inputs, self.min_slots_per_layer(params, max(inputs.top_k.values())))
        if params.region > 0:
            return self._with_region(inputs, params, slots, resident)
        per_task = {t: select_residents(m, slots) for t, m in inputs.task_mass.items()}
        spec = RuntimeSpec(Serving.REMAP, Missing(params.missing), manager=params.manager(), uses_similarity=True,
                           min_similarity=params.min_similarity)
        return BundlePlan(layer_plans(inputs, resident, params.min_similarity), spec, per_task)

    def _with_region(self, inputs: PlanInputs, params: LightMoEParams, slots: dict[int, int],
                     resident: dict[int, list[int]]) -> BundlePlan:
        """The core (the highest-mass residents, per task: the task's own) is the manager's; the rest of each
        layer's slots is a dynamic region served as `swap --admission demand` (policies/region.py)."""
        core = {li: n - min(n, int(round(params.region * n))) for li, n in slots.items()}
        per_task = {t: select_residents(m, core) for t, m in inputs.task_mass.items()}
        spec = RuntimeSpec(Serving.BACKGROUND, Missing.REROUTE, eviction="lru", max_pending=8, admission="demand",
                           decay=0.9, manager=params.manager())
        plans = layer_plans(inputs, resident)
        for lp in plans:
            lp.pinned = sorted(core_of(ranked_residents(inputs.mass[lp.layer_index], lp.resident), lp.slots,
                                       core[lp.layer_index] / lp.slots))
        return BundlePlan(plans, spec, per_task)
