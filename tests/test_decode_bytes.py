"""Bytes per decoded token by kind against a hand count, and the families' configs against their real models.

Why: every speed ratio the benchmarks print sits beside a bound computed here; a wrong count would pass wrong
results or refuse right ones. The hand counts are written as arithmetic so each term can be checked by eye.
"""

import math

import pytest

from lightmoe_cli.analysis.decode_bytes import (
    AttentionShape,
    BytesRecord,
    FlopsRecord,
    decode_bytes,
    expected_distinct,
    model_bytes,
    prefill_bytes,
    prefill_flops,
    shape_from_config,
    speedup_bound,
    token_flops,
)

# vocab 100, hidden 8, 2 MoE layers of 4 experts (top-2, width 6), one Qwen2-MoE shared expert (width 6, with its
# hidden -> 1 gate), GQA with 2 query heads and 1 KV head of 4 dims, fp32
TINY = {"model_type": "qwen2_moe", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 2,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "num_experts": 4,
        "num_experts_per_tok": 2, "moe_intermediate_size": 6, "intermediate_size": 16,
        "shared_expert_intermediate_size": 6, "decoder_sparse_step": 1, "mlp_only_layers": [],
        "tie_word_embeddings": False, "dtype": "float32"}
F32 = 4
EXPERT = 3 * 8 * 6  # gate, up, down of one expert: 144 parameters
ATTENTION = 8 * (2 * 4) + 8 * (1 * 4) + 8 * (1 * 4) + (2 * 4) * 8  # q, k, v, o: 192 parameters


def test_tiny_shape_is_read_from_the_config():
    s = shape_from_config(TINY)
    assert s.moe_layers == (0, 1) and s.num_experts == 4 and s.top_k == 2 and s.expert_intermediate == 6
    assert s.shared_intermediate == 6 and s.shared_gate and s.bytes_per_param == 4
    assert s.attention.params == ATTENTION and s.expert_params == EXPERT


def test_dense_top_k_by_hand():
    got = decode_bytes(shape_from_config(TINY), None)
    want = BytesRecord(
        embedding=8 * F32,  # one row
        lm_head=100 * 8 * F32,
        attention=2 * ATTENTION * F32,
        router=2 * (4 * 8) * F32,
        dense_mlp=0,
        shared_experts=2 * (3 * 8 * 6 + 8) * F32,  # the shared expert and its gate, per layer
        routed_experts=2 * 2 * EXPERT * F32,  # 2 layers x top-2
    )
    assert got == want
    assert got.total == 32 + 3200 + 1536 + 256 + 1216 + 2304


def test_per_layer_k_by_hand():
    s = shape_from_config(TINY)
    got = decode_bytes(s, {0: 1, 1: 2})
    assert got.routed_experts == (1 + 2) * EXPERT * F32
    assert got.lm_head == 100 * 8 * F32 and got.attention == 2 * ATTENTION * F32  # the rest unchanged
    assert decode_bytes(s, {"0": 1, "1": 2}) == got  # JSON's string keys
    assert decode_bytes(s, 1.5).routed_experts == 2 * 1.5 * EXPERT * F32  # one k, a mean, for every layer
    full = decode_bytes(s, None)
    assert speedup_bound(full, got) == pytest.approx(full.total / (full.total - EXPERT * F32))


def test_bad_k_is_refused():
    s = shape_from_config(TINY)
    with pytest.raises(ValueError, match="missing"):
        decode_bytes(s, {0: 1})
    with pytest.raises(ValueError, match="unknown"):
        decode_bytes(s, {0: 1, 1: 1, 5: 1})
    with pytest.raises(ValueError, match="outside"):
        decode_bytes(s, 5)


def test_batch_shares_the_weights_and_counts_distinct_experts():
    s = shape_from_config(TINY)
    got = decode_bytes(s, None, batch=2)
    # 2 tokens each picking 2 of 4: expected distinct experts 4 x (1 - (1 - 2/4)^2) = 3 per layer
    assert expected_distinct(4, 2, 2) == 3
    assert got.routed_experts == 2 * 3 * EXPERT * F32 / 2
    assert got.lm_head == 100 * 8 * F32 / 2 and got.embedding == 8 * F32
    assert expected_distinct(4, 2, 1) == 2 and expected_distinct(4, 0, 9) == 0
    assert expected_distinct(64, 8, 10_000) == pytest.approx(64)


def test_kv_cache_and_flops():
    s = shape_from_config(TINY)
    assert decode_bytes(s, None, context=10).kv_cache == 2 * (2 * 1 * 4) * 10 * F32  # k and v, 1 KV head
    f = token_flops(s, None, context=3)
    assert isinstance(f, FlopsRecord) and f.kv_cache == 0
    assert f.routed_experts == 2 * 2 * 2 * EXPERT and f.lm_head == 2 * 100 * 8
    assert f.attention == 2 * (2 * ATTENTION + 2 * (2 * 2 * 4) * 3)  # weights + QK and AV over 3 keys, 2 heads
    p = prefill_flops(s, 1, tokens=5)
    assert p.attention == 2 * (2 * ATTENTION + 2 * (2 * 2 * 4) * 3)  # causal: (5 + 1) / 2 keys on average
    assert prefill_flops(s, None, 4, logits_every_token=False).lm_head == 2 * 100 * 8 / 4
    assert prefill_bytes(s, None, 2) == decode_bytes(s, None, batch=2)
    with pytest.raises(TypeError):
        speedup_bound(f, decode_bytes(s, None))


def test_model_bytes_and_tied_embeddings():
    s = shape_from_config(TINY | {"tie_word_embeddings": True, "dtype": "bfloat16"})
    m = model_bytes(s)
    assert s.bytes_per_param == 2 and m.lm_head == 0 and m.embedding == 100 * 8 * 2
    assert m.routed_experts == 2 * 4 * EXPERT * 2


OLMOE_2L = {"model_type": "olmoe", "vocab_size": 50304, "hidden_size": 2048, "intermediate_size": 1024,
            "num_hidden_layers": 2, "num_attention_heads": 16, "num_key_value_heads": 16, "num_experts": 64,
            "num_experts_per_tok": 8, "tie_word_embeddings": False}


def test_olmoe_shaped_benchmark_model():
    """The 1.05B model of `bench_runtime.py --random-olmoe 2` in fp32: ~0.95 GB per decoded token, so halving
    the experts can make decode at most ~1.27x faster."""
    s = shape_from_config(OLMOE_2L, bytes_per_param=4)
    full = decode_bytes(s, None)
    assert full.lm_head / 1e9 == pytest.approx(0.412, abs=0.001)
    assert full.attention / 1e9 == pytest.approx(0.134, abs=0.001)
    assert full.routed_experts / 1e9 == pytest.approx(0.403, abs=0.001)  # 16 experts of 25.2 MB
    assert full.total / 1e9 == pytest.approx(0.95, abs=0.005)
    half = decode_bytes(s, 4)
    assert speedup_bound(full, half) == pytest.approx(1.27, abs=0.005)
    assert sum(model_bytes(s).to_json()[k] for k in ("embedding", "lm_head", "attention", "router",
                                                     "routed_experts")) / 4 == pytest.approx(1.045e9, rel=0.01)


DEEPSEEK_V2_LITE = {"model_type": "deepseek_v2", "vocab_size": 102400, "hidden_size": 2048,
                    "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
                    "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2,
                    "n_routed_experts": 64, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
                    "moe_layer_freq": 1, "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "tie_word_embeddings": False,
                    "torch_dtype": "bfloat16"}


def test_deepseek_v2_lite_by_hand():
    s = shape_from_config(DEEPSEEK_V2_LITE)
    assert s.moe_layers == tuple(range(1, 27)) and s.dense_layers == 1 and s.bytes_per_param == 2
    mla = (2048 * 16 * (128 + 64)  # q_proj (no q low rank)
           + 2048 * (512 + 64)  # kv_a_proj_with_mqa
           + 512 * 16 * (128 + 128)  # kv_b_proj
           + 16 * 128 * 2048)  # o_proj
    assert s.attention.params == mla
    got = decode_bytes(s, None)
    assert got.attention == 27 * mla * 2
    assert got.dense_mlp == 3 * 2048 * 10944 * 2
    assert got.shared_experts == 26 * 3 * 2048 * (2 * 1408) * 2
    assert got.routed_experts == 26 * 6 * 3 * 2048 * 1408 * 2
    assert got.total / 1e9 == pytest.approx(4.90, abs=0.01)
    assert speedup_bound(got, decode_bytes(s, 3)) == pytest.approx(1.38, abs=0.01)


def test_attention_shapes():
    assert AttentionShape.gqa(8, 2, 2, 4).params == 4 * 8 * 8  # MHA: four hidden x hidden matrices
    low = AttentionShape.mla(8, 2, 4, 3, 2, 1, 2)
    assert low.params == 8 * 4 + 4 * 2 * 3 + 8 * (3 + 1) + 3 * 2 * (2 + 2) + 2 * 2 * 8


def _weights_of(model) -> int:
    """Matrix parameters of a real model (norms and biases, the vectors, are what the byte model ignores)."""
    return sum(p.numel() for p in model.parameters() if p.dim() >= 2)


@pytest.mark.parametrize("family", ["olmoe", "qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v2", "deepseek_v3"])
def test_config_families_count_their_real_models_weights(family):
    """shape_from_config on each family's transformers config counts the weights its modeling code builds."""
    import torch
    import transformers as tf

    small = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "tie_word_embeddings": False}
    configs = {
        "olmoe": lambda: tf.OlmoeConfig(**small, intermediate_size=8, num_experts=4, num_experts_per_tok=2),
        "qwen2_moe": lambda: tf.Qwen2MoeConfig(**small, intermediate_size=24, moe_intermediate_size=8,
                                               shared_expert_intermediate_size=12, num_experts=4,
                                               num_experts_per_tok=2, mlp_only_layers=[1]),
        "qwen3_moe": lambda: tf.Qwen3MoeConfig(**small, head_dim=6, intermediate_size=24, moe_intermediate_size=8,
                                               num_experts=4, num_experts_per_tok=2, decoder_sparse_step=2),
        "mixtral": lambda: tf.MixtralConfig(**small, intermediate_size=8, num_local_experts=4,
                                            num_experts_per_tok=2),
        "deepseek_v2": lambda: tf.DeepseekV2Config(**small, intermediate_size=24, moe_intermediate_size=8,
                                                   n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=2,
                                                   first_k_dense_replace=1, q_lora_rank=None, kv_lora_rank=6,
                                                   qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4,
                                                   n_group=1, topk_group=1),
        "deepseek_v3": lambda: tf.DeepseekV3Config(**small, intermediate_size=24, moe_intermediate_size=8,
                                                   n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1,
                                                   first_k_dense_replace=1, q_lora_rank=5, kv_lora_rank=6,
                                                   qk_nope_head_dim=4, qk_rope_head_dim=2, v_head_dim=4,
                                                   n_group=1, topk_group=1),
    }
    cfg = configs[family]()
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    for source in (cfg, cfg.to_dict()):
        s = shape_from_config(source, bytes_per_param=1)
        assert model_bytes(s).total == _weights_of(model), family
        assert s.top_k == 2 and s.num_experts == 4
    assert math.isclose(speedup_bound(decode_bytes(s, None), decode_bytes(s, None)), 1.0)
