"""Watch and change which experts tokens go to, with hooks on the real routing (never recomputed).

Why hooks on the experts' input: routers differ (softmax vs sigmoid, renormalised or not, bias-corrected,
group-limited), so recomputing top-k from logits is wrong for some families (it matched DeepSeek-V3's real
choice only 59% of the time). The experts module receives the final `top_k_index [T, K]` and
`top_k_weights [T, K]` in every family, in the flattened batch*seq token order of hidden_states.

Several contexts can be active at once on one model: per layer, one hook runs their functions in the order
they were entered, each seeing the previous one's output (enter redirect_experts first and record_routing
sees the redirected experts; the other way round it sees the router's choice).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.models.adapter import MoEAdapter, RoutingFn
from lightmoe_cli.models.layers import MoELayer
from lightmoe_cli.models.registry import get_adapter

# callback(layer_index, top_k_index [T, K], top_k_weights [T, K])
RoutingCallback = Callable[[int, torch.Tensor, torch.Tensor], object]


class _Chain:
    """The routing functions active on one MoE layer, run by a single hook."""

    def __init__(self) -> None:
        self.fns: list[RoutingFn] = []
        self.handle = None

    def __call__(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        changed = False
        for fn in list(self.fns):
            out = fn(index, weights)
            if out is not None:
                index, weights, changed = out[0], out[1], True
        return (index, weights) if changed else None


_CHAINS: weakref.WeakKeyDictionary[nn.Module, _Chain] = weakref.WeakKeyDictionary()


@contextmanager
def _routing_fns(model: nn.Module, make_fn: Callable[[MoELayer], RoutingFn | None],
                 adapter: MoEAdapter | None = None) -> Iterator[list[MoELayer]]:
    """Add `make_fn(layer)` to every MoE layer's chain for the duration of the context."""
    adapter = adapter or get_adapter(model)
    layers = adapter.moe_layers(model)
    added: list[tuple[nn.Module, RoutingFn]] = []
    try:
        for layer in layers:
            fn = make_fn(layer)
            if fn is None:
                continue
            chain = _CHAINS.get(layer.experts)
            if chain is None:
                chain = _CHAINS[layer.experts] = _Chain()
                chain.handle = adapter.add_routing_hook(layer, chain)
            chain.fns.append(fn)
            added.append((layer.experts, fn))
        yield layers
    finally:
        for key, fn in added:
            chain = _CHAINS[key]
            chain.fns.remove(fn)
            if not chain.fns:
                chain.handle.remove()
                del _CHAINS[key]


@contextmanager
def record_routing(model: nn.Module, callback: RoutingCallback) -> Iterator[list[MoELayer]]:
    """Call `callback(layer_index, top_k_index [T, K], top_k_weights [T, K])` once per MoE layer per forward.

    The tensors are copies (safe to keep). Yields the model's MoE layers.
    """

    def make(layer: MoELayer) -> RoutingFn:
        def record(index: torch.Tensor, weights: torch.Tensor) -> None:
            callback(layer.layer_index, index.detach().clone(), weights.detach().clone())

        return record

    with _routing_fns(model, make) as layers:
        yield layers


@contextmanager
def redirect_experts(model: nn.Module, table: dict[int, torch.Tensor]) -> Iterator[list[MoELayer]]:
    """Send tokens routed to expert e of layer i to expert `table[i][e]` instead (weights unchanged).

    table[i] is a LongTensor [E] (E = that layer's num_experts); layers not in `table` are untouched. Router
    slots past E (zero-compute experts) pass through. Yields the model's MoE layers.
    """
    adapter = get_adapter(model)
    layers = {layer.layer_index: layer for layer in adapter.moe_layers(model)}
    maps = {int(i): _checked_table(layers, int(i), t) for i, t in table.items()}

    def make(layer: MoELayer) -> RoutingFn | None:
        mapping = maps.get(layer.layer_index)
        if mapping is None:
            return None

        def redirect(index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            m = mapping.to(index.device)
            inside = index < len(m)
            return torch.where(inside, m[index.clamp(max=len(m) - 1)], index), weights

        return redirect

    with _routing_fns(model, make, adapter) as found:
        yield found


def _checked_table(layers: dict[int, MoELayer], index: int, table: torch.Tensor) -> torch.Tensor:
    if index not in layers:
        raise LightMoEError(f"layer {index} is not an MoE layer; MoE layers: {sorted(layers)}")
    n = layers[index].num_experts
    table = torch.as_tensor(table, dtype=torch.long)
    if table.shape != (n,) or bool((table < 0).any()) or bool((table >= n).any()):
        raise LightMoEError(f"layer {index}: redirect table must be a LongTensor [{n}] of experts 0..{n - 1}")
    return table


_SERVING_CLASSES: dict[tuple[type, str], type] = {}


def serving_class(cls: type[nn.Module], kind: str) -> type[nn.Module]:
    """A subclass of an experts class whose forward is its strategy's `run(experts, hidden, index, weights)`
    (cached per class and kind); the instance names its strategy in `_lightmoe_strategy`. Serves the runtime's
    on-demand and replaced experts and the replacement's recovery training alike.

    Swapping an instance's class to a generated subclass is how torch's own `nn.utils.parametrize` changes a
    module's behaviour: the module keeps its parameters, name and hooks (so routing hooks still see expert
    ids), and the kernel that finally runs is the original class's forward (`_lightmoe_base`) on slot ids."""
    if (cls, kind) not in _SERVING_CLASSES:
        def forward(self, hidden_states, top_k_index, top_k_weights):
            return self._lightmoe_strategy.run(self, hidden_states, top_k_index, top_k_weights)

        _SERVING_CLASSES[cls, kind] = type(f"{kind}{cls.__name__}", (cls,), {"forward": forward,
                                                                             "_lightmoe_base": cls})
    return _SERVING_CLASSES[cls, kind]
