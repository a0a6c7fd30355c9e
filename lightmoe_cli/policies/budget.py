"""Memory budgets: a fraction of the expert weights or an absolute size, turned into expert slots."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lightmoe_cli.errors import LightMoEError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class BudgetError(LightMoEError):
    """A budget that cannot be met; the message names the minimum that works."""


def parse_size(text: str) -> int:
    """'300MiB', '1.5GB', '4096' -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise BudgetError(f"cannot read size {text!r}: use a number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


@dataclass(frozen=True)
class SlotBudget:
    """The budget in expert slots (all MoE layers together) and in bytes."""

    total_slots: int
    budget_bytes: int
    all_expert_bytes: int

    @property
    def fraction(self) -> float:
        return self.budget_bytes / self.all_expert_bytes if self.all_expert_bytes else 1.0


def slots_for_budget(bytes_per_expert: list[int], num_experts: list[int], *, fraction: float | None = None,
                     memory_bytes: int | None = None, min_per_layer: int = 1) -> SlotBudget:
    """Expert slots that fit the budget, given each MoE layer's expert size and count.

    Layers may differ in expert size, so slots are counted with the mean expert size; the allocation later
    checks the exact bytes. Too small for `min_per_layer` slots in every layer -> BudgetError with the minimum.
    """
    if (fraction is None) == (memory_bytes is None):
        raise BudgetError("give exactly one budget: a fraction (--budget 0.5) or a size (--memory 300MiB)")
    total_bytes = sum(b * e for b, e in zip(bytes_per_expert, num_experts, strict=True))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise BudgetError(f"--budget {fraction} must be a fraction in (0, 1] of the expert weights")
        memory_bytes = int(round(fraction * total_bytes))
    if not memory_bytes > 0:
        raise BudgetError(f"--memory must be a positive size, not {memory_bytes} bytes")
    if memory_bytes > total_bytes:
        raise BudgetError(f"--memory {memory_bytes / 2**20:.1f} MiB is more than all experts take "
                          f"({total_bytes / 2**20:.1f} MiB): use --policy full, or a smaller --memory")
    mean_bytes = total_bytes / sum(num_experts)
    slots = min(sum(num_experts), int(memory_bytes // mean_bytes))
    need = min_per_layer * len(num_experts)
    if slots < need:
        min_bytes = sum(b * min_per_layer for b in bytes_per_expert)
        raise BudgetError(f"budget of {memory_bytes / 2**20:.1f} MiB holds {slots} expert(s), fewer than "
                          f"{min_per_layer} per MoE layer x {len(num_experts)} layers: use at least "
                          f"--memory {min_bytes / 2**20:.1f}MiB (--budget {min_bytes / total_bytes:.3f})")
    return SlotBudget(slots, int(memory_bytes), int(total_bytes))
