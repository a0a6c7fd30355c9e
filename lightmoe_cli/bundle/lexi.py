"""LExI's data-free measurement: how much each MoE layer's output changes when tokens keep only k of their K
experts, on Gaussian inputs at the scale the layer sees (its input norm's weight), no data needed.

Delta_l(k) = ||Y_k - Y_K||_F / sqrt(N), averaged over repetitions, where Y_k is the layer's routed output when
each token keeps its k highest-weighted picks (weights renormalised as the router does)."""

from __future__ import annotations

import torch

NORM_NAMES = ("post_attention_layernorm", "pre_feedforward_layernorm", "ffn_norm", "post_attention_norm")


def _input_scale(model, layer) -> torch.Tensor | float:
    """The MoE block's input is the output of the decoder layer's pre-FFN norm: its weight is the per-channel
    scale of that input (RMSNorm output = weight x unit-RMS vector)."""
    path = layer.path.rsplit(".", 1)[0]  # the decoder layer that holds the MoE block
    decoder = model.get_submodule(path)
    for name in NORM_NAMES:
        norm = getattr(decoder, name, None)
        w = getattr(norm, "weight", None) if norm is not None else None
        if isinstance(w, torch.Tensor) and w.ndim == 1:
            return w.detach().float()
    return 1.0


def _routed_output(w: torch.Tensor, contrib: torch.Tensor, k: int, renorm: bool) -> torch.Tensor:
    """(N, H) the layer's output when each token keeps its first k picks. w: (N, K) sorted, contrib: (N, K, H)."""
    wk = w[:, :k]
    if renorm:
        wk = wk / wk.sum(-1, keepdim=True).clamp_min(1e-12)
    return (wk[..., None] * contrib[:, :k]).sum(1)


@torch.no_grad()
def lexi_deltas(model, adapter, layers, tokens: int = 256, repetitions: int = 3, seed: int = 0
                ) -> dict[int, dict[int, float]]:
    """Delta[layer][k] for k in 1..K (Delta[layer][K] = 0)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[int, dict[int, float]] = {}
    for m in layers:
        param = next(m.experts.parameters())
        hidden = getattr(model.config, "hidden_size", None) or param.shape[-1]
        scale = _input_scale(model, m)
        renorm = bool(getattr(m.router, "norm_topk_prob", True))
        sums = {k: 0.0 for k in range(1, m.top_k + 1)}
        for _ in range(repetitions):
            x = torch.randn(tokens, hidden, generator=gen) * scale
            x = x.to(param.device, param.dtype)
            routed = m.router(x)
            weights, index = routed[1].float(), routed[2]
            order = weights.argsort(-1, descending=True)
            weights, index = weights.gather(-1, order), index.gather(-1, order)
            contrib = torch.zeros(tokens, m.top_k, hidden)  # (N, K, H) each pick's expert output
            for e in index.unique().tolist():
                if e >= m.num_experts:
                    continue
                rows, ranks = (index == e).nonzero(as_tuple=True)
                contrib[rows, ranks] = adapter.run_expert(m, e, x[rows]).float().cpu()
            w = weights.cpu()
            full = _routed_output(w, contrib, m.top_k, renorm)
            for k in sums:
                sums[k] += float((_routed_output(w, contrib, k, renorm) - full).norm()) / tokens ** 0.5
        out[m.layer_index] = {k: v / repetitions for k, v in sums.items()}
    return out
