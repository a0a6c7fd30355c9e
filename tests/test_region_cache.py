"""The pinned-core cache's decisions (policies/region.py), the prefetch byte budget and the simulator that replays
them (analysis/cache_sim.simulate_region): pure, on small arrays."""

import numpy as np
import pytest

from lightmoe_cli.analysis.cache_sim import simulate_layer, simulate_region
from lightmoe_cli.evaluation.cache_replay import replay
from lightmoe_cli.policies.region import PrefetchBudget, RegionCache, core_of

E = 8


def counts(*experts):
    return np.bincount(np.asarray(experts, dtype=np.int64), minlength=E)


def test_the_core_is_never_evicted_and_the_region_takes_every_install():
    cache = RegionCache(E, {0, 1, 2, 3}, pinned={0, 1, 2})
    rng = np.random.default_rng(0)
    for _ in range(200):  # traffic that never picks the core: without a pin every core expert would go
        wanted = cache.observe(counts(*rng.integers(4, E, size=3)))
        for e in wanted:
            cache.started(e)
        cache.admit(wanted)
        assert {0, 1, 2} <= cache.resident and len(cache.resident) == 4
    assert cache.region != {3}  # the region did move


def test_no_region_means_no_reads_and_demand_admission_needs_more_demand_than_the_weakest_region_resident():
    static = RegionCache(E, {0, 1}, pinned={0, 1})
    assert static.observe(counts(5, 6)) == []  # nothing may be evicted: reading would be wasted bytes
    cache = RegionCache(E, {0, 1, 2}, pinned={0}, admission="demand", decay=1.0)
    for _ in range(3):
        cache.observe(counts(1, 2))  # residents 1 and 2 are wanted 3 times each
    assert cache.observe(counts(7)) == []  # 7 wanted once: below the weakest region resident
    for _ in range(3):
        wanted = cache.observe(counts(7))
    assert wanted == [7]  # 4 > 3: now worth a read
    cache.started(7)
    assert cache.admit([7]) == [(7, 1)] and cache.resident == {0, 2, 7}  # LRU among the region: 1 (id tie-break)


def test_one_read_in_flight_with_a_spare_row_most_wanted_first():
    cache = RegionCache(E, {0, 1, 2}, pinned={0}, max_inflight=1)
    wanted = cache.observe(counts(5, 6, 6))
    assert wanted == [6]  # only one: the spare row holds one expert
    cache.started(6)
    assert cache.observe(counts(5)) == []  # the row is taken until the read is admitted
    cache.admit([6])
    assert cache.room() == 1 and cache.observe(counts(5)) == [5]


def test_repin_promotes_a_region_expert_without_a_read_and_reads_the_rest():
    cache = RegionCache(E, {0, 1, 2, 3}, pinned={0, 1})
    reads = cache.repin([0, 1], [3, 6])  # 3 is in the region already: promoted; 6 must be read into 0's slot
    assert reads == [(6, 0)]
    assert cache.pinned == {3, 6} and cache.resident == {1, 2, 3, 6}  # 1 stays, demoted to the region
    with pytest.raises(ValueError, match="core"):
        cache.repin([2], [5])  # 2 is not in the core
    plain = RegionCache(E, {0, 1, 2})  # nothing pinned: a move replaces residents
    assert plain.repin([0], [5]) == [(5, 0)] and plain.resident == {1, 2, 5} and not plain.pinned


def test_core_of_takes_the_highest_mass_share():
    assert core_of([5, 2, 7, 1], 4, 0.75) == [5, 2, 7]
    assert core_of([5, 2, 7, 1], 4, 0.0) == [] and core_of([5, 2], 2, 1.0) == [5, 2]


def test_prefetch_budget_bounds_bytes_per_token_and_needs_confidence():
    budget = PrefetchBudget(bytes_per_token=100.0, confidence=0.5, cost=250.0)
    probs = np.array([0.9, 0.4, 0.8, 0.7, 0.0, 0.0, 0.0, 0.0])
    missing = np.ones(E, dtype=bool)
    assert budget.choose(probs, missing, width=3) == [0, 2, 3]
    missing[2] = False
    assert budget.choose(probs, missing, width=3) == [0, 3]  # resident: no read; 0.4 < 0.5: never read
    bought = 0
    for _ in range(100):  # one token per step, always three confident guesses
        budget.earn(1)
        for _ in budget.choose(probs, np.ones(E, dtype=bool), 3):
            if not budget.affordable():
                break
            budget.pay()
            bought += 1
    assert budget.spent <= 100 * 100.0 and bought == 40  # 100 tokens x 100 bytes / 250 bytes per read
    free = PrefetchBudget(None)
    free.pay()
    assert free.affordable() and free.spent == 1.0


def test_simulated_region_equals_static_when_everything_is_pinned_and_lags_one_forward():
    rng = np.random.default_rng(1)
    steps = rng.integers(0, E, size=(300, 1, 2))
    static = simulate_layer(steps.reshape(300, 2), E, 3, "static", initial=[0, 1, 2])
    pinned = simulate_region(steps, E, [0, 1, 2], pinned=[0, 1, 2])
    assert (pinned.hits, pinned.accesses, pinned.loads) == (static.hits, static.accesses, 0)
    # a miss is never served from memory at once: forward 0 misses 5, forward 1 hits it (read landed)
    r = simulate_region([np.array([5]), np.array([5])], E, [0, 1], lag=1)
    assert (r.hits, r.loads) == (1, 1)
    r = simulate_region([np.array([5]), np.array([5]), np.array([5])], E, [0, 1], lag=2)
    assert (r.hits, r.loads) == (1, 1)
    # a perfect prefetch (the forward's own picks, landing before it) hits everything it can hold
    ahead = [list(s.reshape(-1)) for s in steps]
    r = simulate_region(steps, E, [0, 1, 2, 3], prefetch=ahead, prefetch_lag=0)
    assert r.prefetch_hits > 0 and r.hits > static.hits
    with pytest.raises(ValueError, match="lag"):
        simulate_region(steps, E, [0, 1], lag=0)


def test_the_region_catches_each_tasks_own_expert_at_equal_memory_spare_row_included():
    """A shared core of two experts and four tasks of one own expert each, in blocks of 20 tokens: the static set
    (4 slots) serves two tasks' experts, the pinned cache (3 residents + the spare row = 4 slots) pins the core
    and its one-slot region follows each block."""
    rng = np.random.default_rng(2)
    toks = [[rng.choice([0, 1]), 2 + block % 4] for block in range(24) for _ in range(20)]
    mass = {"t": {0: np.array([10.0, 10.0, 3.0, 3.0, 3.0, 3.0, 0.0, 0.0])}}
    rows = {r.policy: r for r in replay({"t": {0: np.asarray(toks)}}, mass, E, 1.0, [0.5],
                                        ["swap", "pinned", "static"])}
    assert rows["static"].hit_rate == pytest.approx(0.75)
    assert rows["pinned"].hit_rate > rows["static"].hit_rate + 0.08  # demand admission waits ~7 tokens a block
    assert rows["pinned"].capacity == 4 and rows["pinned"].loads_per_token > 0 and rows["swap"].hit_rate > 0.75


def test_the_spare_row_keeps_serving_its_evicted_expert_until_the_next_read_claims_it():
    cache = RegionCache(E, {0, 1, 2}, pinned={0}, spare=True)
    assert cache.max_inflight == 1
    (want,) = cache.observe(counts(6))
    assert cache.started(want) is None  # the spare row was empty
    assert cache.admit([6]) == [(6, 1)]
    assert cache.resident == {0, 1, 2, 6} and cache.standby == 1  # the whole budget serves: 3 rows + the spare
    (want,) = cache.observe(counts(7))
    assert cache.started(want) == 1 and cache.resident == {0, 2, 6}  # the read claims the row: 1 goes now
    cache.refused(7, 1)
    assert cache.standby == 1 and cache.resident == {0, 1, 2, 6}  # a read that never started gives it back
    cache.started(7)
    cache.demand[7] = -1.0  # a finished read not admitted stays in the spare row as the standby
    cache.admission = "demand"
    assert cache.admit([7]) == [] and cache.standby == 7 and 7 in cache.resident
    assert cache.release() == 7 and cache.standby is None and 7 not in cache.resident


def test_a_prefetched_read_skips_the_demand_test_that_a_demand_read_must_pass():
    cache = RegionCache(E, {0, 1, 2}, pinned={0}, admission="demand", decay=1.0)
    for _ in range(3):
        cache.observe(counts(1, 2))
    cache.started(6)
    cache.started(7)
    assert cache.admit([6, 7], prefetched={7}) == [(7, 1)]  # 6 was never wanted: rejected; 7 was predicted
    assert cache.rejected == 1 and 7 in cache.resident and 6 not in cache.resident


def test_a_read_budget_bounds_the_reads_per_token():
    rng = np.random.default_rng(3)
    steps = rng.integers(0, E, size=(400, 1, 2))  # one token per forward, picks all over the layer
    free = simulate_region(steps, E, [0, 1, 2, 3], pinned=[0, 1])
    bounded = simulate_region(steps, E, [0, 1, 2, 3], pinned=[0, 1], read_budget=0.05)
    assert bounded.loads <= 400 * 0.05 + 1 < free.loads
    wide = simulate_region(steps.reshape(40, 10, 2), E, [0, 1, 2, 3], pinned=[0, 1], read_budget=0.05)
    assert wide.loads <= 400 * 0.05 + 1  # a forward of 10 tokens earns 10 tokens' credit
