"""`replace`: expert replacing (LightMoE, arXiv 2603.12645) -- memory drops like pruning, every expert stays
reachable.

The experts a global ranking values least (gate mass by default; `--ranking reap` for REAP saliency; `--select
similarity` weighs each by how unlike it is to its nearest expert, so near-duplicates go first) are replaced
by the kept expert most similar to them (their shared base) plus an expert-specific low-rank term, initialised from
a truncated SVD of the difference and recovered by a short annealed training run at build time
(`lightmoe_cli.replace`). `--compression` is the share of expert parameters removed, low-rank terms counted, so
each layer gets its own count of replaced experts for one global ratio. `--rank 0` is naive replacing (the
base only, no term, no training): a redirect to the most similar kept expert.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from lightmoe_cli.policies.base import (
    BundlePlan,
    LayerPlan,
    PlanInputs,
    Policy,
    PolicyParams,
    RuntimeSpec,
    Serving,
    param,
)
from lightmoe_cli.policies.registry import register_policy
from lightmoe_cli.policies.replace_select import base_experts, keep_value, kept_slots, lowrank_bytes
from lightmoe_cli.policies.residency.prune import frequency_residents
from lightmoe_cli.policies.resident import covered_share


@dataclass(frozen=True)
class ReplaceParams(PolicyParams):
    compression: float = param(0.3, "share of the expert parameters removed, low-rank terms counted (the paper: "
                                     "0.3 and 0.5)", above=0.0, maximum=0.95)
    rank: int = param(8, "rank of each replaced expert's low-rank term per projection (0: naive replacing, the "
                         "base expert only)", minimum=0, maximum=256)
    recover_steps: int = param(200, "steps of annealed recovery training of the low-rank terms (0: SVD init only)",
                               minimum=0, maximum=100_000, requires="rank")
    recover_tasks: str = param("", "calibration recipe whose text trains the recovery (default: the profile's)",
                               role="input", requires="rank")
    anneal: float = param(0.5, "share of the recovery steps over which the replaced experts' output is blended "
                               "from original to replacement (0: no annealing)", minimum=0.0, maximum=1.0,
                          requires="rank")
    lr: float = param(1e-3, "AdamW learning rate of the recovery", above=0.0, maximum=1.0, requires="rank")
    similarity: str = param("weight", "which similarity picks a replaced expert's base (and ranks redundancy)",
                            choices=("weight", "output", "coactivation"))
    select: str = param("mass", "which experts are replaced: mass (the --ranking's lowest) or similarity (lowest "
                                "mass x unlikeness to the nearest expert: near-duplicates first)",
                        choices=("mass", "similarity"))


@register_policy
class Replace(Policy):
    name = "replace"
    summary = "expert replacing: low-value experts -> most similar kept expert + low-rank term, recovered by training"
    Params = ReplaceParams
    needs_similarity = True
    weight_transform = "replace"
    export_refusal = ("serves experts the model does not have as weights of its own shape (base + low-rank "
                      "term): export a prune or prune-lora bundle")
    per_token_refusal = "expert replacing"

    def bundle_tag(self, params: ReplaceParams, budget_tag: str) -> str:
        return f"c{int(round(params.compression * 100))}-r{params.rank}"  # it sets its own memory

    def fixed_slots(self, params: ReplaceParams, expert_shape: tuple[int, int], top_k: int, num_experts: int,
                    num_layers: int) -> int:
        hidden, inter = expert_shape
        share = lowrank_bytes(hidden, inter, params.rank, 1) / (3 * hidden * inter)
        return kept_slots(params.compression, share, top_k, num_experts, num_layers)

    def plan(self, inputs: PlanInputs, params: ReplaceParams) -> BundlePlan:
        ranked = inputs
        if params.select == "similarity":
            ranked = dataclasses.replace(inputs, mass={li: keep_value(m, inputs.similarity[li])
                                                       for li, m in inputs.mass.items()})
        _, kept = frequency_residents(ranked, max(inputs.top_k.values()))
        layers = []
        for li in sorted(inputs.mass):
            e = len(inputs.mass[li])
            base = base_experts(inputs.similarity[li], kept[li])
            table = np.arange(e)
            for r, b in base.items():
                table[r] = b
            layers.append(LayerPlan(li, e, inputs.top_k[li], len(kept[li]), list(kept[li]), table.tolist(),
                                    covered_share(inputs.mass[li], kept[li])))
        return BundlePlan(layers, RuntimeSpec(Serving.REPLACE))
