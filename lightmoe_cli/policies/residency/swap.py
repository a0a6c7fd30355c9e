"""`swap`: dynamic swapping without stalls -- the equal-latency baseline a task-aware runtime must beat.

Same slots and initial residents as prune and lru. A pick of a missing expert is re-routed among the residents at
once (as the pruned router would) and the expert is read on a background thread; when the read is done it
replaces the least recently (or frequently) used resident at the layer's next forward (`--admission demand`: only
while its recent demand beats the weakest resident's).
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
    param,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import frequency_plan


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


@register_policy
class Swap(Policy):
    name = "swap"
    export_refusal = ("loads experts at run time, so no single set of weights is it: export a prune bundle of "
                      "the same budget (`lightmoe build-bundle --policy prune --uniform`)")
    stream_baseline = True
    summary = "expert cache without stalls: misses re-routed now, their experts loaded in the background"
    Params = SwapParams

    def runtime_spec(self, inputs: PlanInputs, params: SwapParams) -> RuntimeSpec:
        return RuntimeSpec(Serving.BACKGROUND, Missing.REROUTE, eviction=params.eviction,
                           max_pending=params.max_pending, admission=params.admission, decay=params.decay)

    def plan(self, inputs: PlanInputs, params: SwapParams) -> BundlePlan:
        return frequency_plan(inputs, self.runtime_spec(inputs, params))
