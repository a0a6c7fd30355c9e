"""Replaced experts as base weights + an expert-specific low-rank term, for training and for serving.

A replaced expert e keeps its router id. Its projections are W_base + A @ B, where W_base is a row of the experts
module (the kept base expert, or e itself for LoRA on a kept expert) and A (out, r), B (r, in) are its own
factors, initialised from a truncated SVD of (W_e - W_base). The SwiGLU is nonlinear, so the term cannot be added
to the base expert's output: each replaced expert runs x W_base^T + (x B^T) A^T per projection, never building
W_base + A B (no full weights are materialised).

Supported: experts modules with fused `gate_up_proj` (E, 2I, H) and `down_proj` (E, H, I) and an `act_fn`
(Qwen2/3-MoE, OLMoE, Mixtral, DeepSeek-V2/V3 in transformers 5), no biases.
"""

from __future__ import annotations

import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError

PROJECTIONS = ("gate_up_proj", "down_proj")


def check_supported(experts: nn.Module, where: str) -> None:
    ok = all(isinstance(getattr(experts, p, None), torch.Tensor) and getattr(experts, p).ndim == 3
             for p in PROJECTIONS) and hasattr(experts, "act_fn") \
        and not getattr(experts, "is_transposed", False) \
        and not any(hasattr(experts, f"{p}_bias") for p in PROJECTIONS)
    if not ok:
        raise LightMoEError(f"{where}: expert replacing needs experts with fused gate_up_proj/down_proj and no biases "
                            f"({type(experts).__name__} differs): use --policy prune or lightmoe for this model")


def svd_factors(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (out, r), B (r, in) with A @ B the best rank-r approximation of `delta` (out, in); singular values are
    split evenly so both factors train at the same scale."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    root = s[:rank].sqrt()
    a, b = u[:, :rank] * root, root[:, None] * vh[:rank]
    if a.shape[1] < rank:  # a rank above the matrix's: the extra directions start at zero
        a = torch.cat([a, a.new_zeros(a.shape[0], rank - a.shape[1])], 1)
        b = torch.cat([b, b.new_zeros(rank - b.shape[0], b.shape[1])], 0)
    return a.contiguous(), b.contiguous()


class Factors(nn.Module):
    """The low-rank factors of the replaced experts of one layer, stacked: ids[j] is the router id of row j."""

    def __init__(self, ids: list[int], hidden: int, intermediate: int, rank: int, dtype=torch.float32,
                 device="cpu"):
        super().__init__()
        self.ids, self.rank = list(ids), rank
        n = len(ids)
        z = dict(dtype=dtype, device=device)
        self.gate_up_a = nn.Parameter(torch.zeros(n, 2 * intermediate, rank, **z))
        self.gate_up_b = nn.Parameter(torch.zeros(n, rank, hidden, **z))
        self.down_a = nn.Parameter(torch.zeros(n, hidden, rank, **z))
        self.down_b = nn.Parameter(torch.zeros(n, rank, intermediate, **z))
        self.row = {e: j for j, e in enumerate(self.ids)}

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.{n}": p.detach().contiguous() for n, p in self.named_parameters()}

    def load(self, tensors: dict[str, torch.Tensor], prefix: str) -> None:
        with torch.no_grad():
            for n, p in self.named_parameters():
                key = f"{prefix}.{n}"
                if key not in tensors or tensors[key].shape != p.shape:
                    raise LightMoEError(f"low-rank factors {key} missing or of the wrong shape: build the bundle again")
                p.copy_(tensors[key])


def expert_forward(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, act, f: Factors | None = None,
                   j: int = 0) -> torch.Tensor:
    """One expert's SwiGLU on x (T, H); with factors row j, each projection adds its low-rank term."""
    h = x @ gate_up.t()
    if f is not None:
        h = h + (x.to(f.gate_up_b.dtype) @ f.gate_up_b[j].t() @ f.gate_up_a[j].t()).to(h.dtype)
    gate, up = h.chunk(2, dim=-1)
    h = act(gate) * up
    y = h @ down.t()
    if f is not None:
        y = y + (h.to(f.down_b.dtype) @ f.down_b[j].t() @ f.down_a[j].t()).to(y.dtype)
    return y


def replaced_output(experts: nn.Module, hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor,
                    row_of: dict[int, int], factors: Factors | None, alpha: float = 1.0,
                    original: dict[int, int] | None = None) -> torch.Tensor:
    """Sum over the picks of the experts in `row_of` (router id -> row of the experts module holding its base)
    of weight x replacement(x). With alpha < 1 and `original` (router id -> its own row), the output is blended
    from the original expert to the replacement: (1 - alpha) original + alpha replacement (annealing)."""
    out = torch.zeros_like(hidden)
    # only the replaced experts this forward picked (a decode step picks a handful of the layer's many)
    present = torch.unique(index).tolist()
    for e in (e for e in present if e in row_of):
        row = row_of[e]
        tok, pos = torch.where(index == e)
        x = hidden[tok]
        j = factors.row.get(e) if factors is not None else None
        y = expert_forward(x, experts.gate_up_proj[row], experts.down_proj[row], experts.act_fn,
                           factors if j is not None else None, j or 0)
        if alpha < 1.0 and original is not None:
            o = original[e]
            y0 = expert_forward(x, experts.gate_up_proj[o], experts.down_proj[o], experts.act_fn)
            y = alpha * y + (1.0 - alpha) * y0
        out.index_add_(0, tok, (y * weights[tok, pos, None]).to(out.dtype))
    return out
