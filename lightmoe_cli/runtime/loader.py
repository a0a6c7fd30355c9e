"""Build a runnable model from a bundle WITHOUT ever holding all experts in memory.

The model is constructed on the meta device (no memory); for a pruned-router bundle the adapter's keep_experts
slices router and experts, otherwise each experts module's fused parameters become a pool of `slots` rows.
Then only the non-expert weights and the resident experts are materialised and filled, and each MoE layer gets
the strategy its policy asked for (runtime/strategies.py). Every table lives on the model's device.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from lightmoe_cli.bundle.artifact import Bundle, ExpertStore
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.base import Serving
from lightmoe_cli.policies.manager import LayerManager
from lightmoe_cli.runtime.slots import SlotPool, SlotWriter
from lightmoe_cli.runtime.strategies import STRATEGIES, LayerStrategy, Remap


@dataclass
class Runtime:
    model: nn.Module
    tokenizer: object
    bundle: Bundle
    layers: list[LayerStrategy]
    store: ExpertStore
    check_every: int = 64
    handles: list = field(default_factory=list)

    def checkpoint(self) -> int:
        """Give every layer's manager a chance to swap; returns how many layers swapped."""
        return sum(1 for m in self.layers if m.checkpoint() is not None)

    def finish(self) -> None:
        """Fold pending per-expert counts into the statistics (without a swap decision)."""
        for m in self.layers:
            m.finish()

    def resident_expert_bytes(self) -> int:
        return sum(m.slots * m.writer.bytes_per_expert for m in self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _meta_skeleton(config) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _restore_non_persistent_buffers(model: nn.Module) -> None:
    """Buffers not saved in checkpoints (rotary inv_freq) are garbage after to_empty: rebuild their module."""
    for name, module in model.named_modules():
        names = set(module._non_persistent_buffers_set)
        if not names:
            continue
        config = getattr(module, "config", None)
        try:
            fresh = type(module)(config) if config is not None else type(module)()
        except TypeError as e:
            raise LightMoEError(f"cannot rebuild buffers of {name} ({type(module).__name__}) for the runtime: {e}") \
                from e
        for b in names:
            module._buffers[b] = fresh._buffers[b].to(module._buffers[b].device) \
                if fresh._buffers.get(b) is not None else None


def _load_non_expert(model: nn.Module, path: str, kept_rows: dict[str, torch.Tensor]) -> None:
    """Load every stored tensor; where the skeleton was sliced (pruned routers), take the kept rows."""
    from lightmoe_cli.bundle.safetensors_io import TensorFile

    params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    f = TensorFile(path)
    with torch.no_grad():
        for key in f.keys():
            if key not in params:
                raise LightMoEError(f"bundle weight {key} has no place in the model: the bundle does not match "
                                    "its config")
            target, value = params[key], f.read(key)
            if target.shape != value.shape:
                if key not in kept_rows:
                    raise LightMoEError(f"bundle weight {key} has shape {tuple(value.shape)}, the model wants "
                                        f"{tuple(target.shape)}: the bundle does not match its config")
                value = value.index_select(_differing_axis(target, value), kept_rows[key])
            target.copy_(value.to(target.dtype))
    f.close()


def _differing_axis(a: torch.Tensor, b: torch.Tensor) -> int:
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    if len(diff) != 1:
        raise LightMoEError(f"cannot match stored shape {tuple(b.shape)} to {tuple(a.shape)}")
    return diff[0]


def _prune_skeleton(model: nn.Module, adapter, bundle: Bundle) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Router-sliced skeleton (keep_experts) and, per router/block tensor it sliced, the rows it kept."""
    resident = {lp.layer_index: lp.resident for lp in bundle.layers}
    full_layers = adapter.moe_layers(model)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    model = adapter.keep_experts(model, resident)
    kept_rows = {}
    for m in full_layers:
        rows = torch.tensor(resident[m.layer_index], dtype=torch.long)
        for n in names:
            if n.startswith(m.path + ".") and ".experts." not in n[len(m.path):]:
                kept_rows[n] = rows
    return model, kept_rows


def _slot_skeleton(model: nn.Module, adapter, bundle: Bundle) -> None:
    """Shrink every experts module's fused parameters to [slots, ...] (on meta: no memory)."""
    from lightmoe_cli.models.pruning import fix_counts

    plan = {lp.layer_index: lp for lp in bundle.layers}
    for m in adapter.moe_layers(model):
        slots = plan[m.layer_index].slots
        for name, t in adapter.expert_tensors(m).items():
            setattr(m.experts, name, nn.Parameter(torch.empty((slots, *t.shape[1:]), device="meta", dtype=t.dtype),
                                                  requires_grad=False))
        fix_counts(list(m.experts.modules()), m.num_experts, slots, 0, m.top_k, slots)


def _strategy(bundle: Bundle, m, pool: SlotPool, manager: bool) -> LayerStrategy:
    spec = bundle.runtime_spec
    lp = next(p for p in bundle.layers if p.layer_index == m.layer_index)
    cls = STRATEGIES[spec.serving]
    if cls is not Remap:
        return cls(m.layer_index, pool, lp, spec)
    sim = bundle.similarity(m.layer_index) if spec.uses_similarity else None
    return Remap(m.layer_index, pool, lp, spec, similarity=sim.numpy() if sim is not None else None,
                 manager=LayerManager(lp.num_experts, set(lp.resident), spec.manager)
                 if manager and spec.manager is not None else None,
                 renormalise=bool(getattr(m.router, "norm_topk_prob", True)))


def build_runtime(bundle: Bundle, device: str = "cpu", check_every: int | None = None,
                  manager: bool = True) -> Runtime:
    """The bundle's model with only resident experts in memory, served as the bundle's policy says.

    manager=False serves a managed policy statically (its initial resident set, no swaps)."""
    from transformers import AutoConfig, AutoTokenizer

    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.paths import offline

    if device != "cpu" and not torch.cuda.is_available():
        raise LightMoEError(f"device {device} asked for, but torch sees no CUDA device: use --device cpu")
    offline()
    mdir = bundle.path / "model"
    config = AutoConfig.from_pretrained(mdir)
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    spec = bundle.runtime_spec
    model = _meta_skeleton(config)
    adapter = get_adapter(model)
    kept_rows: dict[str, torch.Tensor] = {}
    if spec.serving == Serving.PRUNED_ROUTER:
        model, kept_rows = _prune_skeleton(model, adapter, bundle)
    else:
        _slot_skeleton(model, adapter, bundle)
    layers = adapter.moe_layers(model)
    dtype = getattr(torch, bundle.layout(layers[0].layer_index).dtype)
    model.to_empty(device=device)
    model.to(dtype)
    _restore_non_persistent_buffers(model)
    _load_non_expert(model, str(mdir / "non_expert.safetensors"), kept_rows)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()

    store = ExpertStore(bundle)
    strategies = []
    plans = {lp.layer_index: lp for lp in bundle.layers}
    for m in layers:
        lp = plans[m.layer_index]
        pool = SlotPool(lp.num_experts, lp.slots, SlotWriter(m.experts, bundle.layout(m.layer_index), store,
                                                             m.layer_index), device)
        pool.fill(lp.resident)
        strategies.append(_strategy(bundle, m, pool, manager))
    rt = Runtime(model, tokenizer, bundle, strategies, store,
                 check_every or (spec.manager.check_every if spec.manager else 64))
    for m, s in zip(layers, strategies, strict=True):
        rt.handles += s.install(adapter, m)
    store.bytes_read = 0  # the initial fill is not run-time loading
    return rt
