"""`predict`: `swap` plus prefetch (MoE-Beyond) -- while layer l runs, a learned predictor names the experts layer
l+1 will want and the background loader starts reading the missing ones before they are asked for.

`--prefetch-mib` bounds the prefetch reads per token and `--confidence` admits only confident guesses, so
prefetch pays for its bytes (the runtime reports the hits it bought per MiB moved).
The predictor comes from `lightmoe predict train` (`--predictor DIR`) and is copied into the bundle.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lightmoe_cli.policies.base import PlanInputs, RuntimeSpec, param
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.swap import Swap, SwapParams


@dataclass(frozen=True)
class PredictParams(SwapParams):
    predictor: str = param("", "a trained expert predictor folder (lightmoe predict train); required", role="input")
    prefetch_width: int = param(0, "experts of the next layer prefetched per forward (0: the layer's top-k)",
                                minimum=0)
    prefetch_mib: float = param(0.0, "MiB of prefetch reads per token at most, over all layers (0: unbounded): "
                                "a guess is read only while the byte budget has credit", minimum=0.0)
    confidence: float = param(0.0, "prefetch only an expert the predictor gives at least this probability",
                              minimum=0.0, maximum=1.0)


@register_policy
class Predict(Swap):
    name = "predict"
    summary = "swap + prefetch: a learned predictor loads the next layer's experts ahead of demand (MoE-Beyond)"
    Params = PredictParams

    def predictor(self, params: PredictParams) -> str:
        return params.predictor

    def runtime_spec(self, inputs: PlanInputs, params: PredictParams) -> RuntimeSpec:
        return dataclasses.replace(super().runtime_spec(inputs, params),
                                   prefetch_width=params.prefetch_width or max(inputs.top_k.values()),
                                   prefetch_bytes=params.prefetch_mib * 2**20 if params.prefetch_mib else None,
                                   prefetch_confidence=params.confidence or None)
