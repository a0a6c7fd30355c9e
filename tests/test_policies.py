"""Pure policies on hand-made arrays: budgets, allocation, redirect tables, cache replay, swap manager."""

import numpy as np
import pytest

from lightmoe_cli.policies.budget import BudgetError, parse_size, slots_for_budget
from lightmoe_cli.policies.cache import ExpertCache, replay
from lightmoe_cli.policies.manager import LayerManager, ManagerParams, nearest_signature
from lightmoe_cli.policies.redirect import DROP, redirect_table
from lightmoe_cli.policies.resident import allocate_slots, covered_share, select_residents


def test_parse_size():
    assert parse_size("300MiB") == 300 * 2**20
    assert parse_size("1.5GB") == 1_500_000_000
    assert parse_size("4096") == 4096
    with pytest.raises(BudgetError, match="cannot read size"):
        parse_size("lots")


def test_slots_for_budget_and_minimum_message():
    b = slots_for_budget([100, 100], [8, 8], fraction=0.5)
    assert b.total_slots == 8 and b.budget_bytes == 800 and b.fraction == pytest.approx(0.5)
    assert slots_for_budget([100, 100], [8, 8], memory_bytes=450).total_slots == 4
    with pytest.raises(BudgetError, match=r"use at least --memory .* \(--budget 0.250\)"):
        slots_for_budget([100, 100], [8, 8], memory_bytes=350, min_per_layer=2)
    with pytest.raises(BudgetError, match="exactly one budget"):
        slots_for_budget([100], [8])


def test_allocation_gives_slots_where_mass_is_spread():
    concentrated = np.array([90, 5, 3, 2, 0, 0, 0, 0.0])
    spread = np.ones(8)
    slots = allocate_slots({0: concentrated, 1: spread}, total_slots=8, min_per_layer=1)
    assert sum(slots.values()) == 8 and slots[1] > slots[0]
    res = select_residents({0: concentrated, 1: spread}, slots)
    assert res[0][: slots[0]] == sorted(range(slots[0]))  # the heaviest experts of layer 0
    assert covered_share(concentrated, res[0]) >= 0.9
    assert allocate_slots({0: concentrated, 1: spread}, 16) == {0: 8, 1: 8}
    with pytest.raises(ValueError):
        allocate_slots({0: spread}, 0)


def test_allocation_is_optimal_on_a_small_case():
    rng = np.random.default_rng(0)
    mass = {i: rng.dirichlet(np.full(6, 0.3)) for i in range(3)}
    got = allocate_slots(mass, 7, min_per_layer=1)
    best = 0.0
    for a in range(1, 6):
        for b in range(1, 6):
            c = 7 - a - b
            if 1 <= c <= 6:
                best = max(best, sum(np.sort(mass[i])[::-1][:k].sum() for i, k in enumerate((a, b, c))))
    value = sum(np.sort(mass[i])[::-1][: got[i]].sum() for i in mass)
    assert value == pytest.approx(best)


def test_redirect_table_with_threshold():
    sim = np.array([[1.0, 0.9, 0.1, 0.0],
                    [0.9, 1.0, 0.2, 0.3],
                    [0.1, 0.2, 1.0, 0.05],
                    [0.0, 0.3, 0.05, 1.0]])
    assert redirect_table(sim, [0, 2]).tolist() == [0, 0, 2, 2]  # 3 -> 2 (0.05 > 0.0)
    assert redirect_table(sim, [0, 2], min_similarity=0.5).tolist() == [0, 0, 2, DROP]


def test_lru_replay_matches_a_hand_count():
    steps = [[0, 1], [2, 0], [3, 1], [0, 2]]
    c = replay(steps, num_slots=3, eviction="lru")
    # step1: miss 0, 1 (free slots); step2: miss 2 (free slot), hit 0;
    # step3: miss 3 -> evict the LRU among the experts this step does not need: 0 and 2 (both last used at
    # step 2; tie -> lower id 0); hit 1; step4: miss 0 -> evict 1 or 3 (both step 3; tie -> 1); hit 2
    assert (c.hits, c.misses) == (3, 5)
    assert set(c.slot_of) == {0, 2, 3}
    warm = replay(steps, num_slots=3, eviction="lru", initial=[0, 1, 2])
    assert warm.hits > c.hits
    assert set(warm.slot_of.values()) <= {0, 1, 2}


def test_lfu_keeps_the_frequent_expert():
    cache = ExpertCache.warm(2, "lfu", [])
    for step in ([0], [0], [0], [1], [2], [0]):
        cache.request(step)
    assert 0 in cache.slot_of and cache.misses == 3
    with pytest.raises(ValueError, match="slots"):
        cache.request([5, 6, 7])


def test_manager_swaps_toward_the_new_task_and_respects_cooldown():
    params = ManagerParams(window_tokens=100, miss_threshold=0.3, max_swap=2, cooldown_tokens=300)
    m = LayerManager(8, {0, 1, 2, 3}, params)
    old_task, new_task = np.array([5, 5, 5, 5, 0, 0, 0, 0.0]), np.array([0, 0, 1, 1, 6, 6, 0, 0.0])
    for _ in range(4):
        m.observe(old_task, 50)
        assert m.decide() is None  # no misses
    decisions = []
    for _ in range(20):  # 1000 tokens of the new task, checked every 50
        m.observe(new_task, 50)
        s = m.decide()
        if s:
            decisions.append(s)
    assert decisions and set(decisions[0].load) == {4, 5} and set(decisions[0].evict) == {0, 1}
    assert m.resident == {2, 3, 4, 5}
    assert all(b.token - a.token >= 300 for a, b in zip(decisions, decisions[1:], strict=False))
    assert len(decisions) == 1  # after the swap the new task hits: no more swaps


def test_nearest_signature():
    sigs = {"code": np.array([9, 1, 0, 0.0]), "math": np.array([0, 0, 5, 5.0])}
    assert nearest_signature(np.array([0, 1, 3, 4.0]), sigs) == "math"
