"""Predictor-driven prefetch for a background-loading runtime (the `predict` policy, MoE-Beyond).

While layer l computes, the predictor reads the router inputs of this forward's tokens at layer l (with the
previous ones as causal context, a rolling window) and scores the experts of layer l+1; the `width` experts with
the most summed score that are not resident are queued on the background loader. A guess that lands in time is a
hit instead of a re-routed pick; a wrong one costs a read and, when installed, a slot.
"""

from __future__ import annotations

import torch


class Prefetcher:
    def __init__(self, predictor, width: int, loader, strategies: dict[int, object]):
        """predictor: an ExpertPredictor; strategies: layer index -> its Background strategy."""
        self.predictor, self.width, self.loader, self.strategies = predictor, width, loader, strategies
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
        scores = torch.sigmoid(self.predictor(window[None], torch.tensor([pair]))[0, -len(rows):]).sum(0)
        target = self.strategies[dst]
        missing = (target.slot_of.cpu() < 0)
        ranked = [int(e) for e in torch.argsort(scores, descending=True)[:self.width] if bool(missing[e])]
        for e in ranked:
            self.requested += self.loader.request(dst, e)

    def reset(self) -> None:
        """A new request: the previous one's tokens are no context for it."""
        self.context = {}
