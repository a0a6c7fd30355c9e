"""Activation budgets at run time: fewer experts per token, applied to the final routing in the routing hook.

- a per-layer k (topk, lexi, alloc) truncates every token's picks to its k highest-weighted ones: the experts
  call then gets (T, k) ids, so the kernel computes less;
- per-token rules drop some of a token's picks: NAEE (`beta`: a pick with w_i < beta x w_1 goes) and Alloc-T
  (`pooled_base`: every token keeps its first picks, the layer's remaining T x (k - base) slots go to the highest
  scores of the whole forward). A dropped pick gets weight 0 and the kernels' "no expert" sentinel id, which
  transformers' grouped_mm skips (no GEMM rows) once the experts module is marked `_is_expert_parallel`.
Weights follow the model's own convention: a router that renormalises its top-k (`norm_topk_prob`, Mixtral)
renormalises over the picks kept, one that does not keeps the raw probabilities, as the same model with a
smaller top-k would.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class LayerActivation:
    k: int  # picks kept per token in this layer (the cap; per-token rules keep fewer)
    renormalise: bool = True
    beta: float | None = None  # NAEE threshold on w_i / w_1
    pooled_base: int | None = None  # Alloc-T: picks every token keeps before the pooled ones

    @property
    def per_token(self) -> bool:
        return self.beta is not None or self.pooled_base is not None

    def apply(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx, w, _ = self.select(index, weights)
        return idx, w

    def select(self, index: torch.Tensor, weights: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(T, K) ids and weights -> (T, k) ids, weights (dropped picks 0, the rest renormalised as the router
        does) and the (T, k) dropped mask of per-token rules (None when every kept pick runs)."""
        # a per-layer k truncates; Alloc-T pools over every token's remaining candidates, so it keeps all K
        width = index.shape[-1] if self.pooled_base is not None else self.k
        order = weights.argsort(dim=-1, descending=True)[..., :width]
        idx, w = index.gather(-1, order), weights.gather(-1, order)
        dropped = None
        if self.beta is not None:
            dropped = w < self.beta * w[..., :1]
        elif self.pooled_base is not None:
            t = w.reshape(-1, w.shape[-1]).shape[0]
            flat = w.reshape(t, -1)
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[:, : self.pooled_base] = True
            pool = t * max(0, self.k - self.pooled_base)
            if pool:
                rest = flat.masked_fill(keep, float("-inf")).reshape(-1)
                keep.reshape(-1)[rest.topk(min(pool, rest.numel())).indices] = True
            dropped = ~keep.reshape(w.shape)
        if dropped is not None:
            dropped[..., 0] = False  # the first pick always runs
            w = w.masked_fill(dropped, 0.0)
        if self.renormalise and (dropped is not None or index.shape[-1] > self.k):
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        return idx, w, dropped
