"""`lightmoe simulate`: replay a profile's routing traces through expert caches of several capacities.

The traces (a profile made with --save-traces, best on held-out text) are served as one stream, task after task
(a task-shift stream with long blocks). Every policy starts from the same state -- the frequency-aware resident
set of the statistics profile -- and has the same per-layer capacity, so hit rates compare directly. The
policies are the entries of `SIM_POLICIES`, each a cache rule of `simulate_layer` (or a non-blocking cache of
`simulate_region`, one token per forward) and what it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmoe_cli.analysis.cache_sim import simulate_layer, simulate_region
from lightmoe_cli.policies.region import core_of
from lightmoe_cli.policies.resident import rank_experts, select_residents
from lightmoe_cli.registry import Registry


@dataclass(frozen=True)
class SimPolicy:
    """A simulated serving policy: the cache rule it runs (`simulate_layer`'s) and what it stands for."""

    summary: str
    cache: str | None  # simulate_layer's rule; None: the task's own set, swapped in at each task boundary
    prefetch: bool = False  # also loads the predictor's guesses for the next layer (needs predictions)
    pinned: float | None = None  # a non-blocking cache (`simulate_region`) with this share of slots pinned
    admission: str = "always"  # region caches: simulate_region's admission rule
    spare: int = 0  # region caches: slots per layer kept as the spare row (double buffering), not residents


SIM_POLICIES: Registry[SimPolicy] = Registry("simulation policy")
for _name, _policy in {
    "lru": SimPolicy("demand loading, evicting the least recently used expert", "lru"),
    "lfu": SimPolicy("demand loading, evicting the least frequently used expert", "lfu"),
    "belady": SimPolicy("the offline optimum (evicts the expert needed furthest ahead): the ceiling of every "
                        "policy that loads each miss (one that serves a miss elsewhere, as static does, is not "
                        "bounded by it)", "belady"),
    "static": SimPolicy("the frequency-aware set, never changed (what prune and task-aware's initial set serve; a "
                        "miss is re-routed or redirected, costing accuracy instead of I/O)", "static"),
    "task": SimPolicy("the task's own frequency set, swapped in at each task boundary (task-aware's manager when "
                      "it recognises the task; the swap's loads are counted)", None),
    "predict": SimPolicy("LRU plus prefetch: while layer l runs, the predictor's top-W experts of layer l+1 are "
                         "loaded (MoE-Beyond); needs predictions", "lru", prefetch=True),
    "swap": SimPolicy("the runtime's non-blocking cache (`swap`): a miss is re-routed now and its expert read for "
                      "the next token, evicting any resident by LRU", None, pinned=0.0),
    "pinned": SimPolicy("`swap --pinned 0.75 --admission demand --double-buffer`: the frequency core never "
                        "evicted, a dynamic region admitting by decayed demand, one spare row per layer", None,
                        pinned=0.75, admission="demand", spare=1),
}.items():
    SIM_POLICIES.register(_name, _policy)


@dataclass
class SimulationRow:
    policy: str
    fraction: float
    capacity: int  # experts per layer
    hit_rate: float
    loads_per_token: float  # experts copied in per token, summed over layers
    bytes_per_token: float


def top_sets(mass: dict[int, np.ndarray], capacity: int) -> dict[int, list[int]]:
    """The `capacity` experts with the most gate mass, per layer."""
    return select_residents(mass, {li: capacity for li in mass})


def replay(traces: dict[str, dict[int, np.ndarray]], task_mass: dict[str, dict[int, np.ndarray]],
           num_experts: int, bytes_per_expert: float, fractions: list[float], policies: list[str],
           predicted: dict[str, dict[int, np.ndarray]] | None = None) -> list[SimulationRow]:
    """traces[task][layer] (T, K) picks in token order; task_mass[task][layer] (E,) the statistics profile's
    gate mass (sets are chosen on it, never on the traces); predicted[task][layer] (T, W) the experts a predictor
    names for each token of that layer (policy `predict`; layers without predictions get none). Pure."""
    unknown = [p for p in policies if p not in SIM_POLICIES]
    if unknown:
        raise ValueError(f"unknown simulation policy {unknown[0]!r}; policies: {', '.join(SIM_POLICIES)}")
    needs = [p for p in policies if SIM_POLICIES.get(p).prefetch]
    if needs and not predicted:
        raise ValueError(f"policy {needs[0]!r} needs predictions (a trained predictor)")
    tasks = [t for t in traces if t in task_mass] or list(traces)
    layers = sorted(next(iter(traces.values())))
    total_mass = {li: sum(np.asarray(task_mass[t][li], dtype=np.float64) for t in task_mass) for li in layers}
    stream = {li: np.concatenate([traces[t][li] for t in tasks]) for li in layers}
    tokens = sum(len(traces[t][layers[0]]) for t in tasks)
    rows = []
    for f in fractions:
        cap = max(1, int(round(f * num_experts)))
        start = top_sets(total_mass, cap)
        for policy in policies:
            sim = SIM_POLICIES.get(policy)
            hits = accesses = loads = 0
            if sim.pinned is not None:
                for li in layers:
                    ranked = [int(e) for e in rank_experts(total_mass[li])[:max(1, cap - sim.spare)]]
                    r = simulate_region(stream[li][:, None, :], num_experts, ranked,
                                        core_of(ranked, len(ranked), sim.pinned), admission=sim.admission,
                                        max_inflight=sim.spare or None)
                    hits, accesses, loads = hits + r.hits, accesses + r.accesses, loads + r.loads
            elif sim.cache is None:
                own = {t: top_sets(task_mass[t], cap) if t in task_mass else start for t in tasks}
                for li in layers:
                    current = set(start[li])
                    for t in tasks:
                        loads += len(set(own[t][li]) - current)
                        current = set(own[t][li])
                        r = simulate_layer(traces[t][li], num_experts, cap, "static", initial=own[t][li])
                        hits, accesses = hits + r.hits, accesses + r.accesses
            else:
                for li in layers:
                    ahead = None
                    if sim.prefetch and all(li in predicted.get(t, {}) for t in tasks):
                        ahead = np.concatenate([predicted[t][li] for t in tasks])
                    r = simulate_layer(stream[li], num_experts, cap, sim.cache, initial=start[li], prefetch=ahead)
                    hits, accesses, loads = hits + r.hits, accesses + r.accesses, loads + r.loads
            rows.append(SimulationRow(policy, f, cap, hits / max(1, accesses), loads / max(1, tokens),
                                      loads * bytes_per_expert / max(1, tokens)))
    return rows
