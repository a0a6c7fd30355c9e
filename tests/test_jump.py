"""The task-jump manager on hand-made signatures: it recognises tasks, jumps on long blocks, holds the global
set when tasks change at every request, and moves at most max_swap experts per layer."""

import numpy as np

from lightmoe_cli.policies.jump import TaskJump, moves_toward

E = 8


def _manager():
    sig = {"a": {0: np.array([.3, .3, .2, .2, 0, 0, 0, 0])}, "b": {0: np.array([0, 0, 0, 0, .2, .2, .3, .3])},
           "c": {0: np.array([0, .25, .25, 0, 0, .25, .25, 0])}}
    sets = {"a": {0: [0, 1, 2, 3]}, "b": {0: [4, 5, 6, 7]}, "c": {0: [1, 2, 5, 6]}}
    return TaskJump(sig, sets, global_set={0: [1, 2, 5, 6]}), sig


def test_recognises_the_task_of_the_demand():
    m, sig = _manager()
    for t in ("a", "b", "c"):
        assert m.recognise({0: sig[t][0] * 100 + 0.1}) == t


def test_jumps_on_long_blocks_and_holds_global_when_tasks_alternate():
    m, sig = _manager()
    current = {0: {1, 2, 5, 6}}
    decisions = [m.decide({0: sig["a"][0] * 50}, 50, current) for _ in range(6)]
    assert decisions[-1].target == "a" and decisions[-1].p_stay > 0.7
    m2, _ = _manager()
    held = {0: {0, 1, 2, 3}}  # a task set left over
    targets = []
    for i in range(12):
        d = m2.decide({0: sig["ab"[i % 2]][0] * 50}, 50, held)
        targets.append(d.target)
    assert targets[-1] == "global" and m2.history[-1].p_stay < 0.2


def test_too_little_demand_decides_nothing():
    m, sig = _manager()
    assert m.decide({0: sig["a"][0]}, 3, {0: {1, 2, 5, 6}}) is None


def test_moves_are_bounded_and_ordered_by_priority():
    prio = np.arange(E, dtype=float)
    evict, load = moves_toward({0, 1, 2, 3}, [4, 5, 6, 7], prio, max_swap=2)
    assert evict == [0, 1] and load == [7, 6]
    evict, load = moves_toward({0, 1, 2, 3}, [4, 5, 6, 7], prio, max_swap=None)
    assert sorted(load) == [4, 5, 6, 7] and sorted(evict) == [0, 1, 2, 3]
