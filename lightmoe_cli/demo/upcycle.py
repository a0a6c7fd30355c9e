"""Sparse upcycling: turn a trained dense model into an MoE whose experts all start as copies of its FFN.

Why: many real MoEs (Mixtral, Qwen1.5-MoE) were made this way, and their experts stay far more alike than those of
a model trained from scratch -- the case where redirecting a missing expert to a similar resident one can pay off.
The second demo model is made by this module so the toolkit can measure that case.

Recipe (Komatsuzaki et al., "Sparse Upcycling", 2022; Mixtral-style): every non-FFN weight is copied, every expert
is the dense FFN plus small Gaussian noise (relative to the weight's own standard deviation) so that experts can
drift apart, and the router starts from random weights. With `norm_topk_prob` the renormalised top-k weights sum
to 1, so at noise 0 the MoE computes exactly what the dense model computed.
"""

from __future__ import annotations

import torch


def dense_config_kwargs(moe_kwargs: dict, dense_intermediate: int) -> dict:
    """Config of the dense model of the same family: every layer an MLP of the experts' width.

    Qwen3-MoE's `mlp_only_layers` gives a dense layer of `intermediate_size`, so the dense and MoE models share
    the class and every attention/embedding weight name.
    """
    kwargs = dict(moe_kwargs)
    kwargs["intermediate_size"] = dense_intermediate
    kwargs["mlp_only_layers"] = list(range(int(moe_kwargs["num_hidden_layers"])))
    return kwargs


def upcycle_state(dense_state: dict[str, torch.Tensor], moe_state: dict[str, torch.Tensor], noise_std: float,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The MoE state dict made from a dense one (Qwen3-MoE tensor layout, transformers >= 5).

    dense: `layers.i.mlp.{gate,up,down}_proj.weight` of shapes (I, H), (I, H), (H, I).
    moe:   `layers.i.mlp.experts.gate_up_proj` (E, 2I, H) = [gate; up], `...experts.down_proj` (E, H, I) and the
           router `layers.i.mlp.gate.weight` (E, H), which keeps the MoE model's own initialisation.
    noise_std: relative noise, each expert's copy is w + noise_std * std(w) * N(0, 1).
    """
    out: dict[str, torch.Tensor] = {}
    for name, value in moe_state.items():
        if ".mlp.experts." in name or ".mlp.gate.weight" in name:
            continue
        if name not in dense_state or dense_state[name].shape != value.shape:
            raise ValueError(f"dense model has no tensor {name} of shape {tuple(value.shape)}")
        out[name] = dense_state[name].clone()
    layer_prefixes = sorted({n.split(".mlp.experts.")[0] for n in moe_state if ".mlp.experts." in n})
    for prefix in layer_prefixes:
        gate_up = moe_state[f"{prefix}.mlp.experts.gate_up_proj"]
        n_experts = gate_up.shape[0]
        gate = dense_state[f"{prefix}.mlp.gate_proj.weight"]
        up = dense_state[f"{prefix}.mlp.up_proj.weight"]
        down = dense_state[f"{prefix}.mlp.down_proj.weight"]
        dense_gate_up = torch.cat([gate, up], dim=0)
        if dense_gate_up.shape != gate_up.shape[1:]:
            raise ValueError(f"{prefix}: dense FFN {tuple(dense_gate_up.shape)} does not match an expert "
                             f"{tuple(gate_up.shape[1:])}; set the dense intermediate size to the experts' width")
        out[f"{prefix}.mlp.experts.gate_up_proj"] = _noisy_copies(dense_gate_up, n_experts, noise_std, generator)
        out[f"{prefix}.mlp.experts.down_proj"] = _noisy_copies(down, n_experts, noise_std, generator)
        out[f"{prefix}.mlp.gate.weight"] = moe_state[f"{prefix}.mlp.gate.weight"].clone()
    return out


def _noisy_copies(weight: torch.Tensor, n: int, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    copies = weight.unsqueeze(0).repeat(n, *([1] * weight.dim())).clone()
    if noise_std > 0:
        scale = noise_std * weight.float().std()
        noise = torch.randn(copies.shape, generator=generator, dtype=torch.float32) * scale
        copies = copies + noise.to(copies.dtype)
    return copies
