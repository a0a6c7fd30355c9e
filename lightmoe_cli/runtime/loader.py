"""Assemble a runnable model from a bundle WITHOUT ever holding all experts in memory.

The model is constructed on the meta device (no memory); for a pruned-router bundle the adapter's keep_experts
slices router and experts, otherwise each experts module's fused parameters become a pool of `slots` rows.
Then only the non-expert weights and the resident experts are materialised and filled, and each MoE layer gets
the strategy its policy asked for (runtime/strategies.py). Every table lives on the model's device. What serves
requests on it, with both managers, is the `Runtime` session (runtime/session.py).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from lightmoe_cli.bundle.artifact import Bundle, ExpertStore
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.activation import LayerActivation
from lightmoe_cli.policies.base import Serving
from lightmoe_cli.policies.manager import LayerManager
from lightmoe_cli.runtime.session import Runtime
from lightmoe_cli.runtime.slots import SlotPool, SlotWriter
from lightmoe_cli.runtime.strategies import STRATEGIES, Background, LayerStrategy, Remap, Replaced

if TYPE_CHECKING:
    pass


def _meta_skeleton(config, architecture: str) -> nn.Module:
    """The model on the meta device, of the class the bundle was built from (the manifest's architecture).

    Why not only AutoModelForCausalLM: some families' configs have no auto mapping (Mistral 4); the class
    name recorded at build time is the authority, the auto class the fallback for names transformers lacks."""
    import transformers

    cls = getattr(transformers, architecture, None)
    with torch.device("meta"):
        if isinstance(cls, type) and hasattr(cls, "_from_config"):
            return cls._from_config(config)
        return transformers.AutoModelForCausalLM.from_config(config)


def _restore_non_persistent_buffers(model: nn.Module, stored: set[str]) -> None:
    """Buffers not saved in checkpoints (rotary inv_freq) are garbage after to_empty: rebuild their module.

    Modules whose non-persistent buffers are all in the bundle (`stored`: full names) are left to the load,
    so modules that cannot be built from their config alone (Gemma 4's scaled embedding) need no rebuild."""
    for name, module in model.named_modules():
        names = set(module._non_persistent_buffers_set)
        if not names or all((f"{name}.{b}" if name else b) in stored for b in names):
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


def _stored_keys(path: str) -> set[str]:
    from lightmoe_cli.bundle.safetensors_io import TensorFile

    f = TensorFile(path)
    keys = set(f.keys())
    f.close()
    return keys


def _load_non_expert(model: nn.Module, path: str, kept: dict[str, tuple[list[int], int]]) -> None:
    """Load every stored tensor; where the skeleton was sliced (pruned routers), take the kept rows: the kept
    experts, then every router slot past the routed ones (`models.pruning.rows_for`, as keep_experts does)."""
    from lightmoe_cli.bundle.safetensors_io import TensorFile
    from lightmoe_cli.models.pruning import rows_for

    params = dict(model.named_parameters(remove_duplicate=False)) | dict(model.named_buffers())
    f = TensorFile(path)
    with torch.no_grad():
        for key in f.keys():
            if key not in params:
                raise LightMoEError(f"bundle weight {key} has no place in the model: the bundle does not match "
                                    "its config")
            target, value = params[key], f.read(key)
            if target.shape != value.shape:
                if key not in kept:
                    raise LightMoEError(f"bundle weight {key} has shape {tuple(value.shape)}, the model wants "
                                        f"{tuple(target.shape)}: the bundle does not match its config")
                axis = _differing_axis(target, value)
                value = value.index_select(axis, rows_for(*kept[key], value.shape[axis]))
            target.copy_(value.to(target.dtype))
    f.close()


def _differing_axis(a: torch.Tensor, b: torch.Tensor) -> int:
    diff = [i for i, (x, y) in enumerate(zip(a.shape, b.shape, strict=True)) if x != y]
    if len(diff) != 1:
        raise LightMoEError(f"cannot match stored shape {tuple(b.shape)} to {tuple(a.shape)}")
    return diff[0]


def _prune_skeleton(model: nn.Module, adapter, bundle: Bundle
                    ) -> tuple[nn.Module, dict[str, tuple[list[int], int]]]:
    """Router-sliced skeleton (keep_experts) and, per router/block tensor it may have sliced, the kept experts
    and the layer's expert count (the rows follow from the stored tensor's size)."""
    resident = {lp.layer_index: lp.resident for lp in bundle.layers}
    full_layers = adapter.moe_layers(model)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    model = adapter.keep_experts(model, resident)
    kept = {}
    for m in full_layers:
        for n in names:
            if n.startswith(m.path + ".") and ".experts." not in n[len(m.path):]:
                kept[n] = (sorted(resident[m.layer_index]), m.num_experts)
    return model, kept


def _slot_skeleton(model: nn.Module, adapter, bundle: Bundle, spare: int = 0) -> None:
    """Shrink every layer's expert pool to its slots plus `spare` rows (double buffering; on meta: no memory);
    the adapter knows the layout."""
    plan = {lp.layer_index: lp for lp in bundle.layers}
    for m in adapter.moe_layers(model):
        adapter.resize_expert_pool(m, plan[m.layer_index].slots + spare)


def _check_fingerprint(bundle: Bundle, config, skeleton: nn.Module, adapter, non_expert: Path) -> None:
    """Recompute the model fingerprint from the config and router weights this bundle will load, and refuse a
    bundle whose weights are not the model its manifest names (an edited fingerprint, swapped files)."""
    from lightmoe_cli.bundle.safetensors_io import TensorFile
    from lightmoe_cli.identity import fingerprint, router_tensor_names

    f = TensorFile(non_expert)
    try:
        names = router_tensor_names(skeleton, adapter)
        missing = [n for n in names if n not in f.header]
        if missing:
            raise LightMoEError(f"{bundle.path}: router weight {missing[0]} is not in model/non_expert.safetensors: "
                                "build the bundle again")
        found = fingerprint(config, [f.read(n) for n in names])
    finally:
        f.close()
    if found != bundle.manifest.model.fingerprint:
        raise LightMoEError(f"{bundle.path}: its weights are model {found}, its manifest says "
                            f"{bundle.manifest.model.fingerprint}: build the bundle again from the right model")


def _strategy(bundle: Bundle, spec, m, pool: SlotPool, manager: bool, loader=None) -> LayerStrategy:
    """The layer's serving strategy; `loader` is the background loader (of a BACKGROUND policy, or of a managed
    one whose swaps are read in the background)."""
    lp = next(p for p in bundle.layers if p.layer_index == m.layer_index)
    cls = STRATEGIES[spec.serving]
    renormalise = bool(getattr(m.router, "norm_topk_prob", True))  # the router renormalises its top-k weights
    if cls is Background:  # composed with the task-aware manager: it moves the pinned core
        per_layer = manager and spec.manager is not None and spec.manager.mode == "incremental"
        return Background(m.layer_index, pool, lp, spec, loader, renormalise=renormalise,
                          manager=LayerManager(lp.num_experts, set(lp.pinned or lp.resident), spec.manager)
                          if per_layer else None)
    if cls is Replaced:
        return Replaced(m.layer_index, pool, lp, spec, _factors(bundle, m))
    if cls is not Remap:
        return cls(m.layer_index, pool, lp, spec)
    sim = bundle.similarity(m.layer_index) if spec.uses_similarity else None
    per_layer = manager and spec.manager is not None and spec.manager.mode == "incremental"
    return Remap(m.layer_index, pool, lp, spec, similarity=sim.numpy() if sim is not None else None,
                 manager=LayerManager(lp.num_experts, set(lp.resident), spec.manager) if per_layer else None,
                 renormalise=renormalise, move_loader=loader if manager and spec.manager is not None else None)


def _factors(bundle: Bundle, m):
    """The replaced experts' low-rank factors of layer m from the bundle (None: naive replacing, rank 0)."""
    rec = bundle.manifest.replacement
    base = rec.base.get(m.layer_index, {}) if rec else {}
    if rec is None or rec.rank == 0 or not base:
        return None
    from safetensors import safe_open

    from lightmoe_cli.replace.lowrank import Factors

    ex = m.experts
    f = Factors(sorted(base), int(ex.gate_up_proj.shape[2]), int(ex.gate_up_proj.shape[1]) // 2, rec.rank,
                dtype=ex.gate_up_proj.dtype, device=ex.gate_up_proj.device)
    prefix = f"layer.{m.layer_index}"
    with safe_open(str(bundle.path / "lowrank.safetensors"), "pt") as fh:  # this layer's tensors only
        f.load({k: fh.get_tensor(k) for k in fh.keys() if k.startswith(prefix + ".")}, prefix)
    f.requires_grad_(False)
    return f


def _prefetcher(bundle: Bundle, spec, adapter, layers, strategies, loader):
    """The bundle's predictor, hooked on the input of every source layer of its layer pairs."""
    from lightmoe_cli.predict.model import load_predictor
    from lightmoe_cli.runtime.prefetch import Prefetcher

    pm = load_predictor(bundle.path / "predictor", bundle.manifest.model.fingerprint)  # verified on every load
    by_layer = {s.layer_index: s for s in strategies}
    from lightmoe_cli.policies.region import PrefetchBudget

    budget = PrefetchBudget(spec.prefetch_bytes, spec.prefetch_confidence or 0.0,
                            float(max(bundle.layout(m.layer_index).bytes for m in layers)))
    pf = Prefetcher(pm, spec.prefetch_width or layers[0].top_k, loader, by_layer, budget)
    handles = []
    for pair, (src, _) in enumerate(pm.cfg.pairs):
        layer = next(m for m in layers if m.layer_index == src)
        handles.append(adapter.add_expert_input_hook(
            layer, lambda hidden, index, weights, pair=pair: pf.on_input(pair, hidden)))
    pf.handles = handles
    return pf


def _assemble_model(bundle: Bundle, config, spec, device: str):
    """The model on `device` with its non-expert weights and empty expert slots (or sliced experts); returns the
    model, its adapter, its MoE layers and each layer's router ids past the experts."""
    from lightmoe_cli.models import get_adapter

    mdir = bundle.path / "model"
    model = _meta_skeleton(config, bundle.manifest.model.architecture)
    adapter = get_adapter(model)
    _check_fingerprint(bundle, config, model, adapter, mdir / "non_expert.safetensors")
    kept_rows: dict[str, tuple[list[int], int]] = {}
    extra = {m.layer_index: 0 for m in adapter.moe_layers(model)}  # router ids past the experts, per layer
    if spec.serving == Serving.PRUNED_ROUTER:  # the sliced router and experts keep those ids themselves
        model, kept_rows = _prune_skeleton(model, adapter, bundle)
    else:
        extra = {m.layer_index: adapter.extra_slots(m) for m in adapter.moe_layers(model)}  # before resizing
        _slot_skeleton(model, adapter, bundle, spec.spare_slots)
    layers = adapter.moe_layers(model)
    dtype = getattr(torch, bundle.layout(layers[0].layer_index).dtype)
    model.to_empty(device=device)
    model.to(dtype)
    non_expert = str(mdir / "non_expert.safetensors")
    _restore_non_persistent_buffers(model, _stored_keys(non_expert))
    _load_non_expert(model, non_expert, kept_rows)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.eval()
    return model, adapter, layers, extra


def _background_loader(bundle: Bundle, spec, store: ExpertStore, device: str, manager: bool, manager_loads: str):
    """The loader thread for a non-blocking cache, or for a manager whose swaps are read in the background."""
    if not (spec.serving == Serving.BACKGROUND or (manager_loads == "background" and manager and spec.manager)):
        return None
    from lightmoe_cli.runtime.background import BackgroundLoader

    # a task jump may queue a whole resident set at once: the manager's queue holds every expert
    pending = spec.max_pending or (8 if spec.serving == Serving.BACKGROUND else
                                   sum(lp.num_experts for lp in bundle.layers))
    return BackgroundLoader(store.read, pending, device=device, reuse_buffer=True)  # the store throttles its reads


def _layer_activation(activation, m) -> LayerActivation:
    return LayerActivation(activation.k[m.layer_index], renormalise=bool(getattr(m.router, "norm_topk_prob", True)),
                           beta=(activation.beta or {}).get(m.layer_index), pooled_base=activation.pooled_base)


def _install(rt: Runtime, adapter, layers, strategies, activation) -> None:
    """Each layer's strategy (with its activation budget) hooked into the model."""
    for m, s in zip(layers, strategies, strict=True):
        if activation is not None:
            s.activation = _layer_activation(activation, m)
            if s.activation.per_token:
                m.experts._is_expert_parallel = True  # dropped picks carry the sentinel id: no GEMM rows
        rt.handles += s.install(adapter, m)


def _task_jump(bundle: Bundle, spec):
    from lightmoe_cli.policies.jump import TaskJump

    man = bundle.manifest
    return TaskJump(man.signature_arrays(), man.task_resident,
                    {lp.layer_index: lp.pinned or lp.resident for lp in bundle.layers}, margin=spec.manager.margin)


def build_runtime(bundle: Bundle, device: str = "cpu", check_every: int | None = None,
                  manager: bool = True, swap_rule: str | None = None, activation=None,
                  io_bandwidth: float | None = None, manager_loads: str = "blocking", tokenizer=None) -> Runtime:
    """The bundle's model with only resident experts in memory, served as the bundle's policy says.

    manager=False serves a managed policy statically (its initial resident set, no swaps); swap_rule
    ("incremental" | "jump") overrides the managed policy's rule (to compare both on one bundle); activation
    (an ActivationPlan) overrides the bundle's activation budget (benchmarks compare rules on one bundle);
    io_bandwidth (bytes/s) throttles every run-time expert read for real: a blocking cache stalls for it, a
    background loader overlaps it with compute; manager_loads="background" reads a managed policy's swaps on a
    background loader too, so a task change never stalls a request boundary (the old experts serve until the new
    ones land). tokenizer: the model's, already loaded (a caller that builds many runtimes of one model, tune,
    saves reading it from the bundle each time)."""
    from transformers import AutoConfig, AutoTokenizer

    from lightmoe_cli.paths import offline

    if device != "cpu" and not torch.cuda.is_available():
        raise LightMoEError(f"device {device} asked for, but torch sees no CUDA device: use --device cpu")
    if manager_loads not in ("blocking", "background"):
        raise LightMoEError(f"--manager-loads {manager_loads!r}: use blocking or background")
    offline()
    config = AutoConfig.from_pretrained(bundle.path / "model")
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(bundle.path / "model")
    spec = bundle.runtime_spec
    if swap_rule is not None and spec.manager is not None:
        spec = dataclasses.replace(spec, manager=dataclasses.replace(spec.manager, mode=swap_rule))
    model, adapter, layers, extra = _assemble_model(bundle, config, spec, device)
    store = ExpertStore(bundle)
    loader = _background_loader(bundle, spec, store, device, manager, manager_loads)
    strategies = []
    plans = {lp.layer_index: lp for lp in bundle.layers}
    for m in layers:
        lp = plans[m.layer_index]
        writer = SlotWriter(adapter, m, bundle.layout(m.layer_index), store)
        pool = SlotPool(lp.num_experts, lp.slots + spec.spare_slots, writer, device, extra=extra[m.layer_index])
        pool.fill(lp.resident)
        strategies.append(_strategy(bundle, spec, m, pool, manager, loader))
    rt = Runtime(model, tokenizer, bundle, strategies, store,
                 check_every or (spec.manager.check_every if spec.manager else 64), loader=loader)
    _install(rt, adapter, layers, strategies, activation if activation is not None else bundle.manifest.activation)
    if spec.serving == Serving.BACKGROUND and (bundle.path / "predictor").is_dir():
        rt.prefetcher = _prefetcher(bundle, spec, adapter, layers, strategies, loader)
        rt.handles += rt.prefetcher.handles
    if manager and spec.manager is not None and spec.manager.mode == "jump":
        rt.jump, rt.max_swap = _task_jump(bundle, spec), spec.manager.max_swap
    store.bytes_read = 0  # the initial fill is not run-time loading
    store.io_bandwidth = io_bandwidth  # run-time reads only: the fill happens before serving starts
    return rt
