"""Per-family overrides of the generic adapter, for the layouts that break one of its rules.

Each override changes as little as possible and says which rule its family breaks:
- dbrx: experts stored as 2D [E*I, H] parameters in `experts.mlp` (the adapter views them [E, I, H], so the
  parameters themselves and the runtime's slot pool are its own); the router returns logits only.
- llama4: the experts module never sees indices (it runs every expert on score-scaled inputs), so routing is
  read from and written to the router's dense [T, E] score output instead, and one expert runs as a
  one-expert view of the fused weights.
- longcat_flash: router slots past the routed experts are zero-compute (identity) experts without weights; its
  experts forward needs two picks per token.
- phimoe: its sparsemixer router always picks two distinct experts.
- zaya: the router has one extra "skip" class past the experts.
- inkling: the router scores the shared experts as extra slots past the routed ones.
- deepseek_v4: hash-routed layers look experts up in a token-id -> expert-id table.
- jetmoe: no `experts` child; the router hands out tokens grouped by expert instead of top_k_index, and the
  experts are two `ParallelExperts` projections run by group sizes (the runtime's slot pool shrinks those, not
  the block, which also holds the router).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightmoe_cli.models.adapter import LIGHTMOE_HOOK, ExpertInputFn, MoEAdapter, RoutingFn
from lightmoe_cli.models.layers import MoELayer, layer_index_from_path
from lightmoe_cli.models.pruning import fix_counts
from lightmoe_cli.models.registration import register_adapter


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

    def expert_parameters(self, layer: MoELayer) -> list[nn.Parameter]:
        return [getattr(layer.experts.mlp, n) for n in self._NAMES]  # the [E*I, H] storage, not its views

    def resize_expert_pool(self, layer: MoELayer, slots: int) -> None:
        mlp = layer.experts.mlp
        for name in self._NAMES:
            p = getattr(mlp, name)  # [E*I, H]
            rows = p.shape[0] // layer.num_experts * slots
            setattr(mlp, name, nn.Parameter(torch.empty((rows, p.shape[1]), device="meta", dtype=p.dtype),
                                            requires_grad=False))
        fix_counts(list(layer.experts.modules()), layer.num_experts, slots, 0, layer.top_k, slots)

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

    def router_logits(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        return router_output[1]  # (scores, logits)

    def router_top_k_index(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        _, logits = router_output
        return torch.topk(logits, layer.top_k, dim=1).indices  # the router's own selection rule

    def add_routing_hook(self, layer: MoELayer, fn: RoutingFn) -> RemovableHandle:
        """Replacement routing is written back as scores as wide as the experts' weight pool (not the router's
        E), so `fn` may map expert ids to slots of a smaller pool; an id past the pool (the dropped sentinel)
        contributes nothing."""
        top_k, experts = layer.top_k, layer.experts

        def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> Any:
            scores, logits = output  # [T, E] sigmoid of the top-k logits, 0 elsewhere; [T, E]
            weights, index = torch.topk(scores, top_k, dim=1)
            replaced = fn(index, weights)
            if replaced is None:
                return None
            new_index, new_weights = replaced  # [T, K] ids into the pool, [T, K]
            rows = experts.gate_up_proj.shape[0]  # the forward runs this many experts
            inside = new_index < rows
            new_scores = scores.new_zeros(scores.shape[0], rows).scatter_add_(
                1, new_index.clamp(max=rows - 1), (new_weights * inside).to(scores.dtype))  # [T, rows]
            return new_scores, logits

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.router.register_forward_hook(hook)

    def add_expert_input_hook(self, layer: MoELayer, fn: ExpertInputFn) -> RemovableHandle:
        """The experts get score-scaled copies of every state; the routed states are the router's input."""
        top_k = layer.top_k

        def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
            hidden, (scores, _) = args[0], output  # [T, H], [T, E]
            weights, index = torch.topk(scores, top_k, dim=1)
            fn(hidden.reshape(-1, hidden.shape[-1]), index, weights)

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.router.register_forward_hook(hook)

    def run_expert(self, layer: MoELayer, e: int, hidden: torch.Tensor) -> torch.Tensor:
        """The experts forward runs all E experts on E blocks of rows; given expert e's slices alone (a
        one-expert module, through functional_call) it runs e on every row, unscaled (router weight 1)."""
        self._check_expert(layer, e)
        one = {name: t[e:e + 1] for name, t in self.expert_tensors(layer).items()}  # [1, ...] each
        return torch.func.functional_call(layer.experts, one, (self._as_expert_input(layer, hidden),))


@register_adapter("longcat_flash")
class LongcatFlashAdapter(MoEAdapter):
    """LongCat-Flash: router slots E..E+Z-1 are identity experts (no weights), always kept and routable, so
    top-k need not shrink (its experts forward breaks at top-1 anyway)."""

    def extra_slots(self, layer: MoELayer) -> int:
        return int(getattr(layer.experts, "zero_expert_num", 0) or 0)

    def routable_slots(self, layer: MoELayer, n_kept: int) -> int:
        return n_kept + self.extra_slots(layer)

    def run_expert(self, layer: MoELayer, e: int, hidden: torch.Tensor) -> torch.Tensor:
        """Its experts forward squeezes the pick axis, so one pick per token breaks it: pick e twice, at
        weights (1, 0)."""
        self._check_expert(layer, e)
        h = self._as_expert_input(layer, hidden)
        index = torch.full((h.shape[0], 2), e, dtype=torch.long, device=h.device)  # [N, 2]
        weights = torch.tensor([1.0, 0.0], dtype=h.dtype, device=h.device).expand(h.shape[0], 2)  # [N, 2]
        return layer.experts(h, index, weights)


@register_adapter("phimoe")
class PhimoeAdapter(MoEAdapter):
    """PhiMoE: sparsemixer picks the second expert by masking the first, so it needs two experts."""

    def min_kept(self, layer: MoELayer) -> int:
        return 2


@register_adapter("zaya")
class ZayaAdapter(MoEAdapter):
    """ZAYA: the router scores E+1 classes; the last one means "skip the experts"."""

    def extra_slots(self, layer: MoELayer) -> int:
        router = layer.router  # its own count: the runtime resizes the experts module, never the router
        n = int(getattr(router, "num_experts", layer.num_experts))
        return int(getattr(router, "num_router_classes", n + 1)) - n


@register_adapter("inkling_text", "inkling")
class InklingAdapter(MoEAdapter):
    """Inkling: the router scores the shared experts too, as the last n_shared_experts slots (always kept)."""

    def extra_slots(self, layer: MoELayer) -> int:
        return int(getattr(layer.router, "n_shared_experts", 0) or 0)


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


@register_adapter("jetmoe")
class JetMoeAdapter(MoEAdapter):
    """JetMoE: the MLP block holds `input_linear`/`output_linear` ([E, O, I] weights) and a router returning
    tokens grouped by expert (sorted positions, per-expert counts) instead of top_k_index. Routing is read
    from and written back into that grouped form. The block itself is the layer's `experts` module. The
    mixture of attention heads in `self_attention` is not an MLP MoE and is left alone."""

    _NAMES = ("input_linear", "output_linear")

    def moe_layers(self, model: nn.Module) -> list[MoELayer]:
        layers = []
        for path, block in model.named_modules():
            index = layer_index_from_path(path)
            if path.endswith(".mlp") and index is not None and all(n in block._modules for n in (*self._NAMES,
                                                                                                  "router")):
                layers.append(MoELayer(index, block, block.router, block, block.router.num_experts,
                                       block.router.top_k, None, path))
        return sorted(layers, key=lambda layer: layer.layer_index)

    def expert_tensors(self, layer: MoELayer) -> dict[str, torch.Tensor]:
        return {n: getattr(layer.block, n).weight for n in self._NAMES}

    def router_top_k_index(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        return router_output[-1].topk(layer.top_k, dim=1).indices  # the router's own rule, on its logits

    def router_logits(self, layer: MoELayer, router_output: Any) -> torch.Tensor:
        return router_output[-1]  # (sorted positions, batch index, gates, sizes, logits)

    def resize_expert_pool(self, layer: MoELayer, slots: int) -> None:
        """The projections' weights shrink and their own counts follow; the block (which is also the layer's
        `experts`) holds the router, whose count must stay whole, so the generic count rewrite is not used."""
        for name in self._NAMES:
            linear = getattr(layer.block, name)
            w = linear.weight  # [E, O, I]
            linear.weight = nn.Parameter(torch.empty((slots, *w.shape[1:]), device="meta", dtype=w.dtype),
                                         requires_grad=False)
            linear.num_experts = slots

    def add_routing_hook(self, layer: MoELayer, fn: RoutingFn) -> RemovableHandle:
        """Replacement ids are grouped by the projections' own expert count (the slot pool's rows at run time)."""
        num_experts, top_k, projection = layer.num_experts, layer.top_k, layer.block.input_linear

        def hook(module: nn.Module, args: tuple, output: tuple) -> Any:
            replaced = fn(*_jetmoe_token_major(output, num_experts, top_k))
            if replaced is None:
                return None
            new_index, new_weights = replaced[0].flatten(), replaced[1].flatten()  # same steps as the router
            _, new_sorted = new_index.sort(0)
            new_size = torch.bincount(new_index, minlength=projection.num_experts).tolist()
            return new_sorted, new_sorted.div(top_k, rounding_mode="trunc"), new_weights[new_sorted], new_size, \
                output[-1]

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.router.register_forward_hook(hook)

    def add_expert_input_hook(self, layer: MoELayer, fn: ExpertInputFn) -> RemovableHandle:
        """The experts gather their rows from the router's input by the grouped positions."""
        num_experts, top_k = layer.num_experts, layer.top_k

        def hook(module: nn.Module, args: tuple, output: tuple) -> None:
            hidden = args[0]  # [T, H]
            fn(hidden.reshape(-1, hidden.shape[-1]), *_jetmoe_token_major(output, num_experts, top_k))

        setattr(hook, LIGHTMOE_HOOK, True)
        return layer.router.register_forward_hook(hook)

    def run_expert(self, layer: MoELayer, e: int, hidden: torch.Tensor) -> torch.Tensor:
        """The two projections take rows grouped by expert with per-expert group sizes: one group, all e's."""
        self._check_expert(layer, e)
        block, h = layer.block, self._as_expert_input(layer, hidden)
        sizes = [0] * layer.num_experts
        sizes[e] = h.shape[0]
        gate, up = block.input_linear(h, sizes).chunk(2, dim=-1)  # [N, I] each
        return block.output_linear(block.activation(gate) * up, sizes)  # [N, H]


def _jetmoe_token_major(output: tuple, num_experts: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """JetMoE's grouped routing (sorted positions, gates, per-expert sizes) back to top_k_index / top_k_weights
    [T, K] in token order."""
    sorted_pos, _, gates, expert_size, logits = output  # [T*K], [T*K], [T*K], list[E], [T, E]
    experts_of_sorted = torch.repeat_interleave(
        torch.arange(num_experts, device=logits.device), torch.tensor(expert_size, device=logits.device))
    index = torch.empty_like(sorted_pos).scatter_(0, sorted_pos, experts_of_sorted)  # [T*K] token-major
    weights = torch.empty_like(gates).scatter_(0, sorted_pos, gates)
    return index.view(-1, top_k), weights.view(-1, top_k)
