"""`prune-lora`: static pruning, then LoRA fine-tuning of the kept experts -- the baseline expert replacing must
match at equal trainable parameters and steps (the paper's "matches LoRA fine-tuning at 30%").

The pruned model (router sliced, as `prune`) trains a rank-r term on both projections of every kept expert on
the calibration text, AdamW, no annealing (nothing is blended: the pruned experts are gone); the terms are merged
into the kept experts' weights, so it serves exactly like `prune` at the same memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.policies.base import param
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.residency.prune import Prune, PruneParams


@dataclass(frozen=True)
class LoraParams(PruneParams):
    rank: int = param(4, "rank of each kept expert's LoRA term per projection", minimum=1, maximum=256)
    recover_steps: int = param(200, "fine-tuning steps", minimum=1, maximum=100_000)
    recover_tasks: str = param("", "calibration recipe whose text trains it (default: the profile's)", role="input")
    lr: float = param(1e-3, "AdamW learning rate", above=0.0, maximum=1.0)


@register_policy
class PruneLora(Prune):
    name = "prune-lora"
    summary = "prune + LoRA fine-tuning of the kept experts (merged into their weights); serves as prune"
    Params = LoraParams
    weight_transform = "lora"
    stream_baseline = False  # prune is the streams' floor already
