"""Model identity: what lets a later stage refuse a profile or bundle made for another model."""

from __future__ import annotations

import hashlib
import json
import platform


def config_hash(config) -> str:
    """Hash of the model config's JSON (sorted keys), ignoring fields that do not change the network."""
    d = config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
              "_experts_implementation", "_attn_implementation_autoset", "output_router_logits", "use_cache"):
        d.pop(k, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fingerprint(config, router_tensors) -> str:
    """sha256 over the config hash and every router tensor (rounded), in MoE-layer order: what ties an artifact
    to one model's weights without hashing all of them."""
    h = hashlib.sha256(config_hash(config).encode())
    for t in router_tensors:
        h.update(t.detach().float().cpu().numpy().round(5).tobytes())
    return h.hexdigest()[:16]


def router_tensor_names(model, adapter) -> list[str]:
    """Names (as in model.named_parameters) of every router parameter, in the order `fingerprint` reads them."""
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    return [names[id(p)] for m in adapter.moe_layers(model) for p in m.router.parameters()]


def model_identity(model, adapter, name_or_path: str):
    """Architecture facts plus a fingerprint over config and router weights (cheap, catches other weights)."""
    import torch

    from lightmoe_cli.manifest import ModelIdentity
    from lightmoe_cli.models.offload import onload

    layers = adapter.moe_layers(model)
    with onload(m.router for m in layers):  # offloaded routers (device_map="auto") hold real values in here
        routers = fingerprint(model.config, [p for m in layers for p in m.router.parameters()])
    return ModelIdentity(
        name_or_path=name_or_path,
        architecture=type(model).__name__,
        model_type=getattr(model.config, "model_type", ""),
        config_hash=config_hash(model.config),
        fingerprint=routers,
        moe_layers=[m.layer_index for m in layers],
        num_layers=int(getattr(model.config, "num_hidden_layers", len(layers))),
        num_experts=[m.num_experts for m in layers],
        top_k=[m.top_k for m in layers],
        bytes_per_expert=[adapter.bytes_per_expert(m) for m in layers],
        parameters=int(sum(p.numel() for p in model.parameters())),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
        torch=torch.__version__,
    )


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("lightmoe", "torch", "transformers", "safetensors", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "not installed"
    return out
