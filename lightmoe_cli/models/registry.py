"""Which adapter handles a model: a name -> adapter-class table, with the generic adapter as the default.

Why a table keyed by model_type: the few families that need special handling are named once where their
override is defined (`@register_adapter("dbrx")`), and every other family, including ones transformers adds
later, falls through to the structural generic adapter.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn

from lightmoe_cli.errors import UnsupportedModelError
from lightmoe_cli.models.adapter import MoEAdapter
from lightmoe_cli.models.registration import register_adapter, registered_adapter

__all__ = ["get_adapter", "register_adapter", "supported_families"]


@functools.cache
def _load_families() -> None:
    """Import the per-family overrides once (they register themselves into `registration`'s table, which
    is why they need not import this module and no cycle arises)."""
    import lightmoe_cli.models.families  # noqa: F401


def _model_types(model: nn.Module) -> list[str]:
    """The model's model_type, then its text config's (multimodal wrappers keep MoE in the text model)."""
    config: Any = getattr(model, "config", None)
    types = [getattr(config, "model_type", None)]
    if config is not None and hasattr(config, "get_text_config"):
        types.append(getattr(config.get_text_config(), "model_type", None))
    return [t for t in types if t]


def supported_families() -> list[str]:
    """transformers model families with MoE layers that lightmoe handles (from the installed source)."""
    from lightmoe_cli.models.architectures import scan_sources

    return sorted({family for family, _, _ in scan_sources()})


def get_adapter(model: nn.Module) -> MoEAdapter:
    """The adapter for `model`; raises UnsupportedModelError when it finds no MoE layer it understands."""
    _load_families()
    types = _model_types(model)
    adapter = (registered_adapter(types) or MoEAdapter)()
    if adapter.moe_layers(model):
        return adapter
    raise UnsupportedModelError(
        f"{type(model).__name__} has no MoE layers lightmoe knows; supported: {', '.join(supported_families())}"
    )
