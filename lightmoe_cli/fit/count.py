"""Parameters and bytes of an MoE model by kind, counted without loading a tensor.

Why the meta device: every family lightmoe knows is built by transformers from its config alone, and a model on
the meta device has every parameter's shape and no storage, so a 671B model is counted in a second on a laptop,
with exactly the tensors transformers would create (biases, norms, attention sinks included). The adapter says
which parameters are the routed experts, the routers and the shared experts, as it does for every other command.
When the weights are present, their safetensors headers (read, never the tensors) give the real bytes by kind.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError

KINDS = ("embeddings", "attention", "dense_mlp", "router", "shared_experts", "routed_experts", "lm_head", "other")
# bytes per parameter of the weight formats `fit --dtype` accepts; q8_0 / q4_0 are llama.cpp's block formats
# (32 weights + one fp16 scale: 8.5 and 4.5 bits per weight)
DTYPE_BYTES: dict[str, float] = {"fp32": 4.0, "bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
_CONFIG_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "float8_e4m3fn": "fp8"}
_ST_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4,
                   "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_LAYER = re.compile(r"(?:^|\.)(?:layers|blocks|layer|h)\.(\d+)(?=\.|$)")


@dataclass(frozen=True)
class MoELayerCount:
    """One MoE layer's routed experts: its decoder index, expert count, picks per token, parameters of all its
    experts together."""

    index: int
    num_experts: int
    top_k: int
    params: int

    @property
    def expert_params(self) -> float:
        return self.params / self.num_experts


@dataclass(frozen=True)
class ModelCount:
    """What `fit` knows of a model: parameters by kind, the MoE layers, the KV cache elements per token, and
    (with the weights present) the checkpoint's real bytes by kind."""

    model_type: str
    params: dict[str, int]  # kind -> parameters (tied matrices counted once)
    moe_layers: tuple[MoELayerCount, ...]
    num_layers: int
    hidden_size: int
    vocab_size: int
    tied_embeddings: bool
    kv_full_layers: int  # layers whose cache grows with the context
    kv_window_layers: tuple[tuple[int, int], ...] = ()  # (layers, window) of sliding-window layers
    kv_elements_per_layer: int = 0  # cached elements per token per attention layer (keys and values)
    config_dtype: str | None = None  # the dtype config.json names (bf16, ...)
    checkpoint_bytes: dict[str, int] | None = None  # kind -> bytes of the safetensors files, when present
    checkpoint_params: int | None = None
    layer_checkpoint_bytes: dict[int, int] = field(default_factory=dict)  # MoE layer -> routed expert bytes on disk

    @property
    def total(self) -> int:
        return sum(self.params.values())

    @property
    def routed(self) -> int:
        return self.params["routed_experts"]

    @property
    def non_expert(self) -> int:
        return self.total - self.routed

    @property
    def active_routed(self) -> float:
        """Routed-expert parameters one token uses: top-k of E in every MoE layer."""
        return sum(m.expert_params * m.top_k for m in self.moe_layers)

    @property
    def active(self) -> float:
        """Parameters one token uses, the input embedding matrix included (the convention of most model cards:
        total minus the routed experts it does not pick)."""
        return self.non_expert + self.active_routed

    @property
    def active_without_input_embedding(self) -> float:
        """Active parameters with the input embedding left out (a lookup, not a matmul: the convention of the
        gpt-oss and DeepSeek model cards). With tied embeddings the matrix still counts, as the lm_head."""
        return self.active - (0 if self.tied_embeddings else self.params["embeddings"])

    def kv_elements(self, context: int) -> int:
        """KV-cache elements of one sequence at `context` tokens (sliding-window layers hold their window)."""
        tokens = self.kv_full_layers * context + sum(n * min(context, w) for n, w in self.kv_window_layers)
        return tokens * self.kv_elements_per_layer

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["moe_layers"] = [asdict(m) for m in self.moe_layers]
        return d | {"total": self.total, "active": self.active,
                    "active_without_input_embedding": self.active_without_input_embedding}


# ---- config.json ------------------------------------------------------------------------------------------

def read_config(model: str | Path) -> tuple[dict[str, Any], Path | None]:
    """config.json of a model folder or a cached hub id, as a dict, and the folder its weights would be in."""
    from lightmoe_cli.loading import resolve_model

    resolved = resolve_model(str(model))
    folder = Path(resolved)
    if folder.is_dir():
        path = folder / "config.json"
    else:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:  # pragma: no cover - transformers depends on it
            try_to_load_from_cache = None
        cached = try_to_load_from_cache(resolved, "config.json") if try_to_load_from_cache else None
        if not isinstance(cached, str):
            raise LightMoEError(f"no config.json for {model}: give a model folder, or a hub id in the local cache "
                                "(fit never downloads)")
        path, folder = Path(cached), Path(cached).parent
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LightMoEError(f"cannot read {path}: {e}") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise LightMoEError(f"{path} is not a transformers config.json (no model_type)")
    return config, folder


def _text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    text = config.get("text_config")
    return text if isinstance(text, Mapping) and config.get("hidden_size") is None else config


def meta_model(config: Mapping[str, Any]):
    """The model transformers builds from `config`, on the meta device (shapes, no storage).

    quantization_config and auto_map are dropped: fit counts the architecture, and the installed transformers'
    own class, never remote code."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = {k: v for k, v in config.items() if k not in ("quantization_config", "auto_map", "_name_or_path")}
    model_type = d.pop("model_type")
    try:
        cfg = AutoConfig.for_model(model_type, **d)
    except (ValueError, KeyError) as e:
        raise LightMoEError(f"model_type {model_type!r} is not an architecture the installed transformers knows "
                            f"({str(e).splitlines()[0][:120]})") from None
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise LightMoEError(f"transformers cannot build {model_type} from this config.json: "
                            f"{str(e).splitlines()[0][:200]}") from None


class _Classifier:
    """Kind of a parameter (or checkpoint key) by the module path it lies under."""

    def __init__(self, model, adapter, layers) -> None:
        names = {id(m): n for n, m in model.named_modules()}
        self.routed: list[tuple[str, int]] = []  # (experts module path + ".", layer index)
        self.prefixes: list[tuple[str, str]] = []  # (module path + ".", kind), longest first
        for layer in layers:
            self.routed.append((names[id(layer.experts)] + ".", layer.layer_index))
            self.prefixes.append((names[id(layer.router)] + ".", "router"))
            if layer.shared_experts is not None:
                self.prefixes.append((names[id(layer.shared_experts)] + ".", "shared_experts"))
            for child, module in layer.block.named_children():
                if "shared" in child and module is not layer.shared_experts:  # Qwen2-MoE's shared_expert_gate
                    self.prefixes.append((f"{names[id(layer.block)]}.{child}.", "shared_experts"))
        emb, out = model.get_input_embeddings(), model.get_output_embeddings()
        if emb is not None:
            self.prefixes.append((names[id(emb)] + ".", "embeddings"))
        if out is not None and out is not emb:
            self.prefixes.append((names[id(out)] + ".", "lm_head"))
        self.prefixes.sort(key=lambda p: -len(p[0]))
        self.moe_indices = {li for _, li in self.routed}

    def __call__(self, name: str) -> tuple[str, int | None]:
        for prefix, li in self.routed:
            if name.startswith(prefix):
                return "routed_experts", li
        for prefix, kind in self.prefixes:
            if name.startswith(prefix):
                return kind, None
        m = _LAYER.findall(name)
        index = int(m[-1]) if m else None
        if ".experts." in name and index is not None:  # a checkpoint's per-expert keys (experts.3.w1.weight)
            return "routed_experts", index
        if "shared_expert" in name:
            return "shared_experts", None
        if "embed" in name and index is None:
            return "embeddings", None
        if name.startswith("lm_head"):
            return "lm_head", None
        if "attn" in name or "attention" in name:
            return "attention", None
        if index is not None and ("mlp" in name or "feed_forward" in name or "ffn" in name):
            return ("router" if name.rsplit(".", 2)[-2] in ("gate", "router") and index in self.moe_indices
                    else "dense_mlp"), None
        return "other", None


def count_model(config: Mapping[str, Any], folder: Path | None = None) -> ModelCount:
    """Parameters by kind of the model `config` describes, counted on the meta device; with `folder` holding
    safetensors weights, their bytes by kind too (headers only)."""
    from lightmoe_cli.errors import UnsupportedModelError
    from lightmoe_cli.models import get_adapter

    model = meta_model(config)
    try:
        adapter = get_adapter(model)
    except UnsupportedModelError:
        raise LightMoEError(f"{config.get('model_type')} ({type(model).__name__}) is not a Mixture-of-Experts "
                            "model: it has no routed experts, so there is nothing for fit to place") from None
    layers = adapter.moe_layers(model)
    classify = _Classifier(model, adapter, layers)
    params = dict.fromkeys(KINDS, 0)
    per_layer: dict[int, int] = {}
    for name, p in model.named_parameters():  # tied matrices once
        kind, li = classify(name)
        params[kind] += p.numel()
        if li is not None:
            per_layer[li] = per_layer.get(li, 0) + p.numel()
    moe = tuple(MoELayerCount(m.layer_index, m.num_experts, m.top_k, per_layer.get(m.layer_index, 0))
                for m in layers)
    text = _text_config(config)
    full, windows, per_layer_kv = _kv_layout(text, model)
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    dtype = text.get("dtype") or text.get("torch_dtype") or config.get("torch_dtype")
    count = ModelCount(
        model_type=str(config["model_type"]), params=params, moe_layers=moe,
        num_layers=int(text.get("num_hidden_layers") or len(_decoder_layers(model))),
        hidden_size=int(text.get("hidden_size") or emb.weight.shape[1]),
        vocab_size=int(emb.weight.shape[0]), tied_embeddings=out is None or out.weight is emb.weight,
        kv_full_layers=full, kv_window_layers=windows, kv_elements_per_layer=per_layer_kv,
        config_dtype=_CONFIG_DTYPES.get(str(dtype)) if dtype else None)
    if folder is not None:
        count = _with_checkpoint(count, folder, classify)
    return count


def _decoder_layers(model) -> list:
    inner = getattr(model, "model", model)
    return list(getattr(inner, "layers", []))


def _kv_layout(c: Mapping[str, Any], model) -> tuple[int, tuple[tuple[int, int], ...], int]:
    """(layers with a full cache, (layers, window) with a sliding one, elements per token per layer) from the
    config: MLA caches keys and values per head as transformers stores them (not an absorbed kernel's latent);
    linear-attention / SSM layers keep a fixed state, not counted per token."""
    layers = int(c.get("num_hidden_layers") or len(_decoder_layers(model)))
    heads = int(c.get("num_attention_heads") or 1)
    if c.get("kv_lora_rank") is not None:
        per = heads * (int(c["qk_nope_head_dim"]) + int(c["qk_rope_head_dim"]) + int(c["v_head_dim"]))
    else:
        head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
        per = 2 * int(c.get("num_key_value_heads") or heads) * head_dim
    types = c.get("layer_types")
    if not isinstance(types, list) or len(types) != layers:
        window = c.get("sliding_window") if c.get("use_sliding_window") else None
        return (0, ((layers, int(window)),), per) if window else (layers, (), per)
    full = sum(t in ("full_attention", "attention") for t in types)
    sliding = sum(t in ("sliding_attention", "chunked_attention") for t in types)
    window = int(c.get("sliding_window") or c.get("attention_chunk_size") or 0)
    if sliding and not window:
        full, sliding = full + sliding, 0
    return full, ((sliding, window),) if sliding else (), per


# ---- safetensors headers ----------------------------------------------------------------------------------

def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a model folder: those its index names, else every *.safetensors in it."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError):
            raise LightMoEError(f"{index} is not a safetensors index (no weight_map)") from None
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def read_header(path: Path) -> dict[str, Any]:
    """A safetensors file's header (tensor name -> dtype, shape, data_offsets), read without any tensor."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 0 < n < 100_000_000:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise LightMoEError(f"cannot read the safetensors header of {path}: {e}") from None
    header.pop("__metadata__", None)
    return header


def _with_checkpoint(count: ModelCount, folder: Path, classify: _Classifier) -> ModelCount:
    files = [p for p in safetensors_files(folder) if p.is_file()]
    if not files:
        return count
    by_kind = dict.fromkeys(KINDS, 0)
    per_layer: dict[int, int] = {}
    n_params = 0
    for path in files:
        for name, meta in read_header(path).items():
            start, end = meta["data_offsets"]
            kind, li = classify(name)
            by_kind[kind] += end - start
            if li is not None:
                per_layer[li] = per_layer.get(li, 0) + end - start
            n = 1
            for s in meta["shape"]:
                n *= s
            n_params += n
    return ModelCount(**{**count.__dict__, "checkpoint_bytes": by_kind, "checkpoint_params": n_params,
                         "layer_checkpoint_bytes": per_layer})
