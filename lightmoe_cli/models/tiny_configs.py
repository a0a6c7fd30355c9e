"""Tiny random configs for every MoE architecture, so each adapter can be exercised in milliseconds.

Why generic rules first: the ~60 config classes share most key names (hidden_size, num_experts_per_tok, ...),
so one table of small values covers most of them. Per-layer lists (layer_types, mlp_layer_types) are cut to the
first entry plus the last few, which keeps a leading dense layer and a trailing full-attention layer.
Architectures whose defaults still do not fit get a small override entry in `_OVERRIDES` (one dict per
model_type, no code paths).
"""

from __future__ import annotations

from typing import Any

from lightmoe_cli.models.architectures import ArchInfo, find_architecture

NUM_LAYERS = 3
NUM_EXPERTS = 8
TOP_K = 2
VOCAB = 128

# Keys set wherever the default config has them (value is the tiny value).
_GENERIC: dict[str, Any] = {
    "vocab_size": VOCAB,
    "unpadded_vocab_size": VOCAB,
    "hidden_size": 64,
    "intermediate_size": 64,
    "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32,
    "shared_experts_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32,
    "shared_intermediate_size": 32,
    "dense_intermediate_size": 64,
    "intermediate_size_mlp": 64,
    "expert_ffn_hidden_size": 32,
    "ffn_hidden_size": 64,
    "num_hidden_layers": NUM_LAYERS,
    "num_layers": NUM_LAYERS,
    "n_layers": NUM_LAYERS,
    "num_attention_heads": 4,
    "head_dim": 16,
    "max_position_embeddings": 512,
    # experts and routing
    "num_local_experts": NUM_EXPERTS,
    "num_experts": NUM_EXPERTS,
    "n_routed_experts": NUM_EXPERTS,
    "moe_num_experts": NUM_EXPERTS,
    "num_experts_per_tok": TOP_K,
    "num_experts_per_token": TOP_K,
    "moe_topk": TOP_K,
    "moe_k": TOP_K,
    "top_k": TOP_K,
    "top_k_experts": TOP_K,
    "n_group": 2,
    "num_expert_group": 2,
    "topk_group": 1,
    "n_shared_experts": 1,
    "num_shared_experts": 1,
    "moe_num_shared_experts": 1,
    "first_k_dense_replace": 1,
    "num_dense_layers": 1,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
    "router_jitter_noise": 0.0,
    "input_jitter_noise": 0.0,
    # MLA (DeepSeek family)
    "q_lora_rank": 32,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 8,
    "qk_nope_head_dim": 8,
    "qk_head_dim": 16,
    "v_head_dim": 16,
    # sparse-attention indexers (DSA)
    "index_n_heads": 2,
    "index_head_dim": 16,
    "index_topk": 8,
    # linear attention / SSM blocks
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_heads": 2,
    "linear_head_dim": 16,
    "mamba_n_heads": 4,
    "mamba_num_heads": 4,
    "mamba_head_dim": 16,
    "mamba_d_head": 16,
    "mamba_d_state": 8,
    "ssm_state_size": 8,
    "mamba_n_groups": 1,
    "n_groups": 1,
    "mamba_dt_rank": 8,
    "mamba_chunk_size": 16,
    "chunk_size": 16,
    "swa_num_attention_heads": 4,
    "swa_head_dim": 16,
    "sliding_window": 16,
    "sliding_window_size": 16,
    # per-layer embeddings (Gemma 4)
    "vocab_size_per_layer_input": VOCAB,
    "hidden_size_per_layer_input": 8,
}

# Per model_type: values that the generic table gets wrong, applied after it.
_OVERRIDES: dict[str, dict[str, Any]] = {
    # DbrxAttention reads attn_config.rope_theta, which DbrxAttentionConfig does not declare.
    "dbrx": {
        "d_model": 64, "n_heads": 4, "max_seq_len": 512,
        "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0, "clip_qkv": 8.0},
        "ffn_config": {"ffn_hidden_size": 32, "moe_num_experts": NUM_EXPERTS, "moe_top_k": TOP_K},
    },
    "gemma4_text": {"enable_moe_block": True},
    # n_heads * d_head must equal expand * hidden_size; an all-Mamba stack breaks the cache's length query
    "granitemoehybrid": {"mamba_n_heads": 8, "layer_types": ["linear_attention", "full_attention", "linear_attention"]},
    "jamba": {"attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1},
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv"]},
    "qwen4_exp_text": {
        "indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16,
        "indexer_budget": 8, "indexer_compress_ratio": 4,
    },
    "longcat_flash": {"zero_expert_num": 2},  # identity experts (default 256)
    "zaya": {"num_experts_per_tok": 1, "router_hidden_size": 16},  # ZAYA supports top-1 routing only
}


def _shrink_per_layer_list(values: list, n: int) -> list:
    """n entries that keep the first one and every distinct kind (dense/sparse, linear/full attention).

    Order is preserved, so a leading dense layer stays first; the rest is filled from the end of the list.
    """
    if len(values) <= n:
        return list(values)
    keep = [0]
    for i, v in enumerate(values):
        if v not in [values[j] for j in keep] and len(keep) < n:
            keep.append(i)
    for i in range(len(values) - 1, -1, -1):
        if len(keep) >= n:
            break
        if i not in keep:
            keep.append(i)
    return [values[i] for i in sorted(keep)]


def _kv_heads(default_heads: int | None, default_kv: int | None, heads: int) -> int:
    """Keep the attention shape's spirit: MHA stays MHA, MQA stays MQA, GQA becomes 2 groups."""
    if default_kv is None or default_heads is None or default_kv == default_heads:
        return heads
    return 1 if default_kv == 1 else 2


def tiny_overrides(info: ArchInfo, defaults: dict[str, Any]) -> dict[str, Any]:
    """The config kwargs that make `info`'s architecture tiny, given its default config as a dict."""
    kwargs: dict[str, Any] = {k: v for k, v in _GENERIC.items() if k in defaults}
    n_layers = kwargs.get("num_hidden_layers", NUM_LAYERS)
    default_layers = defaults.get("num_hidden_layers") or defaults.get("num_layers")
    for key, value in defaults.items():
        if isinstance(value, list) and default_layers and len(value) == default_layers and key not in kwargs:
            kwargs[key] = _shrink_per_layer_list(value, n_layers)
        elif key == "per_layer_config" and isinstance(value, dict):
            kwargs[key] = {}
    for prefix in ("", "swa_"):
        if f"{prefix}num_key_value_heads" in defaults:
            kwargs[f"{prefix}num_key_value_heads"] = _kv_heads(
                defaults.get(f"{prefix}num_attention_heads"), defaults[f"{prefix}num_key_value_heads"],
                kwargs.get(f"{prefix}num_attention_heads", 4),
            )
    if defaults.get("head_dim") is not None and defaults.get("head_dim") == defaults.get("qk_rope_head_dim"):
        kwargs["head_dim"] = kwargs["qk_rope_head_dim"]  # MLA: the rotary embedding is sized by head_dim
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "eod_token_id"):
        value = defaults.get(key)
        if isinstance(value, int) and value >= VOCAB:
            kwargs[key] = {"pad_token_id": 0, "bos_token_id": 1}.get(key, 2)
        elif isinstance(value, list) and any(v >= VOCAB for v in value):
            kwargs[key] = [2]
    kwargs.update(_OVERRIDES.get(info.model_type, {}))
    return kwargs


def tiny_config(arch: str | ArchInfo) -> Any:
    """A tiny random-init config for `arch` (model_type, family or class name)."""
    info = arch if isinstance(arch, ArchInfo) else find_architecture(arch)
    config_class = info.load_config_class()
    defaults = config_class().to_dict()
    return config_class(**tiny_overrides(info, defaults))
