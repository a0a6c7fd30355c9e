"""Expert cache bookkeeping for the dynamic-swapping baseline: which expert sits in which slot, hits, misses.

Why apart from data movement (as mixtral-offloading separates it): the same object drives the runtime (which
then copies weights into the slots it is told) and a replay of a saved trace, so the baseline's hit rate can be
computed from a profile's traces without running the model. The eviction rule is a parameter, not baked in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class Eviction(Protocol):
    def touch(self, expert: int, clock: int) -> None: ...
    def victim(self, candidates: Iterable[int]) -> int: ...
    def forget(self, expert: int) -> None: ...


@dataclass
class LRU:
    """Evict the expert used least recently."""

    last_used: dict[int, int] = field(default_factory=dict)

    def touch(self, expert: int, clock: int) -> None:
        self.last_used[expert] = clock

    def victim(self, candidates: Iterable[int]) -> int:
        return min(candidates, key=lambda e: (self.last_used.get(e, -1), e))

    def forget(self, expert: int) -> None:
        self.last_used.pop(expert, None)


@dataclass
class LFU:
    """Evict the expert used least often (ties: least recently)."""

    uses: dict[int, int] = field(default_factory=dict)
    last_used: dict[int, int] = field(default_factory=dict)

    def touch(self, expert: int, clock: int) -> None:
        self.uses[expert] = self.uses.get(expert, 0) + 1
        self.last_used[expert] = clock

    def victim(self, candidates: Iterable[int]) -> int:
        return min(candidates, key=lambda e: (self.uses.get(e, 0), self.last_used.get(e, -1), e))

    def forget(self, expert: int) -> None:
        self.uses.pop(expert, None)
        self.last_used.pop(expert, None)


EVICTIONS = {"lru": LRU, "lfu": LFU}


@dataclass
class Load:
    expert: int
    slot: int
    evicted: int | None


@dataclass
class ExpertCache:
    """A fixed number of slots for one layer's experts.

    `request(experts)` is one token step's demand: it returns the loads needed (expert -> slot, evicting as
    told by the eviction rule), never evicting an expert the same step still needs.
    """

    num_slots: int
    eviction: Eviction
    slot_of: dict[int, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    clock: int = 0

    @classmethod
    def warm(cls, num_slots: int, eviction: str, initial: list[int]) -> ExpertCache:
        """A cache pre-filled with `initial` (at most num_slots experts)."""
        if len(initial) > num_slots:
            raise ValueError(f"{len(initial)} initial experts do not fit {num_slots} slots")
        cache = cls(num_slots, EVICTIONS[eviction]())
        for slot, e in enumerate(initial):
            cache.slot_of[e] = slot
            cache.eviction.touch(e, -1)
        return cache

    def request(self, experts: Iterable[int]) -> list[Load]:
        self.clock += 1
        wanted = list(dict.fromkeys(int(e) for e in experts))
        if len(wanted) > self.num_slots:
            raise ValueError(f"one step needs {len(wanted)} experts but the layer has {self.num_slots} slots")
        loads = []
        for e in wanted:
            if e in self.slot_of:
                self.hits += 1
            else:
                self.misses += 1
                free = set(range(self.num_slots)) - set(self.slot_of.values())
                if free:
                    slot, evicted = min(free), None
                else:
                    evicted = self.eviction.victim(x for x in self.slot_of if x not in wanted)
                    slot = self.slot_of.pop(evicted)
                    self.eviction.forget(evicted)
                self.slot_of[e] = slot
                loads.append(Load(e, slot, evicted))
            self.eviction.touch(e, self.clock)
        return loads


def replay(steps: Iterable[Iterable[int]], num_slots: int, eviction: str = "lru",
           initial: list[int] | None = None) -> ExpertCache:
    """Run a trace (one iterable of expert ids per step) through a cache; returns it with its counts."""
    cache = ExpertCache.warm(num_slots, eviction, initial or [])
    for step in steps:
        cache.request(step)
    return cache
