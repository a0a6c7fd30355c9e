"""MoE model adapters: find MoE layers in any transformers 5.x model, trace and redirect routing, drop experts.

    adapter = get_adapter(model)            # UnsupportedModelError if the model has no MoE layer we know
    for layer in adapter.moe_layers(model): ...
    with record_routing(model, callback): model(input_ids)
    smaller = adapter.keep_experts(model, {layer_index: [experts to keep]})
"""

from lightmoe_cli.models.adapter import MoEAdapter
from lightmoe_cli.models.architectures import ArchInfo, list_moe_architectures
from lightmoe_cli.models.layers import MoELayer
from lightmoe_cli.models.registry import get_adapter, register_adapter
from lightmoe_cli.models.routing import record_routing, redirect_experts

__all__ = [
    "ArchInfo",
    "MoEAdapter",
    "MoELayer",
    "get_adapter",
    "list_moe_architectures",
    "record_routing",
    "redirect_experts",
    "register_adapter",
]
