"""The task-jump manager: at a request boundary, recognise the task from the demand just seen and decide whether
holding that task's resident set is worth it for the NEXT request, or whether the global set is the safer bet.

Why a decision and not a chase: moving toward whatever the last request wanted pays only when the next request
is of the same task. The manager estimates that probability from the stream itself (how often the recognised
task stayed the same at past boundaries, with a Beta(1, 2) prior: a stream must show that tasks persist before
the manager bets on it) and compares the expected share of the next
request's gate mass that each candidate set holds:

    E[cover(S)] = p_stay * cover(S | t) + (1 - p_stay) * mean over other tasks u of cover(S | u)

for S in {current set, global set, task t's set}, cover measured on the calibration signatures. It moves to the
best candidate only when it beats the current set by `margin` (hysteresis), at most `max_swap` experts per layer
per boundary. When tasks change at every request, p_stay is near 0 and the global set (= static pruning's) wins:
the manager stops swapping instead of chasing. Pure: arrays in, target sets out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Decision:
    task: str  # the recognised task of the demand just seen
    p_stay: float
    target: str  # "current", "global" or the task's name
    expected: dict[str, float]  # candidate -> expected coverage of the next request


@dataclass
class TaskJump:
    """signatures[task][layer] (E,) calibration gate-mass distribution; task_sets[task][layer] resident ids;
    global_set[layer] resident ids (the bundle's initial set)."""

    signatures: dict[str, dict[int, np.ndarray]]
    task_sets: dict[str, dict[int, list[int]]]
    global_set: dict[int, list[int]]
    margin: float = 0.02
    min_tokens: int = 16  # demand needed to recognise a task
    stays: int = 0
    changes: int = 0
    last_task: str | None = None
    history: list[Decision] = field(default_factory=list)

    def recognise(self, demand: dict[int, np.ndarray]) -> str:
        """The task whose signature is closest (cosine over all layers' concatenated distributions)."""
        layers = sorted(demand)
        d = np.concatenate([np.asarray(demand[li], dtype=np.float64) / max(demand[li].sum(), 1e-12)
                            for li in layers])
        d /= np.linalg.norm(d) or 1.0

        def score(task: str) -> float:
            s = np.concatenate([np.asarray(self.signatures[task][li], dtype=np.float64) for li in layers])
            return float(d @ s / (np.linalg.norm(s) or 1.0))

        return max(sorted(self.signatures), key=score)

    def cover(self, sets: dict[int, list[int]] | dict[int, set[int]], task: str) -> float:
        """Mean over layers of the share of `task`'s calibration gate mass on `sets`."""
        return float(np.mean([np.asarray(self.signatures[task][li])[sorted(sets[li])].sum()
                              / max(float(np.sum(self.signatures[task][li])), 1e-12) for li in sorted(sets)]))

    def decide(self, demand: dict[int, np.ndarray], tokens: int, current: dict[int, set[int]]) -> Decision | None:
        """After a request: None when too little demand was seen; else which set to hold next."""
        if tokens < self.min_tokens:
            return None
        task = self.recognise(demand)
        if self.last_task is not None:
            if task == self.last_task:
                self.stays += 1
            else:
                self.changes += 1
        self.last_task = task
        p = (self.stays + 1) / (self.stays + self.changes + 3)
        others = [u for u in self.signatures if u != task]

        def expected(sets) -> float:
            rest = np.mean([self.cover(sets, u) for u in others]) if others else 0.0
            return p * self.cover(sets, task) + (1 - p) * float(rest)

        cand = {"current": expected(current), "global": expected(self.global_set), task: expected(self.task_sets[task])}
        best = max(("global", task), key=lambda c: cand[c])
        target = best if cand[best] > cand["current"] + self.margin else "current"
        decision = Decision(task, p, target, cand)
        self.history.append(decision)
        return decision

    def target_sets(self, decision: Decision) -> dict[int, list[int]] | None:
        if decision.target == "current":
            return None
        return self.global_set if decision.target == "global" else self.task_sets[decision.target]


def moves_toward(current: set[int], target: list[int], priority: np.ndarray, max_swap: int | None
                 ) -> tuple[list[int], list[int]]:
    """(evict, load) taking `current` toward `target` by at most `max_swap` pairs: the target experts with the
    highest `priority` (E,) come in first, the non-target residents with the lowest go first."""
    want = sorted(set(target) - current, key=lambda e: (-priority[e], e))
    drop = sorted(current - set(target), key=lambda e: (priority[e], e))
    n = min(len(want), len(drop)) if max_swap is None else min(len(want), len(drop), max_swap)
    return drop[:n], want[:n]
