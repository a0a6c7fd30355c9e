"""Predictor-driven prefetch for a background-loading runtime (the `predict` policy, MoE-Beyond).

While layer l computes, the predictor reads the router inputs of this forward's tokens at layer l (with the
previous ones as causal context, a rolling window) and scores the experts of layer l+1; of the `width` experts with
the most summed score, those not resident, predicted at least `confidence` likely (mean over the forward's tokens)
and affordable under the byte budget per token (`policies.region.PrefetchBudget`) are read on the background
loader. A guess that lands in time is a hit instead of a re-routed pick; a wrong one costs a read and, when
installed, a slot: the strategies count both (`prefetch_reads`, `prefetch_hits`).
"""

from __future__ import annotations

import torch

from lightmoe_cli.policies.region import PrefetchBudget


class Prefetcher:
    def __init__(self, predictor, width: int, loader, strategies: dict[int, object],
                 budget: PrefetchBudget | None = None):
        """predictor: an ExpertPredictor; strategies: layer index -> its Background strategy; budget: bytes per
        token and confidence (None: every top-`width` guess, unbounded)."""
        self.predictor, self.width, self.loader, self.strategies = predictor, width, loader, strategies
        self.budget = budget or PrefetchBudget(None)
        self.context: dict[int, torch.Tensor] = {}  # source layer -> (<= max_len, H) recent router inputs
        self.requested = 0  # prefetch reads queued
        self.handles: list = []  # the hooks on the source layers (set by the runtime that installs them)

    @torch.no_grad()
    def on_input(self, pair: int, hidden: torch.Tensor) -> None:
        src, dst = self.predictor.cfg.pairs[pair]
        rows = hidden.reshape(-1, hidden.shape[-1]).detach().float().cpu()
        past = self.context.get(src)
        window = rows if past is None else torch.cat([past, rows])
        window = window[-self.predictor.cfg.max_len:]
        self.context[src] = window
        probs = torch.sigmoid(self.predictor(window[None], torch.tensor([pair]))[0, -len(rows):]).mean(0)  # (E,)
        self.budget.earn(len(rows) / len(self.predictor.cfg.pairs))  # a token's credit spread over the pairs
        target = self.strategies[dst]
        missing = (target.slot_of.cpu() < 0).numpy()
        for e in self.budget.choose(probs.numpy(), missing, self.width):
            if not self.budget.affordable():
                break
            if target.want(e, prefetch=True):
                self.budget.pay()
                self.requested += 1

    def reset(self) -> None:
        """A new request: the previous one's tokens are no context for it."""
        self.context = {}
