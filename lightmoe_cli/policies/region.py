"""A non-blocking expert cache's decisions for one layer: a pinned core plus a dynamic region.

Why a core: when every finished read may evict any resident (the old `swap`), the resident set drifts toward the
previous batch's experts and away from the frequency-chosen ones that the re-routed picks land on best; measured
on the demo model, that drift alone made swapping worse than static pruning. Here a share of the slots (the
core: the frequency set, or a task's set under the manager) is never evicted by the cache; only the rest (the
region) admits and evicts. With no core this is exactly the old `swap` rule (a test replays both).

Why pure: the runtime (`runtime.strategies.Background`) and the simulator (`analysis.cache_sim.simulate_region`)
drive the same object -- per forward `observe` (demand in, reads to start out) and `admit` (finished reads in,
installs out) -- so their hit rates can be checked against each other on one trace. No torch, no threads.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EVICTIONS = ("lru", "lfu")
ADMISSIONS = ("always", "demand")


@dataclass
class RegionCache:
    """Resident set of one layer, split into a pinned core and a dynamic region.

    eviction: which region resident a finished read replaces (lru: least recently picked, lfu: least decayed
    demand); admission: "always" installs every finished read, "demand" only one whose decayed demand beats the
    weakest region resident's (and reads only such experts); decay: per-forward decay of the demand counts (a
    window of about 1 / (1 - decay) forwards); max_inflight: reads per layer at once; spare: double buffering,
    one read at a time into the one spare row. The spare row is not idle memory: after an install the evicted
    expert stays in its old row (now the spare) as the `standby` and keeps serving until the next read claims
    that row, so between reads the layer holds a full budget of experts and during a read one fewer.
    read_budget: experts per token the cache may read (its credit banks at most one read beyond this forward's), so on a
    slow link or few cores the reads' cost is bounded per decoded token."""

    num_experts: int
    resident: set[int]
    pinned: set[int] = field(default_factory=set)
    eviction: str = "lru"
    admission: str = "always"
    decay: float = 0.9
    max_inflight: int | None = None
    spare: bool = False
    read_budget: float | None = None  # experts the cache may read per token (None: unbounded); banks one read
    credit: float = 0.0
    standby: int | None = None  # spare: the resident in the spare row, first to go when a read claims the row
    clock: int = 0
    inflight: set[int] = field(default_factory=set)  # reads started and not yet admitted or refused
    rejected: int = 0  # finished reads not installed
    last_use: np.ndarray = field(init=False)  # (E,) forward of the last pick while resident
    demand: np.ndarray = field(init=False)  # (E,) decayed picks per forward

    def __post_init__(self) -> None:
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction {self.eviction!r}: use one of {', '.join(EVICTIONS)}")
        if self.admission not in ADMISSIONS:
            raise ValueError(f"admission {self.admission!r}: use one of {', '.join(ADMISSIONS)}")
        if not self.pinned <= self.resident:
            raise ValueError(f"pinned experts {sorted(self.pinned - self.resident)} are not resident")
        self.resident, self.pinned = set(self.resident), set(self.pinned)
        if self.spare:
            self.max_inflight = 1
        self.last_use = np.zeros(self.num_experts, dtype=np.int64)
        self.demand = np.zeros(self.num_experts)

    @property
    def region(self) -> set[int]:
        return self.resident - self.pinned

    def room(self) -> int | None:
        """Reads that may still start (None: unbounded)."""
        return None if self.max_inflight is None else max(0, self.max_inflight - len(self.inflight))

    def observe(self, counts: np.ndarray, tokens: int = 1) -> list[int]:
        """One forward's picks per expert (E,) over `tokens` tokens -> the missing experts worth reading, most
        wanted first (at most `room()`, and with a read budget at most what its credit pays for). The caller
        starts the reads it can and reports them with `started`."""
        if self.read_budget is not None:
            earned = tokens * self.read_budget
            self.credit = min(1.0 + earned, self.credit + earned)
        counts = np.asarray(counts, dtype=np.float64)[: self.num_experts]
        self.clock += 1
        self.demand = self.demand * self.decay + counts
        resident = np.zeros(self.num_experts, dtype=bool)
        resident[sorted(self.resident)] = True
        picked = counts > 0
        self.last_use[picked & resident] = self.clock
        region = sorted(self.region - {self.standby})
        if not region:  # nothing may be evicted: no read could ever be installed
            return []
        bar = self.demand[region].min() if self.admission == "demand" else -np.inf
        want = [e for e in np.flatnonzero(picked & ~resident & (self.demand > bar)).tolist()
                if e not in self.inflight]
        room = self.room()
        if self.read_budget is not None:
            room = min(int(self.credit), len(want) if room is None else room)
        if room is not None:
            want = sorted(want, key=lambda e: (-self.demand[e], e))[:room]
        return want

    def started(self, expert: int) -> int | None:
        """A read of `expert` starts. With a spare row it claims the row: the standby expert there stops being
        resident (returned, for the caller to unmap before the row is written)."""
        self.inflight.add(int(expert))
        if self.read_budget is not None:
            self.credit -= 1.0
        if not self.spare or self.standby is None:
            return None
        dropped, self.standby = self.standby, None
        self.resident.discard(dropped)
        return dropped

    def release(self) -> int | None:
        """Free the spare row now (before a manager's move): the standby stops being resident; returned."""
        dropped, self.standby = self.standby, None
        if dropped is not None:
            self.resident.discard(dropped)
        return dropped

    def refused(self, expert: int, dropped: int | None = None) -> None:
        """A read that never started (the loader's queue was full); `dropped`: the standby its start unmapped,
        back in the untouched spare row."""
        self.inflight.discard(int(expert))
        if self.read_budget is not None:
            self.credit += 1.0
        if dropped is not None:
            self.standby = dropped
            self.resident.add(dropped)

    def victim(self, candidates: list[int]) -> int:
        if self.eviction == "lfu":
            return min(candidates, key=lambda e: (self.demand[e], self.last_use[e], e))
        return min(candidates, key=lambda e: (self.last_use[e], self.demand[e], e))

    def admit(self, ready: list[int], prefetched: set[int] | frozenset[int] = frozenset()) -> list[tuple[int, int]]:
        """Finished reads -> installs (expert, evicted region resident), most wanted first; a read whose expert is
        already resident is dropped, one not wanted more than its victim (demand admission) is rejected. With a
        spare row the victim stays resident as the standby (its row becomes the spare), and a rejected read
        becomes the standby itself (it is in the spare row already). A `prefetched` read skips the demand test: it
        was bought for the demand the predictor expects, not for demand already seen (the byte budget and the
        confidence threshold admitted it)."""
        for e in ready:
            self.inflight.discard(int(e))
        fresh = sorted((int(e) for e in ready if int(e) not in self.resident), key=lambda e: -self.demand[e])
        installs: list[tuple[int, int]] = []
        loaded: set[int] = set()
        for e in fresh:
            candidates = sorted(self.region - loaded - {self.standby})
            victim = self.victim(candidates) if candidates else None
            if victim is None or (self.admission == "demand" and e not in prefetched
                                  and self.demand[e] <= self.demand[victim]):
                self.rejected += 1
                if self.spare and self.standby is None:
                    self.standby = e
                    self.resident.add(e)
                continue
            if self.spare:
                self.standby = victim
            else:
                self.resident.discard(victim)
            self.resident.add(e)
            loaded.add(e)
            installs.append((e, victim))
        return installs

    def repin(self, evict: list[int], load: list[int]) -> list[tuple[int, int]]:
        """A manager moves the core (every resident when nothing is pinned): `evict` (least wanted first) leave
        it, `load` join it. A loaded expert already in the region is promoted without I/O, and then the most
        wanted of the evicted stay resident in the region instead of leaving. Returns the reads as (expert,
        evicted expert whose slot it takes)."""
        if self.standby is not None:
            raise ValueError("release() the spare row's standby before moving the core")
        core = self.pinned if self.pinned else self.resident
        if len(evict) != len(load) or not set(evict) <= core:
            raise ValueError(f"a core move needs as many loads as evictions, all evictions from the core "
                             f"(not core: {sorted(set(evict) - core)})")
        reads = [e for e in load if e not in self.resident]
        gone = list(evict[:len(reads)])
        if self.pinned:
            self.pinned = (self.pinned - set(evict)) | set(load)
        self.resident = (self.resident - set(gone)) | set(reads)
        return list(zip(reads, gone, strict=True))


def core_of(ranked: list[int], slots: int, share: float) -> list[int]:
    """The pinned core of a layer: the first round(share x slots) experts of `ranked` (highest mass first), at
    least none and at most every slot."""
    n = min(slots, max(0, int(round(share * slots))))
    return list(ranked[:n])


@dataclass
class PrefetchBudget:
    """Prefetch that pays for its bytes: a guess is read only while the byte budget has credit and only when
    the predictor is confident enough.

    bytes_per_token: credit earned per token served (None: unbounded, the old prefetch); it banks at most one
    expert's bytes plus one token's credit, so an idle stretch cannot buy a burst later;
    confidence: the least predicted probability a guess needs; cost: bytes of one expert read."""

    bytes_per_token: float | None
    confidence: float = 0.0
    cost: float = 1.0
    credit: float = 0.0
    spent: float = 0.0  # bytes of the reads it paid for

    def earn(self, tokens: float) -> None:
        if self.bytes_per_token is not None:
            cap = self.cost + self.bytes_per_token
            self.credit = min(cap, self.credit + tokens * self.bytes_per_token)

    def choose(self, probs: np.ndarray, missing: np.ndarray, width: int) -> list[int]:
        """(E,) predicted probabilities and (E,) not-resident mask -> the guesses worth reading, most likely
        first: the top `width` that are missing and at least `confidence` likely (the caller pays per read)."""
        probs = np.asarray(probs, dtype=np.float64)
        top = np.argsort(-probs, kind="stable")[:width]
        return [int(e) for e in top if missing[e] and probs[e] >= self.confidence]

    def affordable(self) -> bool:
        return self.bytes_per_token is None or self.credit >= self.cost

    def pay(self) -> None:
        self.spent += self.cost
        if self.bytes_per_token is not None:
            self.credit -= self.cost
