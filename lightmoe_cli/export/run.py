"""Orchestration of `lightmoe export`: bundle + format -> files, each format's one function."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lightmoe_cli.errors import LightMoEError

FORMATS = ("hf", "gguf", "llamacpp-ot", "vllm-profile")


@dataclass
class ExportRequest:
    bundle: Path
    format: str
    out: Path
    task: str | None = None
    static: bool = False
    gpu_memory: int | None = None  # llamacpp-ot: bytes of GPU memory for expert tensors
    weight_bits: float | None = None  # llamacpp-ot: bits per expert weight in the GGUF (default: the bundle's)
    gguf_name: str = "model.gguf"  # llamacpp-ot: the GGUF path written into the command line
    outtype: str = "f32"  # gguf: tensor type (f32, f16, bf16, q8_0)
    converter: Path | None = None  # gguf: a llama.cpp source folder (default .cache/llama.cpp)


@dataclass
class ExportResult:
    out: Path
    lines: list[str]  # what to tell the user (sizes, the command to run)


def _selection(bundle, req: ExportRequest):
    from lightmoe_cli.export.selection import select

    m = bundle.manifest
    return select(bundle.policy, {lp.layer_index: lp.resident for lp in bundle.layers}, m.task_resident,
                  m.runtime.manager is not None or m.runtime.task_given, req.task, req.static)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def run_export(req: ExportRequest) -> ExportResult:
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.files import atomic_write, sha256_file

    if req.format not in FORMATS:
        raise LightMoEError(f"unknown --format {req.format!r}; formats: {', '.join(FORMATS)}")
    bundle = load_bundle(req.bundle)
    sha = sha256_file(bundle.path / "manifest.json")
    if req.format == "vllm-profile":
        from lightmoe_cli.export.placement import vllm_profile

        sel = _selection(bundle, req) if (req.task or req.static or bundle.manifest.runtime.manager is None) \
            else None
        kept = sel.kept if sel else {lp.layer_index: lp.resident for lp in bundle.layers}
        payload = vllm_profile(bundle.manifest.model.name_or_path, {lp.layer_index: lp.num_experts
                                                                    for lp in bundle.layers},
                               kept, bundle.manifest.task_resident, sha)
        atomic_write(req.out, json.dumps(payload, indent=1))
        return ExportResult(req.out, [f"{sum(map(len, kept.values()))} kept experts over {len(kept)} layers"])
    if req.format == "llamacpp-ot":
        return _llamacpp_ot(bundle, req, sha)
    sel = _selection(bundle, req)
    if req.format == "hf":
        from lightmoe_cli.export.hf import export_hf

        export_hf(bundle, sel, req.out)
        return ExportResult(req.out, _size_lines(bundle, req.out))
    from lightmoe_cli.export.gguf import export_gguf

    export_gguf(bundle, sel, req.out, req.outtype, req.converter)
    return ExportResult(req.out, _size_lines(bundle, req.out))


def _size_lines(bundle, out: Path) -> list[str]:
    expert = bundle.manifest.budget.all_expert_bytes
    original = expert + (bundle.path / "model" / "non_expert.safetensors").stat().st_size
    size = _size(out)
    return [f"export {size / 2**20:.1f} MiB vs original weights {original / 2**20:.1f} MiB "
            f"({size / original:.0%})"]


def _llamacpp_ot(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.placement import LayerCost, gpu_layers, llamacpp_command, override_rule
    from lightmoe_cli.files import atomic_write

    if req.gpu_memory is None:
        raise LightMoEError("--format llamacpp-ot needs --gpu-memory (e.g. 8GiB): the GPU memory for expert tensors")
    _selection(bundle, req)  # the same refusals as the weight formats
    costs = []
    for lp in bundle.layers:
        per = bundle.manifest.model.bytes_per_expert[bundle.manifest.model.moe_layers.index(lp.layer_index)]
        if req.weight_bits:
            layout = bundle.layout(lp.layer_index)
            per = int(per / _element_bits(layout.dtype) * req.weight_bits)
        costs.append(LayerCost(lp.layer_index, per * lp.num_experts, lp.covered_mass))
    on_gpu = gpu_layers(costs, req.gpu_memory)
    cpu = [c.layer_index for c in costs if c.layer_index not in on_gpu]
    rule = override_rule(cpu)
    cmd = llamacpp_command(req.gguf_name, rule)
    used = sum(c.expert_bytes for c in costs if c.layer_index in on_gpu)
    atomic_write(req.out, json.dumps({"command": cmd, "override_tensor": rule, "gpu_layers": on_gpu,
                                      "cpu_layers": cpu, "gpu_expert_bytes": used,
                                      "bundle_manifest_sha256": sha}, indent=1))
    return ExportResult(req.out, [f"experts of {len(on_gpu)} of {len(costs)} layers on the GPU "
                                  f"({used / 2**20:.1f} MiB)", cmd])


def _element_bits(dtype: str) -> int:
    import torch

    return torch.finfo(getattr(torch, dtype)).bits if getattr(torch, dtype).is_floating_point \
        else torch.iinfo(getattr(torch, dtype)).bits
