"""Which experts an export keeps per layer, and whether the bundle can be expressed as weights at all (pure).

A static bundle is a pruned model: prune, prune-lora, random, or a managed/oracle bundle frozen to one resident
set (`--task T`: that task's stored set; `--static`: its initial set). Policies that move experts at run time
(lru, swap, predict, a managed bundle without --task/--static) have no single set of weights; refused with what
to export instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from lightmoe_cli.errors import LightMoEError

DYNAMIC = ("lru", "swap", "predict")


@dataclass(frozen=True)
class Selection:
    kept: dict[int, list[int]]  # layer -> original expert ids kept (ascending)
    source: str  # what the set is: "bundle", "task:<name>", "static"

    @property
    def uniform(self) -> bool:
        return len({len(v) for v in self.kept.values()}) == 1


def select(policy: str, resident: dict[int, list[int]], task_resident: dict[str, dict[int, list[int]]],
           has_manager: bool, task: str | None = None, static: bool = False) -> Selection:
    """The experts to export, or a one-line refusal naming what to export instead."""
    if policy in DYNAMIC:
        raise LightMoEError(f"a {policy} bundle loads experts at run time, so no single set of weights is it: export a "
                            "prune bundle of the same budget (`lightmoe build-bundle --policy prune --uniform`)")
    if policy in ("replace", "merge"):
        raise LightMoEError(f"a {policy} bundle serves experts the model does not have as weights of its own shape "
                            "(base + low-rank term / cluster averages): export a prune or prune-lora bundle")
    if task is not None:
        if task not in task_resident:
            names = ", ".join(sorted(task_resident)) or "none"
            raise LightMoEError(f"bundle has no resident set for task {task!r} (its tasks: {names})")
        return Selection({li: sorted(v) for li, v in task_resident[task].items()}, f"task:{task}")
    if has_manager and not static:
        raise LightMoEError(f"a {policy} bundle swaps experts per task at run time: export --task T (one of "
                            f"{', '.join(sorted(task_resident)) or 'its tasks'}) or --static (its initial set)")
    if policy == "oracle" and not static:
        raise LightMoEError("an oracle bundle serves each task its own set: export --task T or --static")
    return Selection({li: sorted(v) for li, v in resident.items()}, "static" if static else "bundle")
