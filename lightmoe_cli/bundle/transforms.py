"""Build-time weight transforms: the bundles whose expert weights are not the model's.

A policy names its transform (`Policy.weight_transform`); the build looks it up here, so no code tests a
policy's name. Each transform gets the plan and the model and returns what the bundle stores instead of (or
beside) the original experts: replace (low-rank terms recovered by training), merge (cluster averages), lora
(kept experts fine-tuned with merged low-rank terms).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lightmoe_cli.bundle.artifact import BudgetRecord, ReplacementRecord
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.base import BundlePlan, PolicyParams
from lightmoe_cli.profile.artifact import Profile
from lightmoe_cli.registry import Registry


@dataclass
class TransformInputs:
    model: Any
    tokenizer: Any
    adapter: Any
    layers: list
    plan: BundlePlan
    params: PolicyParams
    prof: Profile
    fingerprint: str
    out: Path
    ranking_mass: dict
    budget: BudgetRecord
    progress: Any = None

    @property
    def checkpoint(self) -> Path:
        """Where a recovery keeps its resumable state until the bundle is written."""
        return self.out.with_name(self.out.name + ".recover")


@dataclass
class TransformedWeights:
    overrides: dict[int, dict[int, dict]] | None = None  # layer -> expert -> tensors stored instead
    lowrank: dict[str, torch.Tensor] | None = None  # replace: the low-rank factors (lowrank.safetensors)
    record: ReplacementRecord | None = None  # the training record
    budget: BudgetRecord | None = None  # the budget, when the transform's own bytes count in it


WEIGHT_TRANSFORMS: Registry[Callable[[TransformInputs], TransformedWeights]] = Registry("weight transform")


def recovery_recipe(params, prof: Profile):
    """--recover-tasks, or the recipe the profile was made with."""
    from lightmoe_cli.recipes import load_recipe, recipe_from_resolved

    if params.recover_tasks:
        return load_recipe(Path(params.recover_tasks))
    try:
        return recipe_from_resolved(prof.manifest.recipe)
    except (LightMoEError, KeyError, TypeError, ValueError) as e:
        raise LightMoEError(f"the profile's calibration recipe cannot be read back ({e}): give "
                            "--recover-tasks RECIPE") from e


def _replacement(model, tokenizer, layers, plan: BundlePlan, params, prof: Profile, fingerprint: str, out: Path,
                 progress) -> tuple[dict[str, torch.Tensor], ReplacementRecord]:
    """Expert replacing: SVD-initialised low-rank terms, recovered by annealed training on calibration text
    (resumable: the checkpoint sits beside the output until the run ends)."""
    from lightmoe_cli.replace.construct import build_replacement
    from lightmoe_cli.replace.recover import RecoverySettings, record_json

    recipe = recovery_recipe(params, prof)
    settings = RecoverySettings(steps=params.recover_steps, lr=params.lr, anneal=params.anneal)
    tensors, bases, record = build_replacement(model, tokenizer, layers, plan.layers, params.rank, settings, recipe,
                                               fingerprint, out.with_name(out.name + ".recover"), progress)
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    return tensors, ReplacementRecord(params.rank, size, bases, record_json(record))


@WEIGHT_TRANSFORMS.register("replace")
def replace_transform(x: TransformInputs) -> TransformedWeights:
    params = x.params
    lowrank, record = _replacement(x.model, x.tokenizer, x.layers, x.plan, params, x.prof, x.fingerprint, x.out,
                                   x.progress)
    resident, total = x.budget.resident_expert_bytes + record.lowrank_bytes, x.budget.all_expert_bytes
    budget = dataclasses.replace(x.budget, requested_fraction=round(1 - params.compression, 6),
                                 requested_bytes=int((1 - params.compression) * total),
                                 resident_expert_bytes=resident, resident_fraction=resident / total)
    return TransformedWeights(lowrank=lowrank, record=record, budget=budget)


@WEIGHT_TRANSFORMS.register("merge")
def merge_transform(x: TransformInputs) -> TransformedWeights:
    from lightmoe_cli.replace.construct import merged_experts

    return TransformedWeights(overrides=merged_experts(x.adapter, x.layers, x.plan.layers, x.ranking_mass))


@WEIGHT_TRANSFORMS.register("lora")
def lora_transform(x: TransformInputs) -> TransformedWeights:
    from lightmoe_cli.replace.construct import lora_experts
    from lightmoe_cli.replace.recover import RecoverySettings, record_json

    params = x.params
    overrides, rec = lora_experts(x.model, x.tokenizer, x.adapter, x.plan.layers, params.rank,
                                  RecoverySettings(steps=params.recover_steps, lr=params.lr),
                                  recovery_recipe(params, x.prof), x.fingerprint, x.checkpoint, x.progress)
    return TransformedWeights(overrides=overrides, record=ReplacementRecord(params.rank, 0, {}, record_json(rec)))
