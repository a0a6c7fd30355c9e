"""Residency outlook: before any bundle is built, how much of each task's routing a memory budget can hold.

Per budget: the share of each task's router gate mass that lands on (a) one global resident set chosen on all
tasks' mass (what static pruning keeps) and (b) the task's own set at the same per-layer slot counts (what a
task-aware runtime can reach), both in-sample and on the held-out half of the calibration tokens (sets chosen
on the even batches, measured on the odd ones and vice versa). The gap between (b) and (a), held out, is what
task-aware residency can win; the experts' mutual similarity says whether redirecting can matter. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmoe_cli.policies.resident import allocate_slots, mean_covered_share, select_residents

PAYS_OFF = 0.05  # held-out coverage gain (share of gate mass) from which task-aware residency is worth it
SIMILAR = 0.5  # output cosine a redirect target must reach (the outlook's threshold)
REDIRECT_MATTERS = 0.10  # share of the missed gate mass redirect must reach to be worth measuring


@dataclass
class OutlookRow:
    budget: float
    slots: int
    global_coverage: float  # mean over tasks and layers, in-sample
    task_coverage: float
    global_coverage_heldout: float  # split-half
    task_coverage_heldout: float
    redirect_reach: float | None = None  # share of the missing experts' gate mass a redirect could serve


    @property
    def heldout_gain(self) -> float:
        return self.task_coverage_heldout - self.global_coverage_heldout


@dataclass
class Outlook:
    rows: list[OutlookRow]
    mean_similarity: float | None  # mean off-diagonal output cosine between experts, over layers
    advice: str


def redirect_reach(mass: dict[int, np.ndarray], resident: dict[int, list[int]], similarity: dict[int, np.ndarray],
                   threshold: float) -> float:
    """Share of the gate mass of NON-resident experts whose most similar resident reaches `threshold`: how much
    of what a resident set misses similarity redirection could serve at all (mean over layers; 0 if nothing is
    missed)."""
    shares = []
    for li in sorted(mass):
        m, keep = np.asarray(mass[li], dtype=np.float64), list(resident[li])
        missing = np.setdiff1d(np.arange(len(m)), keep)
        if not len(missing) or m[missing].sum() <= 0:
            continue
        best = np.asarray(similarity[li])[np.ix_(missing, keep)].max(axis=1)
        shares.append(float(m[missing][best >= threshold].sum() / m[missing].sum()))
    return float(np.mean(shares)) if shares else 0.0


def _row(budget: float, task_mass: dict, task_halves: dict, top_k: dict[int, int],
         similarity: dict[int, np.ndarray] | None = None, threshold: float = SIMILAR) -> OutlookRow:
    layers = sorted(top_k)
    n_experts = sum(len(next(iter(task_mass.values()))[li]) for li in layers)
    floor = max(top_k.values())
    slots_total = max(floor * len(layers), int(round(budget * n_experts)))
    total = {li: sum(m[li] for m in task_mass.values()) for li in layers}
    slots = allocate_slots(total, slots_total, min_per_layer=floor)
    glob = select_residents(total, slots)
    g_in = np.mean([mean_covered_share(m, glob) for m in task_mass.values()])
    t_in = np.mean([mean_covered_share(m, select_residents(m, slots)) for m in task_mass.values()])
    g_out, t_out = [], []
    for h in (0, 1):  # choose on half h, measure on the other
        total_h = {li: sum(halves[li][h] for halves in task_halves.values()) for li in layers}
        glob_h = select_residents(total_h, slots)
        for halves in task_halves.values():
            other = {li: halves[li][1 - h] for li in layers}
            g_out.append(mean_covered_share(other, glob_h))
            t_out.append(mean_covered_share(other, select_residents({li: halves[li][h] for li in layers}, slots)))
    reach = redirect_reach(total, glob, similarity, threshold) if similarity else None
    return OutlookRow(budget, slots_total, float(g_in), float(t_in), float(np.mean(g_out)), float(np.mean(t_out)),
                      reach)


def residency_outlook(task_mass: dict[str, dict[int, np.ndarray]], task_halves: dict[str, dict[int, np.ndarray]],
                      top_k: dict[int, int], similarity: dict[int, np.ndarray] | None,
                      budgets: tuple[float, ...] = (0.25, 0.5, 0.75), threshold: float = SIMILAR) -> Outlook:
    """task_mass[task][layer] (E,) gate mass; task_halves[task][layer] (2, E) the same per split-half;
    similarity[layer] (E, E) output cosine (optional); threshold: the redirect's minimum similarity."""
    rows = [_row(b, task_mass, task_halves, top_k, similarity, threshold) for b in budgets]
    sim = None
    if similarity:
        sim = float(np.mean([(s.sum() - np.trace(s)) / (s.shape[0] * (s.shape[0] - 1)) for s in similarity.values()]))
    mid = rows[len(rows) // 2]
    if mid.heldout_gain >= PAYS_OFF:
        advice = (f"task-aware residency pays off: at {mid.budget:.0%} memory each task's own set holds "
                  f"{mid.task_coverage_heldout:.0%} of its held-out gate mass against "
                  f"{mid.global_coverage_heldout:.0%} for one global set")
    else:
        advice = (f"static pruning is enough: at {mid.budget:.0%} memory a task's own set gains only "
                  f"{mid.heldout_gain:+.1%} held-out gate mass over one global set")
    if mid.redirect_reach is not None and mid.redirect_reach < REDIRECT_MATTERS:
        advice += (f"; redirect would serve {mid.redirect_reach:.0%} of the missed gate mass at similarity >= "
                   f"{threshold:.1f} (mean output cosine {sim:.2f}): missing experts are re-routed as by prune")
    elif mid.redirect_reach is not None:
        advice += (f"; experts alike (mean output cosine {sim:.2f}): redirect at similarity >= {threshold:.1f} "
                   f"could serve {mid.redirect_reach:.0%} of the missed gate mass, but it is off by default "
                   f"(re-routing measured better on both demo models) -- measure it against prune "
                   f"(benchmarks/bench_redirect.py) before turning it on with --min-similarity")
    return Outlook(rows, sim, advice)
