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


def llamacpp_command(gguf: str, rule: str | None) -> str:
    """The llama.cpp server command line: every layer offloaded (-ngl 99), expert tensors overridden by the rule."""
    ot = f' -ot "{rule}"' if rule else ""
    return f"llama-server -m {gguf} -ngl 99{ot}"


def vllm_profile(model: str, num_experts: dict[int, int], kept: dict[int, list[int]],
                 task_kept: dict[str, dict[int, list[int]]], bundle_sha256: str) -> dict:
    """Per-layer kept expert ids (and per-task sets) as plain JSON a loader can read."""
    return {"format": "lightmoe-expert-selection", "version": 1, "model": model,
            "bundle_manifest_sha256": bundle_sha256,
            "num_experts": {str(k): v for k, v in sorted(num_experts.items())},
            "kept_experts": {str(k): v for k, v in sorted(kept.items())},
            "task_kept_experts": {t: {str(k): v for k, v in sorted(s.items())} for t, s in sorted(task_kept.items())}}
