"""Activation budgets (how many experts a token activates, per layer and per token). Pure: arrays in, k out.

A budget B = round(active x sum_l K_l) is spread over the MoE layers (K_l = the model's top-k of layer l):
- `uniform_split`: every layer floor/ceil of B / L (the `topk` baseline);
- `grouped_knapsack`: Alloc-MoE's layer allocation, the exact DP over per-layer costs S[l][k] (calibration NLL with
  layer l at k): DP[i][b] = min_k DP[i-1][b-k] + S[i][k], subject to sum_l k_l <= B;
- `evolutionary_search`: LExI's search over k vectors with sum_l k_l = B minimising sum_l Delta_l(k_l)
  (population, tournament selection, uniform crossover, +-1 mutations that keep the sum), deterministic per seed;
- `naee_thresholds`: NAEE-style dynamic skipping, a token drops its i-th pick when w_i < beta_l x w_1, beta_l the
  quantile of calibration weight ratios that meets layer l's share of the budget;
- `pooled_token_topk`: Alloc-T inside one forward: every token keeps its top `k_base` picks, the remaining
  T x (K_l - k_base) slots go to the highest routing scores among all tokens' next candidates.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from lightmoe_cli.registry import Registry


def activation_budget(top_k: dict[int, int], active: float) -> int:
    """B = round(active x sum_l K_l); at least one expert per token per layer."""
    total = sum(top_k.values())
    if not (0 < active <= 1):  # also refuses nan
        raise ValueError(f"--active {active} must be a fraction in (0, 1] of the model's activations")
    budget = int(round(active * total))
    if budget < len(top_k):
        raise ValueError(f"--active {active} leaves {budget} activations for {len(top_k)} MoE layers: at least "
                         f"one expert per token per layer needs --active {len(top_k) / total:.3f} or more")
    return budget


def uniform_split(top_k: dict[int, int], budget: int) -> dict[int, int]:
    """Every layer gets floor(B / L), the first (B mod L) layers one more; never above K_l."""
    layers = sorted(top_k)
    base, extra = divmod(budget, len(layers))
    k = {li: min(top_k[li], base + (i < extra)) for i, li in enumerate(layers)}
    spare = budget - sum(k.values())
    for li in layers:  # layers capped at K_l hand their share to the others
        add = min(spare, top_k[li] - k[li])
        k[li] += add
        spare -= add
    return k


def grouped_knapsack(cost: dict[int, dict[int, float]], budget: int) -> dict[int, int]:
    """argmin_k sum_l cost[l][k_l] subject to sum_l k_l <= budget (one choice per layer), exactly."""
    layers = sorted(cost)
    inf = float("inf")
    dp = np.full(budget + 1, inf)  # (B+1,) best cost with that many activations spent so far
    dp[0] = 0.0
    choice = []
    for li in layers:
        new = np.full(budget + 1, inf)
        pick = np.zeros(budget + 1, dtype=np.int64)
        for b in range(budget + 1):
            for k, c in sorted(cost[li].items()):
                if k <= b and dp[b - k] + c < new[b]:
                    new[b], pick[b] = dp[b - k] + c, k
        dp = new
        choice.append(pick)
    if not np.isfinite(dp).any():
        raise ValueError(f"no allocation fits {budget} activations")
    b = int(np.argmin(dp))
    out = {}
    for li, pick in zip(reversed(layers), reversed(choice), strict=True):
        out[li] = int(pick[b])
        b -= out[li]
    return out


def brute_force(cost: dict[int, dict[int, float]], budget: int, exact: bool = False) -> dict[int, int]:
    """The same optimum by enumeration (for tests; `exact`: sum == budget)."""
    layers = sorted(cost)
    best, best_k = float("inf"), None
    for ks in itertools.product(*[sorted(cost[li]) for li in layers]):
        s = sum(ks)
        if (s == budget if exact else s <= budget):
            c = sum(cost[li][k] for li, k in zip(layers, ks, strict=True))
            if c < best:
                best, best_k = c, dict(zip(layers, ks, strict=True))
    return best_k


def evolutionary_search(delta: dict[int, dict[int, float]], budget: int, seed: int = 0, population: int = 32,
                        generations: int = 60, tournament: int = 3, mutation: float = 0.3) -> dict[int, int]:
    """LExI: k vectors with sum == budget, each k_l in 1..K_l, minimising sum_l delta[l][k_l]."""
    layers = sorted(delta)
    lo = np.array([min(delta[li]) for li in layers])
    hi = np.array([max(delta[li]) for li in layers])
    if not lo.sum() <= budget <= hi.sum():
        raise ValueError(f"budget {budget} outside [{lo.sum()}, {hi.sum()}]")
    rng = np.random.default_rng(seed)
    table = [delta[li] for li in layers]

    def fitness(k: np.ndarray) -> float:
        return float(sum(t[int(x)] for t, x in zip(table, k, strict=True)))

    def repair(k: np.ndarray) -> np.ndarray:
        """Clip to bounds, then move +-1 at random layers until the sum is the budget."""
        k = np.clip(k, lo, hi)
        while k.sum() != budget:
            step = 1 if k.sum() < budget else -1
            room = np.flatnonzero(k < hi) if step > 0 else np.flatnonzero(k > lo)
            k[rng.choice(room)] += step
        return k

    def mutate(k: np.ndarray) -> np.ndarray:
        """+1 at one layer and -1 at another: the sum is kept."""
        k = k.copy()
        up, down = np.flatnonzero(k < hi), np.flatnonzero(k > lo)
        if len(up) and len(down):
            i, j = rng.choice(up), rng.choice(down)
            if i != j:
                k[i] += 1
                k[j] -= 1
        return k

    pop = [repair(rng.integers(lo, hi + 1)) for _ in range(population)]
    pop[0] = np.array(list(uniform_split(dict(zip(layers, hi.tolist(), strict=True)), budget).values()))
    scores = [fitness(k) for k in pop]
    for _ in range(generations):
        children = []
        for _ in range(population):
            a, b = (min(rng.choice(population, tournament, replace=False), key=lambda i: scores[i])
                    for _ in range(2))
            mask = rng.random(len(layers)) < 0.5
            child = repair(np.where(mask, pop[a], pop[b]))
            if rng.random() < mutation:
                child = mutate(child)
            children.append(child)
        merged = pop + children  # elitist: the best `population` of parents and children survive
        merged_scores = scores + [fitness(k) for k in children]
        order = sorted(range(len(merged)), key=lambda i: (merged_scores[i], tuple(merged[i])))[:population]
        pop, scores = [merged[i] for i in order], [merged_scores[i] for i in order]
    return {li: int(x) for li, x in zip(layers, pop[0], strict=True)}


def naee_thresholds(weights: dict[int, np.ndarray], top_k: dict[int, int], budget: int) -> dict[int, float]:
    """beta_l per layer: with picks dropped when w_i < beta_l x w_1, the calibration tokens keep on average
    layer l's share of the budget (B x K_l / sum K). weights[l]: (N, K_l) router weights of sampled tokens."""
    total = sum(top_k.values())
    betas = {}
    for li, w in weights.items():
        w = np.sort(np.asarray(w, dtype=np.float64), axis=1)[:, ::-1]  # (N, K) descending
        target = budget * top_k[li] / total  # mean picks kept per token
        ratios = (w[:, 1:] / np.maximum(w[:, :1], 1e-12)).reshape(-1)  # every non-first pick's ratio to w_1
        extra = int(round((target - 1) * w.shape[0]))  # non-first picks that may stay, over all tokens
        if extra <= 0:
            betas[li] = float("inf")  # only the first pick stays
        elif extra >= ratios.size:
            betas[li] = 0.0
        else:
            betas[li] = float(np.sort(ratios)[::-1][extra - 1])
    return betas


def pooled_token_topk(scores: np.ndarray, k_layer: int, k_base: int = 1) -> np.ndarray:
    """Alloc-T for one forward: scores (T, K) routing scores sorted descending per token -> keep mask (T, K):
    every token its first `k_base`, then the T x (k_layer - k_base) highest of all remaining scores."""
    t, k = scores.shape
    keep = np.zeros((t, k), dtype=bool)
    keep[:, :k_base] = True
    pool = t * max(0, k_layer - k_base)
    if pool:
        rest = np.where(keep, -np.inf, scores).reshape(-1)
        top = np.argsort(-rest, kind="stable")[:pool]
        keep.reshape(-1)[top] = True
    return keep


@dataclass
class ActivationPlan:
    """What a bundle records of its activation budget (the manifest's `activation`)."""

    rule: str  # topk | lexi
    active: float  # requested share of the model's activations
    budget: int  # B = round(active x sum_l K_l)
    k: dict[int, int]  # per MoE layer: experts each token activates (the cap, for per-token rules)
    params: dict = field(default_factory=dict)
    beta: dict[int, float] | None = None  # NAEE: per layer, drop pick i when w_i < beta x w_1
    pooled_base: int | None = None  # Alloc-T: picks each token keeps before the layer's pooled slots
    measured: dict = field(default_factory=dict)  # e.g. LExI's Delta table, for the record


class ActivationRule:
    """A way to spread the budget over layers. `measure` needs the model (None: nothing to measure)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    measurement: ClassVar[str | None] = None  # what the builder measures on the model first ("lexi", "alloc")
    per_token: ClassVar[bool] = False  # drops picks per token (a threshold, a pooled budget), not just per layer

    def allocate(self, top_k: dict[int, int], budget: int, measured: dict, seed: int) -> dict[int, int]:
        raise NotImplementedError

    def token_fields(self, top_k: dict[int, int], budget: int, measured: dict) -> dict:
        """Extra ActivationPlan fields of a per-token rule (beta, pooled_base); none by default."""
        return {}


ACTIVATION_RULES: Registry[type[ActivationRule]] = Registry("activation rule", base=ActivationRule)


def _per_layer_k(table: dict) -> dict[int, dict[int, float]]:
    """A measured layer -> k -> value table with int keys (JSON round trips turn them into strings)."""
    return {int(li): {int(k): float(v) for k, v in row.items()} for li, row in table.items()}


def register_rule(cls: type[ActivationRule]) -> type[ActivationRule]:
    """Class decorator: make `cls` available as `--activation cls.name`."""
    return ACTIVATION_RULES.register(cls.name, cls)


@register_rule
class TopK(ActivationRule):
    name = "topk"
    summary = "uniform: every layer floor/ceil of B / L experts per token (the baseline)"

    def allocate(self, top_k, budget, measured, seed):
        return uniform_split(top_k, budget)


@register_rule
class LExI(ActivationRule):
    name = "lexi"
    summary = ("data-free (LExI): per-layer output change Delta_l(k) on Gaussian inputs at the layer's input "
               "scale, then an evolutionary search for the k vector with sum B and the least total change")
    measurement = "lexi"

    def allocate(self, top_k, budget, measured, seed):
        return evolutionary_search(_per_layer_k(measured["delta"]), budget, seed=seed)


@register_rule
class AllocL(ActivationRule):
    name = "alloc"
    summary = ("Alloc-MoE (Alloc-L): calibration NLL with each layer at each k, then the exact grouped-knapsack DP "
               "for the per-layer k with the least summed NLL under the budget")
    measurement = "alloc"

    def allocate(self, top_k, budget, measured, seed):
        return grouped_knapsack(_per_layer_k(measured["sensitivity"]), budget)


@register_rule
class AllocLT(AllocL):
    name = "alloc-t"
    summary = ("Alloc-MoE (Alloc-L + Alloc-T): Alloc-L's per-layer k, and inside a forward every token keeps its "
               "top pick while the layer's other T x (k - 1) slots go to the highest scores of all tokens")

    per_token = True

    def token_fields(self, top_k, budget, measured):
        return {"pooled_base": 1}


@register_rule
class NAEE(ActivationRule):
    name = "naee"
    summary = ("NAEE-style dynamic skipping: a token drops its i-th pick when w_i < beta_l x w_1, beta_l the "
               "calibration quantile that meets the layer's share of the budget")
    measurement = "routing"

    def allocate(self, top_k, budget, measured, seed):
        return dict(top_k)  # every pick may run; the thresholds decide per token

    per_token = True

    def token_fields(self, top_k, budget, measured):
        w = {int(li): np.asarray(v) for li, v in measured["weights"].items()}
        return {"beta": naee_thresholds(w, top_k, budget)}


def plan_activation(rule: str, top_k: dict[int, int], active: float, measured: dict | None = None,
                    seed: int = 0) -> ActivationPlan:
    if rule not in ACTIVATION_RULES:
        raise ValueError(f"unknown --activation {rule!r}; rules: {', '.join(ACTIVATION_RULES)}")
    budget = activation_budget(top_k, active)
    r = ACTIVATION_RULES.get(rule)()
    k = r.allocate(top_k, budget, measured or {}, seed)
    extra = r.token_fields(top_k, budget, measured or {})
    kept = {key: v for key, v in (measured or {}).items() if key != "weights"}  # raw weights are not recorded
    return ActivationPlan(rule, active, budget, k, params={"seed": seed}, measured=kept, **extra)
