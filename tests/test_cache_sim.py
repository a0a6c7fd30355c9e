"""The expert-cache simulator on hand-made traces: classic LRU failure, Belady optimality, static and prefetch."""

import numpy as np
import pytest

from lightmoe_cli.analysis.cache_sim import next_use, simulate, simulate_layer


def test_next_use_points_at_the_next_pick():
    ids = np.array([[0], [1], [0], [2]])
    nxt = next_use(ids, 3)
    assert nxt[0].tolist() == [2, 1, 3] and nxt[2].tolist() == [4, 4, 3] and nxt[3].tolist() == [4, 4, 4]


def test_lru_thrashes_on_a_cycle_longer_than_the_cache_and_belady_does_not():
    ids = np.array([[e] for e in [0, 1, 2, 3] * 10])
    cold = []
    lru = simulate_layer(ids, 4, 3, "lru", initial=cold)
    belady = simulate_layer(ids, 4, 3, "belady", initial=cold)
    assert lru.hits == 0 and lru.loads == 40
    assert belady.hits == 24  # 3 cold misses, then one miss per 3 accesses: 2 of 3 hit


def _optimal_misses(seq: list[int], capacity: int) -> int:
    """Exhaustive search over every eviction choice (K = 1, cold start)."""
    best = [10**9]

    def go(t: int, cache: frozenset, misses: int) -> None:
        if misses >= best[0]:
            return
        if t == len(seq):
            best[0] = misses
            return
        e = seq[t]
        if e in cache:
            go(t + 1, cache, misses)
        elif len(cache) < capacity:
            go(t + 1, cache | {e}, misses + 1)
        else:
            for out in cache:
                go(t + 1, (cache - {out}) | {e}, misses + 1)

    go(0, frozenset(), 0)
    return best[0]


@pytest.mark.parametrize("seed", range(6))
def test_belady_is_optimal_and_bounds_lru_and_lfu(seed):
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, 5, size=12).tolist()
    ids = np.array([[e] for e in seq])
    bel = simulate_layer(ids, 5, 2, "belady", initial=[])
    assert bel.accesses - bel.hits == _optimal_misses(seq, 2)
    for policy in ("lru", "lfu"):
        assert simulate_layer(ids, 5, 2, policy, initial=[]).hits <= bel.hits


def test_multi_pick_tokens_never_evict_an_expert_the_token_needs():
    ids = np.array([[0, 1], [2, 3], [0, 1], [2, 3]])
    r = simulate_layer(ids, 4, 2, "lru", initial=[])
    assert r.accesses == 8 and r.hits == 0 and r.loads == 8  # each token's pair evicts the other pair
    r = simulate_layer(ids, 4, 2, "belady", initial=[])
    assert r.hits == 0  # no policy can do better with two slots
    assert simulate_layer(np.array([[0, 1, 2]]), 4, 1, "lru", initial=[]).loads == 3  # capacity < K still works


def test_static_serves_only_its_set_and_perfect_prefetch_hits_everything():
    rng = np.random.default_rng(0)
    ids = np.stack([rng.choice(8, size=2, replace=False) for _ in range(200)])
    r = simulate_layer(ids, 8, 4, "static", initial=[0, 1, 2, 3])
    assert r.loads == 0 and r.hit_rate == pytest.approx(float(np.isin(ids, [0, 1, 2, 3]).mean()))
    perfect = simulate_layer(ids, 8, 2, "lru", initial=[], prefetch=[row.tolist() for row in ids])
    assert perfect.hit_rate == 1.0 and perfect.prefetch_hits > 0


def test_simulate_sums_layers_and_checks_its_inputs():
    ids = np.array([[0], [1], [0], [1]])
    total = simulate({0: ids, 1: ids}, 4, 0.5, "lru")
    assert total.capacity == 2 and total.accesses == 8 and total.hit_rate == 1.0  # warm start: both cached
    with pytest.raises(ValueError, match="unknown cache policy"):
        simulate_layer(ids, 4, 2, "fifo")
    with pytest.raises(ValueError, match="capacity 9"):
        simulate_layer(ids, 4, 9, "lru")


def test_replay_scores_every_policy_from_one_start_and_an_oracle_predictor_hits_all():
    from lightmoe_cli.evaluation.cache_replay import replay

    rng = np.random.default_rng(1)
    traces = {t: {0: np.stack([rng.choice(8, 2, replace=False) for _ in range(300)]),
                  1: np.stack([rng.choice(8, 2, replace=False) for _ in range(300)])} for t in ("a", "b")}
    mass = {t: {li: np.bincount(v.reshape(-1), minlength=8).astype(float) for li, v in tr.items()}
            for t, tr in traces.items()}
    oracle = {t: {1: tr[1]} for t, tr in traces.items()}  # layer 1's true picks, known one layer ahead
    rows = {(r.policy, r.fraction): r for r in replay(traces, mass, 8, 1000.0, [0.25, 0.5],
                                                      ["lru", "belady", "static", "task", "predict"], oracle)}
    for f in (0.25, 0.5):
        assert rows[("belady", f)].hit_rate >= rows[("lru", f)].hit_rate
        assert rows[("static", f)].loads_per_token == 0
        assert rows[("predict", f)].hit_rate > rows[("lru", f)].hit_rate  # layer 1 always hits
        assert rows[("lru", f)].bytes_per_token == pytest.approx(1000.0 * rows[("lru", f)].loads_per_token)
    with pytest.raises(ValueError, match="needs predictions"):
        replay(traces, mass, 8, 1.0, [0.5], ["predict"])
