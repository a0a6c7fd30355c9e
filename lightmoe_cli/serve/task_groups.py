"""Tasks served in groups that share one resident set (pure: signatures in, groups and sets out).

Why: the task scheduler decodes one task's requests at a time, so with N tasks interleaved and C concurrent
clients a batch holds about C / N requests; on a small model a decode step costs nearly as much for 2 rows as for
8, so throughput follows the batch (docs/serving.md: 0.85x of prune's at saturation with 8 tasks and 16
clients). Tasks whose sets overlap most can share one set chosen for both: the scheduler then groups by set, the
batches grow, and each member loses only the mass its own set had and the shared one lacks.

A group's set is chosen exactly as build-bundle chooses a task's (policies/resident.select_residents: per layer
the experts with the most mass), over the members' summed signatures (each task's gate mass per layer,
normalised to 1, so every member weighs the same). Groups are formed greedily: start from one group per task and
merge the pair whose shared set loses the least of its members' own coverage, until `groups` remain.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmoe_cli.policies.resident import mean_covered_share, select_residents

Signatures = dict[str, dict[int, np.ndarray]]  # task -> layer -> gate mass over experts (sums to 1)


@dataclass(frozen=True)
class TaskGroup:
    name: str  # the members' names joined by '+'
    members: tuple[str, ...]
    resident: dict[int, list[int]]  # layer -> the group's resident experts
    signature: dict[int, np.ndarray]  # layer -> the members' mean signature (what a set move ranks by)
    coverage_lost: float  # summed over members: their own set's mean covered share less the group set's


def group_set(signatures: Signatures, members: tuple[str, ...], slots: dict[int, int]) -> dict[int, list[int]]:
    """Per layer, the `slots[layer]` experts with the most summed mass over `members`."""
    return select_residents({li: sum(np.asarray(signatures[t][li], dtype=np.float64) for t in members)
                             for li in slots}, slots)


def _lost(signatures: Signatures, members: tuple[str, ...], slots: dict[int, int],
          own: dict[str, float]) -> tuple[float, dict[int, list[int]]]:
    resident = group_set(signatures, members, slots)
    return sum(own[t] - mean_covered_share(signatures[t], resident) for t in members), resident


def group_tasks(signatures: Signatures, task_resident: dict[str, dict[int, list[int]]],
                groups: int) -> list[TaskGroup]:
    """`groups` groups of the bundle's tasks, each with one set of the bundle's size per layer (greedy merging
    of the pair that loses the least coverage). `groups` at or above the number of tasks gives one per task."""
    tasks = sorted(task_resident)
    if groups < 1:
        raise ValueError(f"groups must be at least 1, got {groups}")
    slots = {li: len(v) for li, v in task_resident[tasks[0]].items()}
    own = {t: mean_covered_share(signatures[t], task_resident[t]) for t in tasks}
    current: list[tuple[str, ...]] = [(t,) for t in tasks]
    cache: dict[tuple[str, ...], tuple[float, dict[int, list[int]]]] = {}

    def cost(members: tuple[str, ...]) -> tuple[float, dict[int, list[int]]]:
        if members not in cache:
            cache[members] = _lost(signatures, members, slots, own)
        return cache[members]

    while len(current) > groups:
        i, j = min(((a, b) for a in range(len(current)) for b in range(a + 1, len(current))),
                   key=lambda p: (cost(tuple(sorted(current[p[0]] + current[p[1]])))[0]
                                  - cost(current[p[0]])[0] - cost(current[p[1]])[0], p))
        merged = tuple(sorted(current[i] + current[j]))
        current = [g for k, g in enumerate(current) if k not in (i, j)] + [merged]
    out = []
    for members in sorted(current):
        lost, resident = cost(members) if len(members) > 1 else (0.0, task_resident[members[0]])
        signature = {li: np.mean([np.asarray(signatures[t][li], dtype=np.float64) for t in members], axis=0)
                     for li in slots}
        out.append(TaskGroup("+".join(members), members, {li: sorted(v) for li, v in resident.items()}, signature,
                             lost))
    return out
