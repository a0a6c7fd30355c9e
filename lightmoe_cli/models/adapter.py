"""The generic MoE adapter: finds fused-expert blocks structurally and reads, writes and drops experts.

Why one generic adapter: in transformers 5.x almost every MoE family stores its experts as fused parameters
whose dim 0 is the expert (`gate_up_proj [E, 2I, H]`, `down_proj [E, H, I]`, gpt-oss also `*_bias [E, O]`,
transposed or not), and hands `(hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K])` to the experts
module. Slicing dim 0 therefore reads, writes or drops an expert whatever the orientation or gating, and a
forward-pre-hook on the experts module sees (and may replace) the final routing. Families that break this rule
override one small method in `families.py`.
"""

from __future__ import annotations

import copy
import inspect
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.models.layers import (
    GROUP_KEYS,
    NUM_EXPERTS_KEYS,
    ROUTER_NAMES,
    SHARED_EXPERT_NAMES,
    TOP_K_KEYS,
    MoELayer,
    config_of,
    first_child,
    int_attr,
    layer_index_from_path,
    layers_container,
)
from lightmoe_cli.models.pruning import fix_counts, localize_configs, rows_for, update_config_counts

# A routing hook gets the final (top_k_index [T, K], top_k_weights [T, K]) and returns replacements or None.
RoutingFn = Callable[[torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor] | None"]
# An expert-input hook gets what one experts call works on: (hidden_states [T, H], top_k_index [T, K],
# top_k_weights [T, K]); it only looks (its return value is ignored).
ExpertInputFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], object]

LIGHTMOE_HOOK = "_lightmoe_hook"  # marker on our hook functions, so copies of a model can shed them

# Config keys for experts per token; `top_k` last, it can mean other things in a config.
_CONFIG_TOP_K_KEYS = tuple(k for k in TOP_K_KEYS if k != "top_k") + ("top_k",)


class MoEAdapter:
    """Generic adapter for fused-expert MoE blocks (the transformers 5.x layout)."""

    # ---- discovery ---------------------------------------------------------------------------------------

    def is_experts(self, module: nn.Module) -> bool:
        """An experts module holds fused per-expert parameters: at least one direct 3D parameter [E, ., .]."""
        return any(p.ndim == 3 for p in module.parameters(recurse=False))

    def moe_layers(self, model: nn.Module) -> list[MoELayer]:
        """Every MoE block of `model`, ordered by decoder-layer index (dense layers are not listed)."""
        candidates = []
        for path, module in model.named_modules():
            experts = module._modules.get("experts")
            router = first_child(module, ROUTER_NAMES)
            if experts is None or router is None or not self.is_experts(experts):
                continue
            index = layer_index_from_path(path)
            if index is not None:
                candidates.append((path, module, experts, router, index))
        if not candidates:
            return []
        # A multimodal model may have MoE in more than one tower: keep the tower with the most MoE blocks.
        tower, _ = Counter(layers_container(c[0]) for c in candidates).most_common(1)[0]
        text_config = _text_config(model)
        layers = [
            self._describe(path, block, experts, router, index, text_config)
            for path, block, experts, router, index in candidates
            if layers_container(path) == tower
        ]
        return sorted(layers, key=lambda layer: layer.layer_index)

    def _describe(self, path: str, block: nn.Module, experts: nn.Module, router: nn.Module, index: int,
                  text_config: Any) -> MoELayer:
        """Read expert count and top-k from the modules first, their configs second, the model config last."""
        num_experts = int_attr([experts], NUM_EXPERTS_KEYS) or min(
            p.shape[0] for p in experts.parameters(recurse=False) if p.ndim == 3
        )
        top_k = int_attr([router, block], TOP_K_KEYS) or int_attr(
            [*config_of(router, block, experts), text_config], _CONFIG_TOP_K_KEYS, index=index
        )
        if top_k is None:
            raise LightMoEError(f"cannot tell how many experts per token the MoE block at {path} uses")
        return MoELayer(
            layer_index=index, block=block, router=router, experts=experts, num_experts=num_experts,
            top_k=top_k, shared_experts=first_child(block, SHARED_EXPERT_NAMES), path=path,
        )

    def can_change_top_k(self) -> bool:
        """Whether the routing hook may hand the experts fewer picks per token than the router made (activation
        budgets). Families that route inside the router's own output (Llama 4's score scaling, JetMoE's
        grouped tokens) cannot."""
        return type(self).add_routing_hook is MoEAdapter.add_routing_hook

    def extra_slots(self, layer: MoELayer) -> int:
        """Router outputs past the routed experts that have no weights (zero / skip experts); they are kept."""
        return 0

    def min_kept(self, layer: MoELayer) -> int:
        """The fewest experts `keep_experts` may leave in `layer`.

        Group-limited routers (DeepSeek-V3 style) rank groups by their best two experts, so they need two.
        """
        return 2 if int_attr([layer.router], GROUP_KEYS) else 1

    def routable_slots(self, layer: MoELayer, n_kept: int) -> int:
        """How many slots the router can pick from after keeping `n_kept` experts (caps top-k)."""
        return n_kept

    # ---- per-expert tensors ------------------------------------------------------------------------------

    def expert_tensors(self, layer: MoELayer) -> dict[str, torch.Tensor]:
        """Name -> tensor whose dim 0 indexes experts (a view where the storage is not [E, ...])."""
        n = layer.num_experts
        rows = {n, n + self.extra_slots(layer)}
        return {
            name: p for name, p in layer.experts.named_parameters(recurse=False)
            if p.ndim >= 2 and p.shape[0] in rows
        }

    def expert_parameters(self, layer: MoELayer) -> list[nn.Parameter]:
        """The parameters that hold the routed experts' weights (what `expert_tensors` slices, views resolved):
        what a bundle stores in its expert store and nowhere else."""
        return list(self.expert_tensors(layer).values())

    def resize_expert_pool(self, layer: MoELayer, slots: int) -> None:
        """Make `layer`'s experts a pool of `slots` rows (on the meta device: no memory), for the runtime.

        The fused parameters keep their rows past the routed experts (LongCat's identity rows) and get `slots`
        routed rows; the experts module's counts follow, so its kernel runs on slot ids. The router is not
        touched: it still picks among all experts, and the runtime maps its ids to slots.
        """
        n = layer.num_experts
        for name, t in self.expert_tensors(layer).items():
            shape = (slots + t.shape[0] - n, *t.shape[1:])
            setattr(layer.experts, name, nn.Parameter(torch.empty(shape, device="meta", dtype=t.dtype),
                                                      requires_grad=False))
        fix_counts(list(layer.experts.modules()), n, slots, self.extra_slots(layer), layer.top_k,
                   self.routable_slots(layer, slots))

    def write_slot(self, layer: MoELayer, slot: int, tensors: dict[str, torch.Tensor]) -> None:
        """Copy one expert's `tensors` (named as `read_expert` names them) into row `slot` of `layer`'s expert
        pool (`layer` as found after `resize_expert_pool`); tensors are moved to the pool's device."""
        targets = self.expert_tensors(layer)
        missing = set(tensors) - set(targets)
        if missing:
            raise LightMoEError(f"layer {layer.layer_index}: the expert pool has no tensor {sorted(missing)}")
        with torch.no_grad():
            for name, value in tensors.items():
                target = targets[name]
                if not 0 <= slot < target.shape[0]:
                    raise LightMoEError(f"layer {layer.layer_index}: {name} has {target.shape[0]} slots, not {slot}")
                target[slot].copy_(value.to(target.device, non_blocking=False))

    def bytes_per_expert(self, layer: MoELayer) -> int:
        """Bytes one expert's weights take (all its fused slices, biases included)."""
        return sum(t[0].numel() * t.element_size() for t in self.expert_tensors(layer).values())

    def read_expert(self, layer: MoELayer, e: int) -> dict[str, torch.Tensor]:
        """Copies of expert `e`'s slices, keyed by the fused parameter's name (e.g. gate_up_proj, down_proj)."""
        self._check_expert(layer, e)
        return {name: t[e].detach().clone() for name, t in self.expert_tensors(layer).items()}

    def write_expert(self, layer: MoELayer, e: int, tensors: dict[str, torch.Tensor]) -> None:
        """Overwrite expert `e` in place with `tensors` (same names and shapes as `read_expert` returns)."""
        self._check_expert(layer, e)
        targets = self.expert_tensors(layer)
        if set(tensors) != set(targets):
            raise LightMoEError(f"expert tensors must be exactly {sorted(targets)}, got {sorted(tensors)}")
        with torch.no_grad():
            for name, target in targets.items():
                if tuple(tensors[name].shape) != tuple(target[e].shape):
                    raise LightMoEError(
                        f"{name}: expected shape {tuple(target[e].shape)}, got {tuple(tensors[name].shape)}"
                    )
                target[e].copy_(tensors[name])

    def _check_expert(self, layer: MoELayer, e: int) -> None:
        if not 0 <= e < layer.num_experts:
            raise LightMoEError(f"layer {layer.layer_index} has experts 0..{layer.num_experts - 1}, not {e}")

    # ---- routing -----------------------------------------------------------------------------------------

    def router_top_k_index(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        """The indices the router itself returned: routers return (logits, top_k_weights, top_k_index, ...)."""
        return router_output[2]

    def router_logits(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        """The router's logits [..., W] from its forward output: W is the experts plus the routable slots past
        them (zero / skip experts). Routers return (logits, weights, index, ...), or the logits alone (DBRX)."""
        return router_output if isinstance(router_output, torch.Tensor) else router_output[0]

    def add_routing_hook(self, layer: MoELayer, fn: RoutingFn) -> RemovableHandle:
        """Run `fn` on the final routing of every forward of `layer`, via a pre-hook on the experts module."""
        index_slot, weight_slot = _routing_slots(layer.experts)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            index = index_slot.get(args, kwargs)
            weights = weight_slot.get(args, kwargs)
            replaced = fn(index, weights)
            if replaced is None:
                return None
            args, kwargs = index_slot.put(args, kwargs, replaced[0])
            args, kwargs = weight_slot.put(args, kwargs, replaced[1])
            return args, kwargs

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.experts.register_forward_pre_hook(hook, with_kwargs=True)

    # ---- running experts ---------------------------------------------------------------------------------

    def add_expert_input_hook(self, layer: MoELayer, fn: ExpertInputFn) -> RemovableHandle:
        """Call `fn(hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K])` on every experts call of
        `layer`: the states the experts really receive, with the routing they receive them under.

        Why: output-space similarity and REAP saliency need real routed hidden states, and only the adapter
        knows where a family hands them over. Registered before a routing hook (`add_routing_hook`), `fn` sees
        the router's own choice; registered after, the replaced one.
        """
        hidden_slot, index_slot, weight_slot = _forward_slots(layer.experts)

        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            hidden = hidden_slot.get(args, kwargs)
            fn(hidden.reshape(-1, hidden.shape[-1]), index_slot.get(args, kwargs), weight_slot.get(args, kwargs))

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.experts.register_forward_pre_hook(hook, with_kwargs=True)

    def run_expert(self, layer: MoELayer, e: int, hidden: torch.Tensor) -> torch.Tensor:
        """Expert `e` of `layer` alone on `hidden` [N, H] at router weight 1 -> [N, H] (experts' dtype/device).

        Runs the experts module's own forward (its kernel, activation, layout and biases) with every state sent
        to `e`, so what similarity measures is what a redirect to `e` would really compute.
        """
        self._check_expert(layer, e)
        h = self._as_expert_input(layer, hidden)
        index = torch.full((h.shape[0], 1), e, dtype=torch.long, device=h.device)  # [N, 1]
        weights = torch.ones((h.shape[0], 1), dtype=h.dtype, device=h.device)  # [N, 1]
        return layer.experts(h, index, weights).reshape(h.shape)  # some return [N, 1, H] (DBRX)

    def _as_expert_input(self, layer: MoELayer, hidden: torch.Tensor) -> torch.Tensor:
        """`hidden` [N, H] on the device and in the dtype of `layer`'s expert weights."""
        weight = next(iter(self.expert_tensors(layer).values()))
        device = weight.device
        if device.type == "meta":  # offloaded by accelerate: its hook brings the weights to this device
            device = getattr(getattr(layer.experts, "_hf_hook", None), "execution_device", None) or "cpu"
        return hidden.reshape(-1, hidden.shape[-1]).to(device, weight.dtype)

    # ---- dropping experts --------------------------------------------------------------------------------

    def keep_experts(self, model: nn.Module, keep: dict[int, list[int]]) -> nn.Module:
        """A copy of `model` keeping only `keep[layer_index]` experts in those layers (others untouched).

        The dropped experts' weights are never copied: the deep copy is seeded with already-sliced tensors,
        so peak memory is the original plus the smaller model. Router rows (and per-expert biases) are
        sliced the same way, and the kept experts are renumbered in ascending order (the j-th smallest kept
        id becomes expert j), so the router picks top-k among the kept experts only. Top-k shrinks when
        fewer experts than top-k remain; when every MoE layer keeps the same number, the model config's
        expert count follows, so save_pretrained / from_pretrained round-trip.
        """
        layers = {layer.layer_index: layer for layer in self.moe_layers(model)}
        keep = {int(i): self._checked_keep(layers, int(i), list(kept)) for i, kept in keep.items()}
        memo: dict[int, Any] = {}
        for i, kept in keep.items():
            for old, new in self._sliced_tensors(layers[i], kept):
                memo[id(old)] = new
        new_model = copy.deepcopy(model, memo)
        strip_lightmoe_hooks(new_model)
        for layer in self.moe_layers(new_model):
            if layer.layer_index in keep:
                self._fix_layer(layer, keep[layer.layer_index])
        counts = {len(k) for k in keep.values()}
        if len(keep) == len(layers) and len(counts) == 1:
            # Uniform: the model config can say so too (save_pretrained / from_pretrained then agree).
            old = next(iter(layers.values()))
            n_kept = counts.pop()
            update_config_counts(_text_config(new_model), old.num_experts, n_kept, old.top_k,
                                 self.routable_slots(old, n_kept))
        return new_model

    def _checked_keep(self, layers: dict[int, MoELayer], index: int, kept: list[int]) -> list[int]:
        if index not in layers:
            raise LightMoEError(f"layer {index} is not an MoE layer; MoE layers: {sorted(layers)}")
        layer = layers[index]
        n, least = layer.num_experts, self.min_kept(layer)
        if len(set(kept)) != len(kept) or not all(0 <= e < n for e in kept):
            raise LightMoEError(f"layer {index}: keep distinct experts in 0..{n - 1}, got {kept}")
        if len(kept) < least:
            raise LightMoEError(f"layer {index}: its router needs at least {least} experts, got {kept}")
        return sorted(kept)

    def _sliced_tensors(self, layer: MoELayer, kept: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(old tensor, its replacement keeping only `kept` rows) for experts, router and block tensors."""
        pairs = self._sliced_expert_tensors(layer, kept)
        n, extra = layer.num_experts, self.extra_slots(layer)
        seen = {id(old) for old, _ in pairs}
        routing_tensors = [*layer.router.parameters(), *layer.router.buffers(),
                           *layer.block.parameters(recurse=False), *layer.block.buffers(recurse=False)]
        for t in routing_tensors:
            axis = _expert_axis(t, (n, n + extra))
            if id(t) in seen or axis is None:
                continue
            seen.add(id(t))
            rows = rows_for(kept, n, t.shape[axis])
            pairs.append((t, _like(t, t.detach().index_select(axis, rows).clone())))
        return pairs

    def _sliced_expert_tensors(self, layer: MoELayer, kept: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(expert parameter, its kept rows); the parameters themselves, so deepcopy's memo can swap them."""
        return [(p, _like(p, p.detach()[rows_for(kept, layer.num_experts, p.shape[0])].clone()))
                for p in self.expert_tensors(layer).values()]

    def _fix_layer(self, layer: MoELayer, kept: list[int]) -> None:
        """After slicing: make counts, top-k and group settings of the copied layer match `kept`."""
        # The block's own attributes and everything under router and experts; not attention or shared experts
        # (Gemma 4's block is the whole decoder layer).
        modules = list({id(m): m for m in (layer.block, *layer.router.modules(), *layer.experts.modules())}
                       .values())
        cap = self.routable_slots(layer, len(kept))
        fix_counts(modules, layer.num_experts, len(kept), self.extra_slots(layer), layer.top_k, cap)
        # Routers that read routing numbers from the shared config at run time (Gemma 4, ZAYA) get their own.
        localize_configs([layer.router], layer.num_experts, len(kept), layer.top_k, cap)
        old_to_new = torch.full((layer.num_experts,), -1, dtype=torch.long)
        old_to_new[torch.tensor(kept)] = torch.arange(len(kept))
        self.remap_index_tables(layer, old_to_new, kept)

    def remap_index_tables(self, layer: MoELayer, old_to_new: torch.Tensor, kept: list[int]) -> None:
        """Rewrite tables that store expert ids (hash routing) after `kept` were kept; -1 marks dropped."""


def strip_lightmoe_hooks(model: nn.Module) -> None:
    """Remove our routing hooks from `model` (a deep copy carries its original's hooks along)."""
    for module in model.modules():
        for hooks in (module._forward_pre_hooks, module._forward_hooks):
            for key in [k for k, fn in hooks.items() if getattr(fn, LIGHTMOE_HOOK, False)]:
                del hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_with_kwargs.pop(key, None)
                module._forward_hooks_always_called.pop(key, None)


class _ArgSlot:
    """Where a forward argument sits: position in args, or its name in kwargs."""

    def __init__(self, position: int, name: str) -> None:
        self.position, self.name = position, name

    def get(self, args: tuple, kwargs: dict) -> torch.Tensor:
        return args[self.position] if len(args) > self.position else kwargs[self.name]

    def put(self, args: tuple, kwargs: dict, value: torch.Tensor) -> tuple[tuple, dict]:
        if len(args) > self.position:
            return (*args[: self.position], value, *args[self.position + 1:]), kwargs
        return args, {**kwargs, self.name: value}


def _forward_slots(experts: nn.Module) -> tuple[_ArgSlot, _ArgSlot, _ArgSlot]:
    """Experts forwards take (hidden_states, top_k_index, top_k_weights) under varying names; families that do
    not (the experts never see indices) override the adapter methods that would call this."""
    params = [p for p in inspect.signature(type(experts).forward).parameters.values() if p.name != "self"]
    if len(params) < 3:
        raise LightMoEError(f"{type(experts).__name__}.forward does not take (hidden_states, index, weights)")
    return _ArgSlot(0, params[0].name), _ArgSlot(1, params[1].name), _ArgSlot(2, params[2].name)


def _routing_slots(experts: nn.Module) -> tuple[_ArgSlot, _ArgSlot]:
    """Where an experts forward takes (top_k_index, top_k_weights)."""
    return _forward_slots(experts)[1:]


def _expert_axis(t: torch.Tensor, sizes: tuple[int, ...]) -> int | None:
    """Which axis of a router/block tensor indexes experts: dim 0 ([E, H] weights, [E] biases), else the last
    one ([H, E], or Ernie's [1, E] correction bias); None for tensors that are not per-expert (or integer)."""
    if not t.is_floating_point() or t.ndim == 0:
        return None
    if t.shape[0] in sizes:
        return 0
    return t.ndim - 1 if t.shape[-1] in sizes else None


def _like(old: torch.Tensor, data: torch.Tensor) -> torch.Tensor:
    """`data` as the same kind of tensor as `old` (a Parameter stays a Parameter)."""
    return nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data


def _text_config(model: nn.Module) -> Any:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        return config.get_text_config()
    return config
