"""The LightMoE runtime manager's decision rule: swap experts coarsely when the task changes, never per token.

The router stays whole at run time, so every token tells us which experts it wanted (demand) even when they
are not resident. The manager keeps the gate mass of that demand over a sliding window of tokens. When the
share of demanded mass that missed the resident set stays above `miss_threshold` for a whole window, the task
has shifted: it replaces up to `max_swap` of the least-wanted residents with the most-wanted missing experts,
then waits `cooldown_tokens` before it may swap again. Decisions are taken only at check points (a request
boundary or every `check_every` tokens), so the cost is bounded and predictable.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ManagerParams:
    window_tokens: int = 256
    miss_threshold: float = 0.25  # share of demanded gate mass outside the resident set
    max_swap: int = 4  # experts replaced per layer per decision
    cooldown_tokens: int = 512
    check_every: int = 64  # tokens between check points (plus every request boundary)
    mode: str = "incremental"  # "incremental" (this module's LayerManager) or "jump" (policies/jump.py)
    margin: float = 0.02  # jump: expected-coverage gain a move must bring over holding the current set


@dataclass(frozen=True)
class Swap:
    token: int  # manager clock when decided
    evict: list[int]
    load: list[int]


@dataclass
class LayerManager:
    """Demand bookkeeping and swap decisions for one MoE layer."""

    num_experts: int
    resident: set[int]
    params: ManagerParams = field(default_factory=ManagerParams)
    tokens_seen: int = 0
    last_swap: int = -(10**9)
    _window: deque = field(default_factory=deque)  # of (tokens, (E,) mass)
    _window_tokens: int = 0

    def observe(self, demand_mass: np.ndarray, tokens: int) -> None:
        """demand_mass: (E,) router weight summed over `tokens` new tokens, resident or not."""
        self._window.append((tokens, np.asarray(demand_mass, dtype=np.float64)))
        self._window_tokens += tokens
        self.tokens_seen += tokens
        while self._window and self._window_tokens - self._window[0][0] >= self.params.window_tokens:
            self._window_tokens -= self._window.popleft()[0]

    def window_demand(self) -> np.ndarray:
        total = np.zeros(self.num_experts)
        for _, m in self._window:
            total += m
        return total

    def miss_share(self) -> float:
        d = self.window_demand()
        return float(d[[e for e in range(self.num_experts) if e not in self.resident]].sum() / d.sum()) \
            if d.sum() > 0 else 0.0

    def decide(self) -> Swap | None:
        """At a check point: a swap if the window is full, misses are high and the cool-down has passed."""
        p = self.params
        if self._window_tokens < p.window_tokens or self.tokens_seen - self.last_swap < p.cooldown_tokens:
            return None
        if self.miss_share() <= p.miss_threshold:
            return None
        d = self.window_demand()
        missing = sorted((e for e in range(self.num_experts) if e not in self.resident), key=lambda e: (-d[e], e))
        residents = sorted(self.resident, key=lambda e: (d[e], e))
        evict, load = [], []
        for new, old in zip(missing[: p.max_swap], residents, strict=False):
            if d[new] <= d[old]:
                break
            evict.append(old)
            load.append(new)
        if not load:
            return None
        self.resident -= set(evict)
        self.resident |= set(load)
        self.last_swap = self.tokens_seen
        return Swap(self.tokens_seen, evict, load)


def nearest_signature(demand: np.ndarray, signatures: dict[str, np.ndarray]) -> str:
    """The task whose calibration expert distribution is closest (cosine) to the observed demand."""
    d = np.asarray(demand, dtype=np.float64)
    d = d / (np.linalg.norm(d) or 1.0)

    def score(sig: np.ndarray) -> float:
        s = np.asarray(sig, dtype=np.float64)
        return float(d @ (s / (np.linalg.norm(s) or 1.0)))

    return max(sorted(signatures), key=lambda name: score(signatures[name]))
