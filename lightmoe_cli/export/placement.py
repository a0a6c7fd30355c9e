"""Placement rules for engines that keep the full model: llama.cpp's `--override-tensor` (-ot) rules and a vLLM
expert-list JSON (pure: plans in, text/JSON out).

llama.cpp stores all experts of a layer as one tensor per projection (`blk.N.ffn_{gate,up,down}_exps.weight`), so
-ot can place whole layers' experts, not single experts: the layers where the bundle's resident set covers the
least calibration gate mass (where dropping experts would hurt most) go on the GPU first, as many as
`--gpu-memory` holds; the rest are overridden to CPU.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerCost:
    layer_index: int
    expert_bytes: int  # all of the layer's experts, as the GGUF stores them
    covered_mass: float  # share of calibration gate mass on the bundle's resident set


def gpu_layers(layers: list[LayerCost], gpu_bytes: int) -> list[int]:
    """Layers whose experts fit on the GPU, least-covered first (ties: lower index)."""
    chosen, used = [], 0
    for lc in sorted(layers, key=lambda lc: (lc.covered_mass, lc.layer_index)):
        if used + lc.expert_bytes <= gpu_bytes:
            chosen.append(lc.layer_index)
            used += lc.expert_bytes
    return sorted(chosen)


def override_rule(cpu_layers: list[int]) -> str | None:
    """The -ot rule sending these layers' expert tensors to CPU (None when every layer stays on the GPU)."""
    if not cpu_layers:
        return None
    alt = "|".join(str(i) for i in sorted(cpu_layers))
    return rf"blk\.({alt})\.ffn_(gate|up|down)_exps\.weight=CPU"


# HF architecture -> the architecture llama.cpp's converter gives its GGUF (general.architecture): the prefix of
# the `<arch>.expert_used_count` key an activation budget overrides (from convert_hf_to_gguf's registrations and
# gguf-py's MODEL_ARCH_NAMES; Mixtral is converted as llama)
GGUF_ARCH = {
    "MixtralForCausalLM": "llama", "Qwen2MoeForCausalLM": "qwen2moe", "Qwen3MoeForCausalLM": "qwen3moe",
    "OlmoeForCausalLM": "olmoe", "DeepseekV2ForCausalLM": "deepseek2", "DeepseekV3ForCausalLM": "deepseek2",
    "PhimoeForCausalLM": "phimoe", "PhiMoEForCausalLM": "phimoe", "GptOssForCausalLM": "gpt-oss",
    "JambaForCausalLM": "jamba", "Ernie4_5_MoeForCausalLM": "ernie4_5-moe", "Glm4MoeForCausalLM": "glm4moe",
    "DbrxForCausalLM": "dbrx", "GraniteMoeForCausalLM": "granitemoe", "GraniteMoeSharedForCausalLM": "granitemoe",
    "HunYuanMoEV1ForCausalLM": "hunyuan-moe", "BailingMoeForCausalLM": "bailingmoe",
    "BailingMoeV2ForCausalLM": "bailingmoe2", "Lfm2MoeForCausalLM": "lfm2moe", "Llama4ForCausalLM": "llama4",
    "Llama4ForConditionalGeneration": "llama4",
}


def gguf_architecture(hf_architecture: str) -> str:
    """The GGUF architecture of a model class, or a one-line refusal naming --gguf-arch."""
    from lightmoe_cli.errors import LightMoEError

    if hf_architecture not in GGUF_ARCH:
        raise LightMoEError(f"lightmoe does not know the GGUF architecture of {hf_architecture} (the prefix of "
                            "its expert_used_count key): give --gguf-arch, your GGUF's general.architecture")
    return GGUF_ARCH[hf_architecture]


def experts_override(arch: str, experts_per_token: int) -> str:
    """llama.cpp's `--override-kv` value that makes every token use `experts_per_token` experts."""
    return f"{arch}.expert_used_count=int:{experts_per_token}"


def llamacpp_command(gguf: str, rule: str | None, override_kv: str | None = None) -> str:
    """The llama.cpp server command line: every layer offloaded (-ngl 99), expert tensors overridden by the rule,
    and the experts per token overridden when the bundle has an activation budget."""
    ot = f' -ot "{rule}"' if rule else ""
    kv = f" --override-kv {override_kv}" if override_kv else ""
    return f"llama-server -m {gguf} -ngl 99{ot}{kv}"


def vllm_profile(model: str, num_experts: dict[int, int], kept: dict[int, list[int]],
                 task_kept: dict[str, dict[int, list[int]]], bundle_sha256: str, activation=None) -> dict:
    """Per-layer kept expert ids (and per-task sets) as plain JSON a loader can read, with the bundle's
    activation budget (an ActivationPlan) when it has one: every layer's experts per token, and a per-token
    rule's parameters (NAEE's thresholds, Alloc-T's pooled base)."""
    out = {"kind": "lightmoe-expert-selection", "format": "lightmoe-expert-selection", "version": 1,
           "model": model, "bundle_manifest_sha256": bundle_sha256,
           "num_experts": {str(k): v for k, v in sorted(num_experts.items())},
           "kept_experts": {str(k): v for k, v in sorted(kept.items())},
           "task_kept_experts": {t: {str(k): v for k, v in sorted(s.items())} for t, s in sorted(task_kept.items())},
           "experts_per_token": None, "activation": None}
    if activation is not None:
        out["experts_per_token"] = {str(k): v for k, v in sorted(activation.k.items())}
        out["activation"] = {"rule": activation.rule, "active": activation.active, "budget": activation.budget,
                             "drop_below_first_weight": {str(k): v for k, v in sorted(activation.beta.items())}
                             if activation.beta else None,
                             "pooled_base": activation.pooled_base}
    return out
