"""Which experts an export keeps per layer, and whether the bundle can be expressed as weights at all (pure).

A static bundle is a pruned model: prune, prune-lora, random, or a managed/oracle bundle frozen to one resident
set (`--task T`: that task's stored set; `--static`: its initial set). A policy that says it has no single set of
weights (`Policy.export_refusal`: experts moved at run time, or weights of another shape) and a managed bundle
without --task/--static are refused with what to export instead. No policy name is tested here.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.errors import LightMoEError


@dataclass(frozen=True)
class Selection:
    kept: dict[int, list[int]]  # layer -> original expert ids kept (ascending)
    source: str  # what the set is: "bundle", "task:<name>", "static"

    @property
    def uniform(self) -> bool:
        return len({len(v) for v in self.kept.values()}) == 1


def select(policy: str, resident: dict[int, list[int]], task_resident: dict[str, dict[int, list[int]]],
           has_manager: bool, task: str | None = None, static: bool = False, task_given: bool = False,
           refusal: str | None = None) -> Selection:
    """The experts to export, or a one-line refusal naming what to export instead. `refusal`: the policy's own
    reason it has no single set of weights; `task_given`: each request names its task (an oracle bundle)."""
    if refusal is not None:
        raise LightMoEError(f"a {policy} bundle {refusal}")
    if task is not None:
        if task not in task_resident:
            names = ", ".join(sorted(task_resident)) or "none"
            raise LightMoEError(f"bundle has no resident set for task {task!r} (its tasks: {names})")
        return Selection({li: sorted(v) for li, v in task_resident[task].items()}, f"task:{task}")
    if task_given and not static:
        raise LightMoEError(f"a {policy} bundle serves each task its own set: export --task T or --static")
    if has_manager and not static:
        raise LightMoEError(f"a {policy} bundle swaps experts per task at run time: export --task T (one of "
                            f"{', '.join(sorted(task_resident)) or 'its tasks'}) or --static (its initial set)")
    return Selection({li: sorted(v) for li, v in resident.items()}, "static" if static else "bundle")


def uniform_experts_per_token(activation, target: str) -> int | None:
    """The experts per token of a bundle's activation budget (an ActivationPlan) when `target`, which holds one
    experts-per-token value for every layer, can say it: None without a budget; a per-layer k or a per-token
    rule is refused by name (dropping it would serve the full top-k without a word)."""
    if activation is None:
        return None
    ks = sorted(set(activation.k.values()))
    if activation.beta or activation.pooled_base or len(ks) > 1:
        what = "drops picks per token" if activation.beta or activation.pooled_base else \
            f"gives layers different k ({ks})"
        raise LightMoEError(f"the bundle's activation budget ({activation.rule}) {what}, which {target} cannot "
                            "say: export a bundle with --activation topk, or without --activation (or export "
                            "--format vllm-profile, which lists every layer's k)")
    return ks[0]
