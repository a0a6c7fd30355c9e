"""Bytes read (and FLOPs done) per token by an MoE model, by kind of weight: the physical bound on a speed-up.

Why: a decode step on a CPU (or any device at batch 1) is memory-bound: its time is at least the bytes it reads
divided by the memory bandwidth. Halving the activated experts halves only the routed experts' bytes; the lm_head,
attention and shared experts are read all the same. So `speedup_bound(full, half)` says how much faster the half
configuration can decode at most, and a measured ratio above it is noise or a different code path, not a result.
Prefill reads each weight once for many tokens and is compute-bound: its bound is the ratio of FLOPs per token.

The bound assumes every kind of read is served at the same effective bandwidth (the baseline's expert path is not
slower per byte than its lm_head). A baseline that runs far below the bandwidth limit leaves room to beat the bound
by removing overhead, which is why benchmarks print each configuration's fraction of the bandwidth limit beside it.

Everything here is pure: shapes come from a transformers config object or its config.json dict, so a later
`lightmoe fit` can size a model without loading it. Norms and biases are ignored (vectors, not matrices).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

DTYPE_BYTES = {"float32": 4, "float": 4, "float64": 8, "bfloat16": 2, "float16": 2, "half": 2, "float8_e4m3fn": 1,
               "float8_e5m2": 1, "int8": 1}


@dataclass(frozen=True)
class AttentionShape:
    """One attention layer's weights and what it reads per token of context.

    params: weight elements of the layer (q/k/v/o, or MLA's low-rank projections);
    cache_elements: KV-cache elements stored per token of context (what each decoded token reads per past token);
    score_dim: multiply-adds per query per key, over all heads (QK^T and AV together).
    """

    params: int
    cache_elements: int
    score_dim: int

    @classmethod
    def gqa(cls, hidden: int, heads: int, kv_heads: int, head_dim: int) -> AttentionShape:
        """q and o: heads x head_dim; k and v: kv_heads x head_dim (grouped-query attention; MHA when equal)."""
        q = heads * head_dim
        kv = kv_heads * head_dim
        return cls(params=hidden * q + 2 * hidden * kv + q * hidden, cache_elements=2 * kv, score_dim=2 * q)

    @classmethod
    def mla(cls, hidden: int, heads: int, q_lora_rank: int | None, kv_lora_rank: int, qk_nope_head_dim: int,
            qk_rope_head_dim: int, v_head_dim: int) -> AttentionShape:
        """DeepSeek's multi-head latent attention: q through an optional low rank, k/v from a shared latent of
        kv_lora_rank plus one rope key. The cache is counted as transformers stores it (keys and values expanded
        per head), not the latent an absorbed-matrix kernel would keep."""
        qk = qk_nope_head_dim + qk_rope_head_dim
        q = hidden * heads * qk if q_lora_rank is None else hidden * q_lora_rank + q_lora_rank * heads * qk
        kv_a = hidden * (kv_lora_rank + qk_rope_head_dim)
        kv_b = kv_lora_rank * heads * (qk_nope_head_dim + v_head_dim)
        o = heads * v_head_dim * hidden
        return cls(params=q + kv_a + kv_b + o, cache_elements=heads * (qk + v_head_dim),
                   score_dim=heads * (qk + v_head_dim))


@dataclass(frozen=True)
class ModelShape:
    """What decides a decoder-only MoE model's weight traffic; built once from its config (`shape_from_config`)."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    moe_layers: tuple[int, ...]  # indices of the layers with routed experts; the others have a dense MLP
    attention: AttentionShape  # the same in every layer
    num_experts: int  # routed experts per MoE layer
    top_k: int  # experts each token activates per MoE layer
    expert_intermediate: int
    dense_intermediate: int = 0  # MLP width of the non-MoE layers
    shared_intermediate: int = 0  # total width of the shared experts of an MoE layer (0: none)
    shared_gate: bool = False  # Qwen2-MoE: a hidden -> 1 gate scales the shared expert's output
    gated: bool = True  # gate, up and down matrices (SwiGLU); False: up and down only
    tie_embeddings: bool = False
    bytes_per_param: float = 4.0

    def __post_init__(self) -> None:
        bad = [li for li in self.moe_layers if not 0 <= li < self.num_layers]
        if bad:
            raise ValueError(f"MoE layers {bad} outside the model's {self.num_layers} layers")
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"top-k {self.top_k} must lie in 1..{self.num_experts} (the routed experts)")

    @property
    def matrices(self) -> int:
        return 3 if self.gated else 2

    @property
    def expert_params(self) -> int:
        return self.matrices * self.hidden_size * self.expert_intermediate

    @property
    def dense_layers(self) -> int:
        return self.num_layers - len(self.moe_layers)

    def ks(self, active_per_layer: Mapping[int, float] | float | None) -> dict[int, float]:
        """Experts each token activates per MoE layer: None -> the model's top-k everywhere; a number -> that k in
        every MoE layer (a count, possibly a mean such as 3.5, not a fraction); a mapping -> k per layer, every MoE
        layer given (JSON's string keys accepted)."""
        if active_per_layer is None:
            return {li: float(self.top_k) for li in self.moe_layers}
        if isinstance(active_per_layer, (int, float)):
            ks = {li: float(active_per_layer) for li in self.moe_layers}
        else:
            ks = {int(li): float(k) for li, k in active_per_layer.items()}
            unknown = sorted(set(ks) - set(self.moe_layers))
            missing = sorted(set(self.moe_layers) - set(ks))
            if unknown or missing:
                raise ValueError(f"k per layer must name exactly the MoE layers {list(self.moe_layers)}: "
                                 f"unknown {unknown}, missing {missing}")
        bad = {li: k for li, k in ks.items() if not 0 <= k <= self.num_experts}
        if bad:
            raise ValueError(f"k {bad} outside 0..{self.num_experts} experts per layer")
        return ks


@dataclass(frozen=True)
class BytesRecord:
    """Bytes read per token, by kind of weight (or, as FlopsRecord, FLOPs per token by the same kinds).

    embedding: the token's row of the input embedding; lm_head: the vocab x hidden output matrix (read for the
    logits even when tied to the embedding); attention: q/k/v/o of every layer; router: the routers' E x hidden
    matrices; dense_mlp: the MLP of non-MoE layers; shared_experts: the always-on experts; routed_experts: the
    activated experts; kv_cache: the cached keys and values a decoded token attends to.
    """

    embedding: float = 0.0
    lm_head: float = 0.0
    attention: float = 0.0
    router: float = 0.0
    dense_mlp: float = 0.0
    shared_experts: float = 0.0
    routed_experts: float = 0.0
    kv_cache: float = 0.0

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in fields(self))

    def to_json(self) -> dict[str, float]:
        return asdict(self) | {"total": self.total}


@dataclass(frozen=True)
class FlopsRecord(BytesRecord):
    """FLOPs per token by kind (2 per multiply-add); kv_cache stays 0: attention scores count under attention."""


def expected_distinct(num_experts: int, k: float, tokens: int) -> float:
    """Expected number of distinct experts `tokens` tokens touch in a layer when each picks k of E uniformly:
    E x (1 - (1 - k/E)^B). Skewed routing touches fewer, so this is the most a batch can read on average; at
    B = 1 it is k."""
    if tokens < 1:
        raise ValueError(f"tokens per forward must be >= 1, got {tokens}")
    if k <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - min(k, num_experts) / num_experts) ** tokens)


def decode_bytes(shape: ModelShape, active_per_layer: Mapping[int, float] | float | None, batch: int = 1,
                 context: int = 0) -> BytesRecord:
    """Bytes read per decoded token, by kind, when `batch` sequences decode together (one forward per step).

    Every weight matrix a step needs is read once per step and shared by the batch's tokens, so each kind's bytes
    per token are its bytes per step / batch. Routed experts: a step reads the distinct experts its tokens picked,
    at most min(E, B x k) per layer; we take the expected count under uniform routing, E x (1 - (1 - k/E)^B)
    (`expected_distinct`), exact at batch 1. `context`: tokens already cached per sequence; each sequence reads
    its own cache, so that term is not shared.
    """
    ks = shape.ks(active_per_layer)
    b, h, per = batch, shape.hidden_size, shape.bytes_per_param
    n_moe = len(shape.moe_layers)
    routed = sum(expected_distinct(shape.num_experts, k, b) for k in ks.values()) * shape.expert_params
    shared = n_moe * (shape.matrices * h * shape.shared_intermediate + (h if shape.shared_gate else 0))
    return BytesRecord(
        embedding=h * per,  # each token's own row
        lm_head=shape.vocab_size * h * per / b,
        attention=shape.num_layers * shape.attention.params * per / b,
        router=n_moe * shape.num_experts * h * per / b,
        dense_mlp=shape.dense_layers * shape.matrices * h * shape.dense_intermediate * per / b,
        shared_experts=shared * per / b,
        routed_experts=routed * per / b,
        kv_cache=shape.num_layers * shape.attention.cache_elements * context * per,
    )


def prefill_bytes(shape: ModelShape, active_per_layer: Mapping[int, float] | float | None,
                  tokens: int) -> BytesRecord:
    """Bytes read per prompt token when a prompt of `tokens` tokens is one forward: the weights once for all of
    them (experts: the expected distinct ones). Small next to the compute, which is why prefill ratios are bounded
    by `prefill_flops`, not by these bytes."""
    return decode_bytes(shape, active_per_layer, batch=tokens, context=0)


def token_flops(shape: ModelShape, active_per_layer: Mapping[int, float] | float | None, context: float = 0.0,
                logits: bool = True) -> FlopsRecord:
    """FLOPs of one token's forward, by kind: 2 per weight it multiplies (its own k experts, whatever the batch)
    plus attention over `context` keys. `logits`: whether this token's logits are computed (transformers computes
    them at every prompt position unless told to keep the last only; lightmoe's generation does compute them)."""
    ks = shape.ks(active_per_layer)
    h = shape.hidden_size
    n_moe = len(shape.moe_layers)
    att = shape.attention
    shared = n_moe * (shape.matrices * h * shape.shared_intermediate + (h if shape.shared_gate else 0))
    return FlopsRecord(
        lm_head=2.0 * shape.vocab_size * h if logits else 0.0,
        attention=shape.num_layers * (2.0 * att.params + 2.0 * att.score_dim * context),
        router=2.0 * n_moe * shape.num_experts * h,
        dense_mlp=2.0 * shape.dense_layers * shape.matrices * h * shape.dense_intermediate,
        shared_experts=2.0 * shared,
        routed_experts=2.0 * sum(ks.values()) * shape.expert_params,
    )


def prefill_flops(shape: ModelShape, active_per_layer: Mapping[int, float] | float | None, tokens: int,
                  logits_every_token: bool = True) -> FlopsRecord:
    """FLOPs per prompt token of a causal prefill of `tokens` tokens: each query attends to (tokens + 1) / 2 keys
    on average. The bound on a prefill speed-up is the ratio of these (prefill is compute-bound), assuming every
    kind runs at the same FLOP rate; small per-expert GEMMs run slower than the lm_head's, so a ratio above this
    bound says the expert path's efficiency changed, which must be shown, not assumed."""
    per = token_flops(shape, active_per_layer, context=(tokens + 1) / 2, logits=True)
    if logits_every_token:
        return per
    return FlopsRecord(**(asdict(per) | {"lm_head": per.lm_head / tokens}))


def model_bytes(shape: ModelShape) -> BytesRecord:
    """The whole model's weight bytes by kind (every routed expert; lm_head 0 when tied to the embedding)."""
    h, per = shape.hidden_size, shape.bytes_per_param
    n_moe = len(shape.moe_layers)
    shared = n_moe * (shape.matrices * h * shape.shared_intermediate + (h if shape.shared_gate else 0))
    return BytesRecord(
        embedding=shape.vocab_size * h * per,
        lm_head=0.0 if shape.tie_embeddings else shape.vocab_size * h * per,
        attention=shape.num_layers * shape.attention.params * per,
        router=n_moe * shape.num_experts * h * per,
        dense_mlp=shape.dense_layers * shape.matrices * h * shape.dense_intermediate * per,
        shared_experts=shared * per,
        routed_experts=n_moe * shape.num_experts * shape.expert_params * per,
    )


def speedup_bound(baseline: BytesRecord, config: BytesRecord) -> float:
    """How many times faster `config` can be than `baseline` when time is proportional to the cost (bytes for
    decode, FLOPs for prefill): the ratio of their totals. inf when the configuration costs nothing."""
    if type(baseline) is not type(config):
        raise TypeError(f"cannot compare {type(baseline).__name__} with {type(config).__name__}")
    return baseline.total / config.total if config.total else math.inf


# --- from a transformers config --------------------------------------------------------------------------------

_EXPERTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K = ("num_experts_per_tok", "experts_per_token", "moe_topk", "moe_top_k")


def _get(cfg: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        v = cfg.get(n)
        if v is not None:
            return v
    return default


def _as_dict(config: Any) -> dict[str, Any]:
    """A config object or dict as a dict, aliases resolved (transformers maps e.g. num_experts to
    num_local_experts by `attribute_map`, which to_dict() does not show) and a multimodal `text_config` unwrapped."""
    if isinstance(config, Mapping):
        d = dict(config)
    else:
        d = dict(config.to_dict()) if hasattr(config, "to_dict") else dict(vars(config))
        for name in (*_EXPERTS, *_TOP_K):
            if d.get(name) is None and getattr(config, name, None) is not None:
                d[name] = getattr(config, name)
    text = d.get("text_config")
    if text is not None and d.get("hidden_size") is None:
        return _as_dict(text)
    return d


def dtype_bytes(dtype: Any) -> float | None:
    """Bytes per parameter of a dtype written as in config.json ("bfloat16") or as a torch dtype."""
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    return DTYPE_BYTES.get(name)


def shape_from_config(config: Any, bytes_per_param: float | None = None) -> ModelShape:
    """A ModelShape from a transformers config (object or config.json dict) of OLMoE, Qwen2-MoE, Qwen3-MoE,
    Mixtral, DeepSeek-V2/V3 and the families that share their keys.

    `bytes_per_param`: the dtype the weights are served in (lightmoe loads float32 by default); None -> the
    config's dtype, float32 when it has none. Which layers are MoE: DeepSeek's first_k_dense_replace and
    moe_layer_freq; Qwen's mlp_only_layers and decoder_sparse_step; otherwise all. Expert width:
    moe_intermediate_size when given (intermediate_size is then the dense MLP), else intermediate_size.
    """
    c = _as_dict(config)
    hidden, layers = int(c["hidden_size"]), int(c["num_hidden_layers"])
    experts = _get(c, *_EXPERTS)
    top_k = _get(c, *_TOP_K)
    if not experts or not top_k:
        raise ValueError(f"not an MoE config ({c.get('model_type', 'unknown type')}): no expert count "
                         f"({'/'.join(_EXPERTS)}) or top-k ({'/'.join(_TOP_K)})")
    if c.get("first_k_dense_replace") is not None or c.get("n_routed_experts") is not None:  # DeepSeek
        first, freq = int(c.get("first_k_dense_replace") or 0), int(c.get("moe_layer_freq") or 1)
        moe = tuple(li for li in range(layers) if li >= first and li % freq == 0)
    else:  # Qwen2/3-MoE keys; absent elsewhere, which makes every layer MoE
        dense_only = set(c.get("mlp_only_layers") or [])
        step = int(c.get("decoder_sparse_step") or 1)
        moe = tuple(li for li in range(layers) if li not in dense_only and (li + 1) % step == 0)
    moe_width = c.get("moe_intermediate_size")
    expert_width = int(moe_width if moe_width is not None else c["intermediate_size"])
    dense_width = int(c.get("intermediate_size") or 0) if moe_width is not None else int(c["intermediate_size"])
    shared = int(c.get("shared_expert_intermediate_size") or 0)
    if not shared and c.get("n_shared_experts"):
        shared = int(c["n_shared_experts"]) * expert_width
    heads = int(c["num_attention_heads"])
    if c.get("kv_lora_rank") is not None:
        attention = AttentionShape.mla(hidden, heads, c.get("q_lora_rank"), int(c["kv_lora_rank"]),
                                       int(c["qk_nope_head_dim"]), int(c["qk_rope_head_dim"]), int(c["v_head_dim"]))
    else:
        head_dim = int(c.get("head_dim") or hidden // heads)
        attention = AttentionShape.gqa(hidden, heads, int(c.get("num_key_value_heads") or heads), head_dim)
    if bytes_per_param is None:
        bytes_per_param = dtype_bytes(_get(c, "dtype", "torch_dtype")) or 4.0
    return ModelShape(vocab_size=int(c["vocab_size"]), hidden_size=hidden, num_layers=layers, moe_layers=moe,
                      attention=attention, num_experts=int(experts), top_k=int(top_k), expert_intermediate=expert_width,
                      dense_intermediate=dense_width if len(moe) < layers else 0, shared_intermediate=shared,
                      shared_gate=bool(c.get("shared_expert_intermediate_size")),
                      tie_embeddings=bool(c.get("tie_word_embeddings", False)), bytes_per_param=float(bytes_per_param))
