"""Bookkeeping after experts are dropped: row selection, expert counts, top-k and routing groups.

Why by attribute name: every family stores "how many experts" under its own names (num_experts,
n_routed_experts, total_experts, num_router_classes, moe_num_experts ...), on the experts module, the router,
the block and sometimes only in a config the router reads at run time. Rewriting every integer that equals the
old count and names experts keeps the forward consistent without a table per family.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightmoe_cli.models.layers import GROUP_KEYS, NUM_EXPERTS_KEYS, TOP_K_KEYS, TOPK_GROUP_KEYS

_COUNT_WORDS = ("expert", "classes")
_NOT_A_COUNT = ("per_tok", "per_token", "top", "shared", "dim", "size", "group")


def rows_for(kept: list[int], num_experts: int, rows: int) -> torch.Tensor:
    """Row indices to keep in a tensor with `rows` rows: the kept experts, then every slot past the routed ones
    (zero-compute / skip experts have no weights and always stay)."""
    if rows < num_experts:
        raise ValueError(f"tensor has {rows} rows, fewer than the {num_experts} experts")
    return torch.tensor([*kept, *range(num_experts, rows)], dtype=torch.long)


def _is_count_name(name: str) -> bool:
    name = name.lower()
    return any(w in name for w in _COUNT_WORDS) and not any(w in name for w in _NOT_A_COUNT)


def _new_value(name: str, value: Any, old: int, new: int, extra: int, top_k: int, cap: int) -> Any:
    """The value attribute `name` should take when `old` experts become `new` (None: leave it).

    Top-k attributes equal to the layer's top-k drop to `cap` (the slots left to pick from) if above it.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    if name in TOP_K_KEYS:
        return cap if value > cap and value == top_k else None
    if _is_count_name(name):
        if value == old:
            return new
        if extra and value == old + extra:
            return new + extra
    return None


def _fix_groups(obj: Any, new: int, top_k: int) -> None:
    """Group-limited routing (DeepSeek-V3 style) needs equal groups of >= 2 experts covering top_k picks;
    when the kept count breaks that, fall back to one group (plain top-k over the kept experts)."""
    for key in GROUP_KEYS:
        groups = getattr(obj, key, None)
        if not isinstance(groups, int) or isinstance(groups, bool) or groups <= 1:
            continue
        topk_group = next((getattr(obj, k) for k in TOPK_GROUP_KEYS if isinstance(getattr(obj, k, None), int)),
                          groups)
        if new % groups or new // groups < 2 or topk_group * (new // groups) < min(top_k, new):
            setattr(obj, key, 1)
            for k in TOPK_GROUP_KEYS:
                if hasattr(obj, k):
                    setattr(obj, k, 1)


def fix_counts(modules: Iterable[nn.Module], old: int, new: int, extra: int, top_k: int, cap: int) -> None:
    """Rewrite expert-count, top-k and group attributes on `modules` for `new` kept experts of `old`."""
    for module in modules:
        for name, value in list(vars(module).items()):
            if name.startswith("_"):
                continue
            replacement = _new_value(name, value, old, new, extra, top_k, cap)
            if replacement is not None:
                setattr(module, name, replacement)
        _fix_groups(module, new, top_k)


def update_config_counts(config: Any, old: int, new: int, top_k: int, cap: int) -> None:
    """Rewrite a config's expert-count, top-k and group keys in place."""
    if config is None:
        return
    for key in (*NUM_EXPERTS_KEYS, *TOP_K_KEYS):
        value = getattr(config, key, None)
        replacement = _new_value(key, value, old, new, 0, top_k, cap) if key in TOP_K_KEYS else (
            new if value == old and isinstance(value, int) else None)
        if replacement is not None:
            setattr(config, key, replacement)
    _fix_groups(config, new, top_k)
    for value in list(vars(config).values()):  # nested routing configs (DBRX's ffn_config)
        if value is not config and type(value).__name__.endswith("Config") and hasattr(value, "to_dict"):
            update_config_counts(value, old, new, top_k, cap)


def localize_configs(modules: Iterable[nn.Module], old: int, new: int, top_k: int, cap: int) -> None:
    """Give modules (routers) that read routing numbers from their config at run time a private, updated copy.

    Why a copy: the config object is shared by every layer (and by attention and experts modules, which read
    `_attn_implementation` / `_experts_implementation` from it), and each layer may keep a different number
    of experts. Only pass modules whose config holds nothing a user changes later.
    """
    for module in modules:
        config = getattr(module, "config", None)
        if config is None or not any(getattr(config, k, None) == old for k in NUM_EXPERTS_KEYS):
            continue
        local = copy.copy(config)
        update_config_counts(local, old, new, top_k, cap)
        module.config = local
