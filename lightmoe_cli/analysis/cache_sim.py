"""Replay routing traces through a per-layer expert cache: how often is a picked expert already in memory?

Why a simulator: an offloading runtime's hit rate is set by its cache policy and capacity long before any
kernel runs, and the offline optimum (Belady: evict the expert needed furthest in the future) bounds what any
policy -- learned predictor included -- can reach. Pure: arrays in, counts out; no torch, no I/O.

Semantics (one layer): tokens arrive in order, each needs its K picked experts. A picked expert in the cache is a
hit; otherwise a miss loads it, evicting (if full) a cached expert the current token does not need, chosen by the
policy. `static` never loads (a fixed resident set: what pruning and the lightmoe initial set serve), and
`prefetch` inserts the experts a predictor names for the token before it is served (a wrong guess still costs a
load and a slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CACHE_POLICIES = ("lru", "lfu", "belady", "static")


@dataclass
class CacheResult:
    policy: str
    capacity: int
    accesses: int = 0
    hits: int = 0
    loads: int = 0  # experts copied in (misses + prefetches)
    prefetch_loads: int = 0
    prefetch_hits: int = 0  # hits on an expert that was there only because it was prefetched

    @property
    def hit_rate(self) -> float:
        return self.hits / self.accesses if self.accesses else 0.0

    def loads_per_token(self, tokens: int) -> float:
        return self.loads / tokens if tokens else 0.0


def next_use(ids: np.ndarray, num_experts: int) -> np.ndarray:
    """(T, K) picks -> (T, E): the first token index >= t+1 that picks each expert (T if never)."""
    t_len = ids.shape[0]
    nxt = np.full((t_len, num_experts), t_len, dtype=np.int64)
    upcoming = np.full(num_experts, t_len, dtype=np.int64)
    for t in range(t_len - 1, -1, -1):
        nxt[t] = upcoming
        upcoming[ids[t]] = t
    return nxt


def simulate_layer(ids: np.ndarray, num_experts: int, capacity: int, policy: str,
                   initial: Sequence[int] | None = None, prefetch: Sequence[Sequence[int]] | None = None
                   ) -> CacheResult:
    """Replay one layer's (T, K) picks through a cache of `capacity` experts.

    initial: the experts cached at the start (default: the first distinct experts the trace picks, as if the
    cache were warm; `static` needs it); prefetch[t]: experts inserted before token t is served (LRU eviction
    order otherwise), for a predictor's guesses.
    """
    if policy not in CACHE_POLICIES:
        raise ValueError(f"unknown cache policy {policy!r}; policies: {', '.join(CACHE_POLICIES)}")
    if not 1 <= capacity <= num_experts:
        raise ValueError(f"capacity {capacity} must be within 1..{num_experts} experts")
    ids = np.asarray(ids, dtype=np.int64)
    res = CacheResult(policy, capacity)
    if initial is None:
        order = list(dict.fromkeys(ids.reshape(-1).tolist()))
        initial = order[:capacity]
    cache: dict[int, int] = {int(e): -1 for e in list(initial)[:capacity]}  # expert -> last use (LRU clock)
    freq = np.zeros(num_experts, dtype=np.int64)
    prefetched: set[int] = set()
    nxt = next_use(ids, num_experts) if policy == "belady" else None

    def victim(t: int, protect: set[int]) -> int:
        candidates = [e for e in cache if e not in protect] or list(cache)  # capacity < K: anything goes
        if policy == "lru":
            return min(candidates, key=lambda e: cache[e])
        if policy == "lfu":
            return min(candidates, key=lambda e: (freq[e], cache[e]))
        return max(candidates, key=lambda e: (nxt[t][e], -cache[e]))  # belady: needed furthest ahead

    def insert(t: int, e: int, protect: set[int]) -> None:
        if len(cache) >= capacity:
            del cache[victim(t, protect)]
        cache[e] = t
        res.loads += 1

    for t in range(ids.shape[0]):
        need = [int(e) for e in ids[t]]
        protect = set(need)
        if prefetch is not None and policy != "static":
            for e in prefetch[t]:
                e = int(e)
                if e not in cache:
                    insert(t, e, protect | {int(x) for x in prefetch[t]})
                    res.prefetch_loads += 1
                    prefetched.add(e)
        for e in need:
            res.accesses += 1
            freq[e] += 1
            if e in cache:
                res.hits += 1
                if e in prefetched:
                    res.prefetch_hits += 1
                cache[e] = t
            elif policy != "static":
                insert(t, e, protect)
            prefetched.discard(e)
    return res


def simulate(traces: dict[int, np.ndarray], num_experts: int, fraction: float, policy: str,
             initial: dict[int, Sequence[int]] | None = None,
             prefetch: dict[int, Sequence[Sequence[int]]] | None = None) -> CacheResult:
    """Every layer's trace at a capacity of round(fraction x E) experts (at least one); counts summed."""
    capacity = max(1, int(round(fraction * num_experts)))
    total = CacheResult(policy, capacity)
    for li, ids in sorted(traces.items()):
        r = simulate_layer(ids, num_experts, capacity, policy, (initial or {}).get(li),
                           (prefetch or {}).get(li))
        total.accesses += r.accesses
        total.hits += r.hits
        total.loads += r.loads
        total.prefetch_loads += r.prefetch_loads
        total.prefetch_hits += r.prefetch_hits
    return total


def simulate_region(steps: Sequence[np.ndarray], num_experts: int, resident: Sequence[int],
                    pinned: Sequence[int] = (), eviction: str = "lru", admission: str = "always", decay: float = 0.9,
                    max_inflight: int | None = None, spare: bool = False, lag: int = 1,
                    prefetch: Sequence[Sequence[int]] | None = None, prefetch_lag: int = 0,
                    max_pending: int | None = None, read_budget: float | None = None,
                    core_moves: dict[int, list[tuple[list[int], list[int]]]] | None = None) -> CacheResult:
    """Replay a non-blocking cache -- the runtime's `Background` strategy, pinned core and dynamic region --
    over one layer's forwards, with the very decision object the runtime uses (`policies.region.RegionCache`).

    steps[t]: the expert ids forward t picked (any shape; every pick sees the residents forward t starts with:
    a miss is served elsewhere at once, never loaded first). A read started at forward t lands at the start of
    forward t + lag (1: reads faster than a forward, as unthrottled); prefetch[t]: experts a predictor asked for
    while the layer before ran, landing at forward t + prefetch_lag. Counts: hits / accesses as the runtime's
    hit rate, loads = experts installed, prefetch_hits = picks of an expert resident only thanks to a prefetch;
    spare: double buffering with its standby expert, as the runtime serves it; read_budget: experts per token the
    cache may read (a (T, K) step counts T tokens, a flat one 1); max_pending: reads the loader's
    queue accepts per forward (the rest are asked for again while still missed); core_moves[t]: a manager's moves
    of the pinned core (evict, load) before forward t, as `RegionCache.repin` applies them."""
    from lightmoe_cli.policies.region import RegionCache

    if lag < 1 or prefetch_lag < 0:
        raise ValueError(f"lag {lag} must be >= 1 and prefetch_lag {prefetch_lag} >= 0 forwards")
    cache = RegionCache(num_experts, {int(e) for e in resident}, {int(e) for e in pinned}, eviction, admission,
                        decay, max_inflight, spare, read_budget)
    res = CacheResult("region", len(cache.resident))
    arrivals: dict[int, list[int]] = {}
    prefetching: set[int] = set()
    bought: set[int] = set()
    for t, step in enumerate(steps):
        for e in (prefetch[t] if prefetch is not None and t < len(prefetch) else ()):
            e = int(e)
            room = cache.room()
            if e in cache.resident or e in cache.inflight or room == 0:
                continue
            cache.started(e)
            prefetching.add(e)
            res.prefetch_loads += 1
            arrivals.setdefault(t + prefetch_lag, []).append(e)
        for evict, load in (core_moves or {}).get(t, ()):
            cache.release()
            cache.repin(list(evict), list(load))
        landed = arrivals.pop(t, [])
        for e, victim in cache.admit(landed, prefetching & set(landed)):
            res.loads += 1
            bought.discard(victim)
            if e in prefetching:
                bought.add(e)
        prefetching -= set(landed)
        ids = np.asarray(step, dtype=np.int64)
        tokens = ids.shape[0] if ids.ndim == 2 else 1
        ids = ids.reshape(-1)
        ids = ids[ids < num_experts]
        for e in ids.tolist():
            res.accesses += 1
            if e in cache.resident:
                res.hits += 1
                res.prefetch_hits += e in bought
        # the reads this forward's demand asks for start once its experts have run (as the runtime's hook after
        # the experts does): a read that claims the spare row unmaps its standby between forwards
        for e in cache.observe(np.bincount(ids, minlength=num_experts), tokens):
            if max_pending is not None and len(cache.inflight) >= max_pending:
                break
            cache.started(e)
            arrivals.setdefault(t + lag, []).append(e)
    return res
