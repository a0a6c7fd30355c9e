"""Activation budgets at run time: fewer experts per token, applied to the final routing in the routing hook.

A per-layer k (topk, lexi, alloc-L) truncates every token's picks to its k highest-weighted ones: the experts
call then gets (T, k) ids, so the kernel really computes less. Weights follow the model's own convention: a
router that renormalises its top-k (`norm_topk_prob`, Mixtral) renormalises over the k kept, one that does not
keeps the raw probabilities, exactly as the same model with top-k = k would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerActivation:
    k: int  # picks kept per token in this layer
    renormalise: bool = True

    def apply(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, K) ids and weights -> (T, k), highest weights first."""
        if index.shape[-1] <= self.k:
            return index, weights
        order = weights.argsort(dim=-1, descending=True)[..., : self.k]
        idx, w = index.gather(-1, order), weights.gather(-1, order)
        if self.renormalise:
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        return idx, w
