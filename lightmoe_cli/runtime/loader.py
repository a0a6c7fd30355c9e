"""Build a runnable model from a bundle WITHOUT ever holding all experts in memory.

The model is constructed on the meta device (no memory), each experts module's fused parameters are replaced by
a pool of `slots` rows, then only the non-expert weights and the resident experts are materialised and filled.
For `prune`, the adapter's keep_experts slices the router too (the router-sliced pruned model); for every other
policy the router stays whole and a managed layer maps expert ids to slots.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from lightmoe_cli.bundle.artifact import Bundle, ExpertStore
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.cache import ExpertCache
from lightmoe_cli.policies.manager import LayerManager, ManagerParams
from lightmoe_cli.runtime.managed import ManagedLayer, SlotWriter, lru_forward


@dataclass
class Runtime:
    model: nn.Module
    tokenizer: object
    bundle: Bundle
    layers: list[ManagedLayer]
    store: ExpertStore
    check_every: int = 64
    handles: list = field(default_factory=list)

    def checkpoint(self) -> int:
        """Give every layer's manager a chance to swap; returns how many layers swapped."""
        return sum(1 for m in self.layers if m.checkpoint() is not None)

    def finish(self) -> None:
        """Fold pending per-expert counts into the statistics (without a swap decision)."""
        for m in self.layers:
            if m.mode == "static":
                m.flush_stats()

    def resident_expert_bytes(self) -> int:
        return sum(m.slots * m.writer.bytes_per_expert for m in self.layers)


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
    """Load every stored tensor; where the skeleton was sliced (prune routers), take the kept rows."""
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
                value = value.index_select(_differing_axis(target, value), kept_rows[key])
            target.copy_(value.to(target.dtype))
    f.close()


def _differing_axis(a: torch.Tensor, b: torch.Tensor) -> int:
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    if len(diff) != 1:
        raise LightMoEError(f"cannot match stored shape {tuple(b.shape)} to {tuple(a.shape)}")
    return diff[0]


def build_runtime(bundle: Bundle, device: str = "cpu", check_every: int | None = None) -> Runtime:
    """The bundle's model with only resident experts in memory, managed as the bundle's policy says."""
    from transformers import AutoConfig, AutoTokenizer

    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.models.pruning import fix_counts

    if device != "cpu" and not torch.cuda.is_available():
        raise LightMoEError(f"device {device} asked for, but torch sees no CUDA device: use --device cpu")
    mdir = bundle.path / "model"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = AutoConfig.from_pretrained(mdir)
    tokenizer = AutoTokenizer.from_pretrained(mdir)
    plan = {lp["layer_index"]: lp for lp in bundle.layers}
    model = _meta_skeleton(config)
    adapter = get_adapter(model)
    kept_rows: dict[str, torch.Tensor] = {}
    if bundle.policy == "prune":
        full_layers = adapter.moe_layers(model)
        names = {n for n, _ in model.named_parameters()}
        model = adapter.keep_experts(model, {li: lp["resident"] for li, lp in plan.items()})
        for m in full_layers:  # router/block tensors that keep_experts sliced: remember which rows
            rows = torch.tensor(plan[m.layer_index]["resident"], dtype=torch.long)
            for n in names:
                if n.startswith(m.path + ".") and ".experts." not in n[len(m.path):]:
                    kept_rows[n] = rows
    layers = adapter.moe_layers(model)
    for m in layers:
        lp = plan[m.layer_index]
        if bundle.policy == "prune":
            continue
        for name, t in adapter.expert_tensors(m).items():
            setattr(m.experts, name, nn.Parameter(torch.empty((lp["slots"], *t.shape[1:]), device="meta",
                                                              dtype=t.dtype), requires_grad=False))
        fix_counts(list(m.experts.modules()), m.num_experts, lp["slots"], 0, m.top_k, lp["slots"])
    dtype = getattr(torch, bundle.layout(layers[0].layer_index).dtype)
    model.to_empty(device=device)
    model.to(dtype)
    _restore_non_persistent_buffers(model)
    _load_non_expert(model, str(mdir / "non_expert.safetensors"), kept_rows)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()

    store = ExpertStore(bundle)
    managed = []
    manager_params = ManagerParams(**bundle.manifest["plan"]["manager"]) if bundle.manifest["plan"].get("manager") \
        else None
    min_sim = bundle.manifest["plan"].get("min_similarity")
    for m in layers:
        lp = plan[m.layer_index]
        e, resident = lp["num_experts"], lp["resident"]
        slot_of = torch.full((e,), -1, dtype=torch.long)
        slot_of[torch.tensor(resident)] = torch.arange(len(resident))
        writer = SlotWriter(m.experts, bundle.layout(m.layer_index), store, m.layer_index)
        mode = {"prune": "prune", "lru": "lru"}.get(bundle.policy, "static")
        ml = ManagedLayer(m.layer_index, e, lp["slots"], mode, slot_of,
                          torch.tensor(lp["redirect"], dtype=torch.long), writer)
        for slot, expert in enumerate(resident):
            writer.load(expert, slot)
        if mode == "lru":
            ml.cache = ExpertCache.warm(lp["slots"], bundle.manifest["plan"].get("eviction") or "lru", resident)
            m.experts.forward = lru_forward(ml, m.experts)
        elif bundle.policy == "lightmoe":
            ml.manager = LayerManager(e, set(resident), manager_params)
            sim = bundle.similarity(m.layer_index)
            ml.similarity = sim.numpy() if sim is not None else None
            ml.min_similarity = min_sim if min_sim is not None else -np.inf
            ml.reroute = bundle.manifest["plan"].get("missing", "drop") == "reroute"
            ml.renormalise = bool(getattr(m.router, "norm_topk_prob", True))
        managed.append(ml)
    rt = Runtime(model, tokenizer, bundle, managed, store,
                 check_every or (manager_params.check_every if manager_params else 64))
    for m, ml in zip(layers, managed, strict=True):
        if ml.mode == "static":
            rt.handles.append(adapter.add_routing_hook(m, ml.route))
            if ml.reroute:
                rt.handles.append(m.router.register_forward_hook(ml.keep_logits))
        elif ml.mode == "prune":
            rt.handles.append(adapter.add_routing_hook(m, ml.count_pruned))
    store.bytes_read = 0  # initial fill is not counted as run-time loading
    for ml in managed:
        ml.stats.loads = ml.stats.bytes_loaded = 0
        ml.stats.load_seconds = 0.0
    return rt
