"""Activation budgets on hand-made tables: the DP equals brute force, the evolutionary search finds the optimum
and keeps the sum, NAEE thresholds meet their budget, Alloc-T pools the spare slots."""

import numpy as np
import pytest

from lightmoe_cli.policies.activation_budget import (
    activation_budget,
    brute_force,
    evolutionary_search,
    grouped_knapsack,
    naee_thresholds,
    pooled_token_topk,
    uniform_split,
)


def _costs(seed, layers=4, k=4):
    rng = np.random.default_rng(seed)
    return {li: {j: float(c) for j, c in zip(range(1, k + 1), np.sort(rng.random(k))[::-1] * rng.random(),
                                              strict=True)} for li in range(layers)}


def test_budget_and_uniform_split():
    top_k = {0: 4, 1: 4, 2: 4, 3: 4}
    assert activation_budget(top_k, 0.5) == 8 and uniform_split(top_k, 8) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert uniform_split(top_k, 10) == {0: 3, 1: 3, 2: 2, 3: 2}
    assert uniform_split({0: 1, 1: 4}, 4) == {0: 1, 1: 3}  # a capped layer hands its share on
    with pytest.raises(ValueError, match="at least one expert per token per layer needs --active 0.250"):
        activation_budget(top_k, 0.1)
    with pytest.raises(ValueError, match="must be a fraction"):
        activation_budget(top_k, float("nan"))


@pytest.mark.parametrize("seed", range(8))
def test_grouped_knapsack_equals_brute_force(seed):
    cost = _costs(seed)
    for budget in (4, 7, 10, 16):
        got = grouped_knapsack(cost, budget)
        want = brute_force(cost, budget)
        assert sum(got.values()) <= budget
        assert sum(cost[li][k] for li, k in got.items()) == pytest.approx(sum(cost[li][k] for li, k in want.items()))


@pytest.mark.parametrize("seed", range(5))
def test_evolutionary_search_finds_the_exact_sum_optimum_deterministically(seed):
    delta = _costs(100 + seed, layers=5)
    got = evolutionary_search(delta, 11, seed=seed)
    assert sum(got.values()) == 11 and all(1 <= k <= 4 for k in got.values())
    want = brute_force(delta, 11, exact=True)
    assert sum(delta[li][k] for li, k in got.items()) == pytest.approx(sum(delta[li][k] for li, k in want.items()))
    assert evolutionary_search(delta, 11, seed=seed) == got


def test_naee_thresholds_meet_the_budget_on_the_calibration_tokens():
    rng = np.random.default_rng(0)
    w = {li: rng.dirichlet(np.ones(4), size=500) for li in range(3)}
    top_k = {li: 4 for li in range(3)}
    betas = naee_thresholds(w, top_k, budget=6)  # 2 of 4 picks per token on average
    for li, b in betas.items():
        s = np.sort(w[li], axis=1)[:, ::-1]
        kept = 1 + (s[:, 1:] >= b * s[:, :1]).sum(1)
        assert kept.mean() == pytest.approx(2.0, abs=0.01)
    assert naee_thresholds(w, top_k, budget=3)[0] == float("inf")  # one pick per token: only the first stays


def test_pooled_token_topk_gives_spare_slots_to_the_highest_scores():
    scores = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [0.6, 0.3, 0.1]])
    keep = pooled_token_topk(scores, k_layer=2, k_base=1)
    assert keep.sum() == 6 and keep[:, 0].all()
    assert keep[1].tolist() == [True, True, True] and keep[0].tolist() == [True, False, False]


def test_runtime_alloc_t_pools_over_every_remaining_candidate():
    """Alloc-T's spare slots go to the best of ALL tokens' remaining picks (not only up to k): with K = 3,
    k = 2 and one token confident, another token may keep all three of its picks."""
    import torch

    from lightmoe_cli.policies.activation import LayerActivation

    w = torch.tensor([[0.90, 0.06, 0.04], [0.40, 0.35, 0.25], [0.50, 0.30, 0.20]])
    idx = torch.tensor([[0, 1, 2], [3, 4, 5], [6, 7, 0]])
    kept_idx, kept_w, dropped = LayerActivation(2, renormalise=False, pooled_base=1).select(idx, w)
    want = pooled_token_topk(w.numpy(), 2, 1)
    assert torch.equal(~dropped, torch.as_tensor(want)) and int((~dropped).sum()) == 6
    assert (~dropped)[1].all() and not (~dropped)[0, 1:].any()  # token 1 keeps 3 picks, token 0 only 1
    assert torch.equal(kept_w, w * torch.as_tensor(want))
