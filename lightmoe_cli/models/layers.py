"""The MoELayer record and the structural look-ups every adapter shares.

Why structural: transformers 5.x puts every MoE block in the same shape (an `experts` child holding fused 3D
parameters next to a `gate`/`router` child), but under different paths (`mlp`, `block_sparse_moe`,
`feed_forward`, `mixer`, the decoder layer itself) and with different attribute names for the same numbers.
Reading those from the modules (not from per-family tables) keeps new families working without code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from torch import nn

ROUTER_NAMES = ("gate", "router")
SHARED_EXPERT_NAMES = ("shared_experts", "shared_expert", "shared_mlp")
# Attribute / config names for "how many routed experts", most specific first.
NUM_EXPERTS_KEYS = ("num_experts", "num_routed_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
# Attribute / config names for "experts per token".
TOP_K_KEYS = ("top_k", "num_experts_per_tok", "top_k_experts", "moe_topk", "moe_top_k", "moe_k",
              "num_experts_per_token")
# Attribute / config names for DeepSeek-style group-limited routing.
GROUP_KEYS = ("num_group", "n_group", "num_expert_group")
TOPK_GROUP_KEYS = ("topk_group",)

_LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|blocks|layer|h)\.(\d+)(?=\.|$)")


@dataclass
class MoELayer:
    """One MoE block of a model.

    layer_index is the decoder layer's own index (dense layers are skipped, never renumbered), so it matches
    `model.model.layers[i]`, checkpoint keys and per-layer config lists.
    """

    layer_index: int
    block: nn.Module  # the mlp / moe block (for Gemma 4: the decoder layer, which holds experts directly)
    router: nn.Module
    experts: nn.Module
    num_experts: int  # routed experts with weights (zero-compute slots, e.g. LongCat's, are not counted)
    top_k: int
    shared_experts: nn.Module | None = None
    path: str = field(default="", compare=False)  # module path of `block`, e.g. "model.layers.3.mlp"


def layer_index_from_path(path: str) -> int | None:
    """The decoder-layer index in a module path like `model.layers.3.mlp` (the last `layers.<i>` wins)."""
    matches = _LAYER_INDEX.findall(path)
    return int(matches[-1]) if matches else None


def layers_container(path: str) -> str:
    """The path up to the layer list (`model.layers.3.mlp` -> `model.layers`): groups blocks by tower."""
    match = list(_LAYER_INDEX.finditer(path))
    return path[: match[-1].start()] if match else ""


def first_child(module: nn.Module, names: tuple[str, ...]) -> nn.Module | None:
    """The first direct child of `module` with one of `names`."""
    for name in names:
        child = module._modules.get(name)
        if child is not None:
            return child
    return None


def int_attr(modules: list[Any], keys: tuple[str, ...], index: int | None = None) -> int | None:
    """The first integer attribute named in `keys` on any of `modules` (list-valued: take `index`)."""
    for obj in modules:
        if obj is None:
            continue
        for key in keys:
            value = getattr(obj, key, None)
            if isinstance(value, (list, tuple)) and index is not None and index < len(value):
                value = value[index]
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def config_of(*modules: nn.Module) -> list[Any]:
    """The `.config` objects the given modules carry (router and block configs hold routing keys)."""
    return [getattr(m, "config", None) for m in modules if getattr(m, "config", None) is not None]
