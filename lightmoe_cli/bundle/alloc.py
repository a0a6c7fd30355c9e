"""Alloc-MoE's layer sensitivity (Alloc-L): the calibration NLL when one MoE layer keeps only k experts per
token, every other layer at its full top-k. The grouped-knapsack DP (policies/activation_budget.py) then picks
the k vector with the least summed NLL under the budget.

We profile each layer in isolation (the others at full k), deepest first; the paper also measures layers with
their deeper neighbours already reduced. Isolated costs are what the DP's additive objective assumes."""

from __future__ import annotations

import torch

from lightmoe_cli.policies.activation import LayerActivation


def calibration_windows(prof, tokenizer, tokens_per_task: int = 512, seq_len: int = 256) -> list[list[int]]:
    """A fixed sample of the profile's own calibration text: up to `tokens_per_task` tokens of every task."""
    from lightmoe_cli.profile.batches import token_windows
    from lightmoe_cli.recipes import iter_task_texts, recipe_from_resolved

    recipe = recipe_from_resolved(prof.manifest.recipe)
    windows = []
    for task in recipe.tasks:
        windows += list(token_windows(tokenizer, iter_task_texts(recipe, task), seq_len, tokens_per_task))
    return windows


@torch.no_grad()
def mean_nll(model, windows: list[list[int]], batch_size: int = 8) -> float:
    """Mean next-token NLL over the windows (right padded, padding ignored)."""
    from lightmoe_cli.profile.batches import batches

    device = next(model.parameters()).device
    total, count = 0.0, 0
    for b in batches(windows, batch_size, 0):
        ids, mask = b.input_ids.to(device), b.attention_mask.to(device)
        logp = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float().log_softmax(-1)
        target, keep = ids[:, 1:], mask[:, 1:].bool()
        nll = -logp.gather(-1, target[..., None])[..., 0]
        total += float(nll[keep].sum())
        count += int(keep.sum())
    return total / max(1, count)


def alloc_sensitivity(model, adapter, layers, windows: list[list[int]]) -> dict[int, dict[int, float]]:
    """S[layer][k]: calibration NLL with that layer at k of its K experts per token (others at K)."""
    full = mean_nll(model, windows)
    out: dict[int, dict[int, float]] = {}
    for m in sorted(layers, key=lambda m: -m.layer_index):  # deepest first
        out[m.layer_index] = {m.top_k: full}
        renorm = bool(getattr(m.router, "norm_topk_prob", True))
        for k in range(m.top_k - 1, 0, -1):
            act = LayerActivation(k, renorm)
            handle = adapter.add_routing_hook(m, act.apply)
            try:
                out[m.layer_index][k] = mean_nll(model, windows)
            finally:
                handle.remove()
    return dict(sorted(out.items()))


@torch.no_grad()
def routing_weights(model, windows: list[list[int]], batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Per MoE layer (N, K): the router weights of every real calibration token (NAEE calibrates on them)."""
    from lightmoe_cli.models import record_routing
    from lightmoe_cli.profile.batches import batches

    device = next(model.parameters()).device
    seen: dict[int, list[torch.Tensor]] = {}
    mask: dict[str, torch.Tensor] = {}

    def keep(layer_index: int, index: torch.Tensor, weights: torch.Tensor) -> None:
        w = weights.reshape(-1, weights.shape[-1]).float().cpu()
        seen.setdefault(layer_index, []).append(w[mask["m"]])

    with record_routing(model, keep):
        for b in batches(windows, batch_size, 0):
            mask["m"] = b.attention_mask.reshape(-1).bool()
            model(input_ids=b.input_ids.to(device), attention_mask=b.attention_mask.to(device))
    return {li: torch.cat(v) for li, v in sorted(seen.items())}
