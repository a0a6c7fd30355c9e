"""The residency outlook on hand-made routing: specialised tasks gain from their own sets, shared ones do not."""

import numpy as np

from lightmoe_cli.analysis.outlook import residency_outlook
from lightmoe_cli.profile.accumulator import LayerStats


def _halves(mass):
    return np.stack([mass / 2, mass / 2])


def test_specialised_tasks_gain_from_their_own_sets():
    e = 8
    a = np.array([8, 8, 8, 8, 0.1, 0.1, 0.1, 0.1])
    b = a[::-1].copy()
    tm = {"a": {0: a}, "b": {0: b}}
    out = residency_outlook(tm, {t: {0: _halves(m[0])} for t, m in tm.items()}, {0: 2},
                            {0: np.eye(e) * 0.9 + 0.05})
    mid = out.rows[1]
    assert mid.budget == 0.5 and mid.slots == 4
    assert mid.task_coverage > 0.98 and mid.global_coverage < 0.6  # global set: two of each task's four
    assert mid.heldout_gain > 0.3 and "pays off" in out.advice and "re-routed as by prune" in out.advice
    assert mid.redirect_reach == 0.0  # 0.05 between experts: no missing expert has a similar resident


def test_redirect_reach_is_the_missed_mass_with_a_similar_resident():
    from lightmoe_cli.analysis.outlook import redirect_reach

    mass = {0: np.array([4.0, 3.0, 2.0, 1.0])}
    sim = np.eye(4)
    sim[2, 0] = sim[0, 2] = 0.8  # expert 2 (missing) has a similar resident; expert 3 does not
    assert redirect_reach(mass, {0: [0, 1]}, {0: sim}, 0.5) == 2.0 / 3.0
    assert redirect_reach(mass, {0: [0, 1]}, {0: sim}, 0.9) == 0.0
    alike = {0: np.full((4, 4), 0.7)}
    out = residency_outlook({"a": mass}, {"a": {0: _halves(mass[0])}}, {0: 1}, alike)
    assert out.rows[1].redirect_reach == 1.0 and "measure it against prune" in out.advice


def test_shared_routing_says_static_pruning_is_enough():
    m = np.array([5, 4, 3, 2, 1, 1, 1, 1], dtype=float)
    tm = {"a": {0: m}, "b": {0: m.copy()}}
    out = residency_outlook(tm, {t: {0: _halves(x[0])} for t, x in tm.items()}, {0: 2}, None)
    assert all(abs(r.heldout_gain) < 1e-9 for r in out.rows) and "static pruning is enough" in out.advice


def test_layer_stats_keep_split_halves():
    import torch

    s = LayerStats.empty(4)
    s.update(torch.tensor([[0, 1]]), torch.tensor([[0.6, 0.4]]), None, half=0)
    s.update(torch.tensor([[2, 1]]), torch.tensor([[0.5, 0.5]]), None, half=1)
    assert torch.allclose(s.half_mass.sum(0), s.gate_mass)
    assert s.half_mass[1, 2] == 0.5 and s.half_mass[0, 2] == 0
