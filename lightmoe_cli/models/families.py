"""Per-family overrides of the generic adapter, for the layouts that break one of its rules.

Each override changes as little as possible and says which rule its family breaks:
- dbrx: experts stored as 2D [E*I, H] parameters in `experts.mlp`; the router returns logits only.
- llama4: the experts module never sees indices (it runs every expert on score-scaled inputs), so routing is
  read from and written to the router's dense [T, E] score output instead.
- longcat_flash: router slots past the routed experts are zero-compute (identity) experts without weights.
- zaya: the router has one extra "skip" class past the experts.
- deepseek_v4: hash-routed layers look experts up in a token-id -> expert-id table.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightmoe_cli.models.adapter import LIGHTMOE_HOOK, MoEAdapter, RoutingFn
from lightmoe_cli.models.layers import MoELayer
from lightmoe_cli.models.registry import register_adapter


@register_adapter("dbrx")
class DbrxAdapter(MoEAdapter):
    """DBRX: `experts.mlp.{w1, v1, w2}` are [E*I, H]; viewed as [E, I, H] they slice like fused experts."""

    _NAMES = ("w1", "v1", "w2")

    def is_experts(self, module: nn.Module) -> bool:
        mlp = module._modules.get("mlp")
        return mlp is not None and all(isinstance(getattr(mlp, n, None), nn.Parameter) for n in self._NAMES)

    def expert_tensors(self, layer: MoELayer) -> dict[str, torch.Tensor]:
        mlp = layer.experts.mlp
        return {n: getattr(mlp, n).view(layer.num_experts, -1, mlp.hidden_size) for n in self._NAMES}  # [E, I, H]

    def _sliced_expert_tensors(self, layer: MoELayer, kept: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        mlp, pairs = layer.experts.mlp, []
        for name in self._NAMES:
            p = getattr(mlp, name)  # [E*I, H]
            sliced = p.detach().view(layer.num_experts, -1, mlp.hidden_size)[kept].reshape(-1, mlp.hidden_size)
            pairs.append((p, nn.Parameter(sliced.clone(), requires_grad=p.requires_grad)))
        return pairs

    def router_top_k_index(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        return layer.block.route_tokens_to_experts(router_output)[1]  # the block's own top-k of the logits


@register_adapter("llama4", "llama4_text")
class Llama4Adapter(MoEAdapter):
    """Llama 4: routing lives only in the router's output, scores [T, E] that are 0 off the top-k."""

    def router_top_k_index(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        _, logits = router_output
        return torch.topk(logits, layer.top_k, dim=1).indices  # the router's own selection rule

    def add_routing_hook(self, layer: MoELayer, fn: RoutingFn) -> RemovableHandle:
        top_k = layer.top_k

        def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
            scores, logits = output  # [T, E] sigmoid of the top-k logits, 0 elsewhere; [T, E]
            weights, index = torch.topk(scores, top_k, dim=1)
            replaced = fn(index, weights)
            if replaced is None:
                return None
            new_index, new_weights = replaced
            new_scores = torch.zeros_like(scores).scatter_add_(1, new_index, new_weights.to(scores.dtype))
            return new_scores, logits

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.router.register_forward_hook(hook)


@register_adapter("longcat_flash")
class LongcatFlashAdapter(MoEAdapter):
    """LongCat-Flash: router slots E..E+Z-1 are identity experts (no weights), always kept."""

    def extra_slots(self, layer: MoELayer) -> int:
        return int(getattr(layer.experts, "zero_expert_num", 0) or 0)


@register_adapter("zaya")
class ZayaAdapter(MoEAdapter):
    """ZAYA: the router scores E+1 classes; the last one means "skip the experts"."""

    def extra_slots(self, layer: MoELayer) -> int:
        return int(getattr(layer.router, "num_router_classes", layer.num_experts + 1)) - layer.num_experts


@register_adapter("deepseek_v4")
class DeepseekV4Adapter(MoEAdapter):
    """DeepSeek-V4: hash layers route by `router.tid2eid[token]`; ids of dropped experts go to the nearest kept
    expert by index (hash routing has no scores to choose a better stand-in)."""

    def remap_index_tables(self, layer: MoELayer, old_to_new: torch.Tensor, kept: list[int]) -> None:
        table = getattr(layer.router, "tid2eid", None)
        if table is None:
            return
        kept_t = torch.tensor(kept)
        nearest = (torch.arange(len(old_to_new))[:, None] - kept_t[None, :]).abs().argmin(dim=1)  # [E_old]
        mapping = torch.where(old_to_new >= 0, old_to_new, nearest)
        layer.router.tid2eid.copy_(mapping[table.long()].to(table.dtype))
