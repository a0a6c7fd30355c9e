"""The pure part of `lightmoe tune`: the grid of candidates, the successive-halving schedule, the Pareto frontier
and the choice among the finalists. Plain numbers in, plain numbers out: no torch, no files, no printing.

Why successive halving and not a sampler (Optuna): the grid is small and categorical (a few policies x activation
rules x one or two parameter values), and what costs is the evidence per candidate (documents scored), not the
number of points. Halving spends few documents on every candidate and many on the few that stay, which is exactly
what a small categorical grid needs; a Bayesian sampler would need more trials than the grid has.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

TIE_NATS = 1e-4  # NLL increases this close are equal (the same routing served two ways)
SPEED_NOISE = 0.05  # decode speeds this close are equal (timing noise on a shared machine)


@dataclass(frozen=True)
class Candidate:
    """One point of the grid: a residency policy with its parameters, a resident budget (fraction of the
    expert weights) and an activation rule (None: the model's own top-k) with its kept share."""

    policy: str
    budget: float
    activation: str | None = None
    active: float = 1.0
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        extra = f"({','.join(str(v) for _, v in self.params)})" if self.params else ""
        act = f" {self.activation}@{self.active:g}" if self.activation else ""
        return f"{self.policy}{extra} {self.budget:.0%}{act}"

    @property
    def build_key(self) -> tuple:
        """Candidates with the same key share one bundle (the activation rule is applied when it is served)."""
        return self.policy, self.budget, self.params

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "policy": self.policy, "budget": self.budget, "activation": self.activation,
                "active": self.active, "params": dict(self.params)}


@dataclass
class Figures:
    """What was measured of a candidate: NLL increase over the full model per rung (documents scored), and
    decode speed once it is a finalist. `dropped` says why it left the search (None: still in, or the pick)."""

    candidate: Candidate
    nll_increase: dict[int, float] = field(default_factory=dict)  # documents scored -> nats/token over full
    decode_tps: float | None = None
    memory_bytes: float = 0.0  # non-expert weights + resident experts
    dropped: str | None = None
    moving_parts: int = 0  # 0: static serving; 1: a manager swaps or experts load at run time (a tie goes to 0)

    @property
    def evidence(self) -> int:
        return max(self.nll_increase, default=0)

    @property
    def nll(self) -> float | None:
        """The NLL increase on the most documents it was scored on."""
        return self.nll_increase[self.evidence] if self.nll_increase else None

    def to_json(self) -> dict[str, Any]:
        return {**self.candidate.to_json(), "nll_increase": {str(k): v for k, v in self.nll_increase.items()},
                "decode_tps": self.decode_tps, "memory_bytes": self.memory_bytes, "dropped": self.dropped}


def grid(policies: dict[str, list[dict[str, Any]]], budgets: list[float],
         activations: list[tuple[str | None, float]], per_token_refused: set[str] = frozenset(),
         per_token_rules: set[str] = frozenset()) -> list[Candidate]:
    """Every policy x its parameter settings x budget x activation rule; a per-token activation rule is left out
    for the policies that refuse it (`per_token_refused`)."""
    out = []
    for policy, settings in policies.items():
        for params in settings or [{}]:
            for b in budgets:
                for rule, active in activations:
                    if rule in per_token_rules and policy in per_token_refused:
                        continue
                    out.append(Candidate(policy, b, rule, active if rule else 1.0, tuple(sorted(params.items()))))
    return out


def interleave(counts: dict[str, int], block: int | None) -> list[tuple[int, int, str, int]]:
    """The order of a task-shift stream that uses every document once: (run, position in run, task, document
    index), runs of `block` documents of one task (None: all of a task's at once), tasks in turn (sorted), a
    task whose documents are used up skipped."""
    taken = dict.fromkeys(sorted(counts), 0)
    out: list[tuple[int, int, str, int]] = []
    run = 0
    while any(taken[t] < counts[t] for t in taken):
        for t in taken:
            n = min(block or counts[t], counts[t] - taken[t])
            for pos in range(n):
                out.append((run, pos, t, taken[t] + pos))
            if n:
                taken[t] += n
                run += 1
    return out


def rungs(n_candidates: int, n_docs: int, eta: int = 4, finalists: int = 2, min_docs: int = 1) -> list[tuple[int, int]]:
    """The successive-halving schedule: (candidates kept, documents scored) per rung. The last rung scores
    `finalists` or fewer on every document; each earlier rung keeps `eta` times more candidates on `eta` times
    fewer documents (at least `min_docs`). A single rung when the grid is already small."""
    if n_candidates <= finalists:
        return [(n_candidates, n_docs)]
    steps = max(1, math.ceil(math.log(n_candidates / finalists, eta)))
    out = []
    for r in range(steps + 1):
        keep = n_candidates if r == 0 else max(finalists, math.ceil(n_candidates / eta ** r))
        docs = max(min(min_docs, n_docs), n_docs // eta ** (steps - r))
        out.append((min(keep, n_candidates), docs))
    out[-1] = (min(finalists, n_candidates), n_docs)
    return out


def keep_best(scores: dict[Candidate, float], k: int) -> list[Candidate]:
    """The `k` lowest NLL increases; ties broken by the smaller budget, then fewer active experts (cheaper)."""
    return sorted(scores, key=lambda c: (scores[c], c.budget, c.active, c.name))[:k]


def pareto_front(points: list[tuple[float, float, float]]) -> list[int]:
    """Indices of the points no other point dominates, for (memory, nll_increase, decode_tps): less memory,
    lower NLL increase and higher speed are better; a point is dominated when another is no worse on all three
    and better on one."""
    front = []
    for i, (m, n, s) in enumerate(points):
        dominated = any(m2 <= m and n2 <= n and s2 >= s and (m2 < m or n2 < n or s2 > s)
                        for j, (m2, n2, s2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def choose(finalists: list[Figures], min_decode_tps: float | None = None,
           max_nll_increase: float | None = None) -> tuple[Figures | None, str]:
    """The pick and why. With a speed target: the lowest NLL increase among those that reach it; with an NLL
    target: the fastest among those within it; else the lowest NLL increase (ties: the faster). None when no
    finalist meets the target (the reason says by how far)."""
    done = [f for f in finalists if f.nll is not None and math.isfinite(f.nll)]
    if not done:
        return None, "no configuration could be built at this memory"
    if min_decode_tps is not None:
        ok = [f for f in done if (f.decode_tps or 0.0) >= min_decode_tps]
        if not ok:
            best = max((f.decode_tps or 0.0) for f in done) if done else 0.0
            return None, f"no configuration reaches {min_decode_tps:g} tokens/s (the fastest measured: {best:.1f})"
        pick = min(ok, key=lambda f: (f.nll, -(f.decode_tps or 0.0)))
        return pick, (f"lowest held-out NLL increase ({pick.nll:+.3f} nats/token) among the configurations "
                      f"decoding at >= {min_decode_tps:g} tokens/s ({pick.decode_tps:.1f})")
    if max_nll_increase is not None:
        ok = [f for f in done if f.nll <= max_nll_increase]
        if not ok:
            best = min(f.nll for f in done) if done else math.inf
            return None, (f"no configuration stays within {max_nll_increase:g} nats/token of the full model "
                          f"(the best measured: {best:+.3f})")
        pick = max(ok, key=lambda f: (f.decode_tps or 0.0, -f.nll))
        return pick, (f"fastest decode ({pick.decode_tps or 0:.1f} tokens/s) among the configurations within "
                      f"{max_nll_increase:g} nats/token of the full model ({pick.nll:+.3f})")
    best = min(f.nll for f in done)
    tied = [f for f in done if f.nll - best <= TIE_NATS]
    fastest = max((f.decode_tps or 0.0) for f in tied)
    # among equal NLL: clearly faster first, then the simpler serving (no manager, no run-time loads), then faster
    pick = min(tied, key=lambda f: ((f.decode_tps or 0.0) < fastest / (1 + SPEED_NOISE), f.moving_parts,
                                    -(f.decode_tps or 0.0)))
    why = f"lowest held-out NLL increase ({pick.nll:+.3f} nats/token over the full model)"
    if len(tied) > 1:
        others = ", ".join(f.candidate.name for f in tied if f is not pick)
        why += (f"; tied with {others} (within {TIE_NATS:g} nats/token): the simpler serving wins unless another "
                f"decodes over {SPEED_NOISE:.0%} faster")
    return pick, why


def advice(scores: dict[str, float], block: int | None, managed: str = "task-aware",
           static: str = "prune") -> str:
    """One line on whether task-aware residency pays off, from the best NLL increase of the managed policy and of
    static pruning on the scored traffic (`block`: requests per task run; None: each task in one run)."""
    if managed not in scores or static not in scores:
        return "only one kind of residency was measured: re-run with both task-aware and prune in --policies"
    gain = scores[static] - scores[managed]
    traffic = f"traffic that changes task every {block} request(s)" if block else "traffic in long task runs"
    if gain > 0.01:
        return (f"task-aware residency pays off on {traffic}: {gain:.3f} nats/token better than static pruning; "
                "it needs traffic that stays on one task for several requests (re-check with --traffic blocks:N)")
    return (f"task-aware residency does not pay off on {traffic} ({gain:+.3f} nats/token vs static pruning): "
            "serve a static resident set unless your traffic stays on one task for many requests")


def payoff_block(managed: dict[int, float], static: float, margin: float = 0.01) -> int | None:
    """The shortest run length (requests per task) from which the managed policy's NLL increase beats static
    pruning's by more than `margin`, at that length and at every longer one measured; None if it never does."""
    found = None
    for block in sorted(managed, reverse=True):
        if static - managed[block] <= margin:
            break
        found = block
    return found


def sweep_advice(managed: dict[int, float], static: float) -> str:
    """One line from task-aware's NLL increase per run length (`managed`: requests per task -> nats/token) against
    static pruning's (`static`, which has no state, so one figure serves every run length)."""
    longest, shortest = max(managed), min(managed)
    block = payoff_block(managed, static)
    gain = {b: round(static - v, 3) + 0.0 for b, v in managed.items()}  # + 0.0: no "-0.000"
    if block is None:
        return (f"task-aware residency does not pay off on runs of up to {longest} requests per task "
                f"({gain[longest]:+.3f} nats/token vs static pruning at {longest}): serve a static "
                "resident set")
    if block == shortest:
        return (f"task-aware residency pays off even when the task changes every {block} request(s) "
                f"({gain[block]:.3f} nats/token better than static pruning)")
    return (f"task-aware residency pays off only if your traffic stays on one task for {block}+ requests "
            f"({gain[block]:.3f} nats/token better than static pruning at {block}, "
            f"{gain[shortest]:+.3f} at {shortest})")
