"""Orchestration of `lightmoe export`: bundle + format -> files, each format's one function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import option
from lightmoe_cli.registry import Registry

# format name -> fn(bundle, request, manifest sha256) -> ExportResult, in `--format` help order; each format is
# one function below, so `run_export` holds no list of names
FORMATS: Registry[Callable[[Any, ExportRequest, str], ExportResult]] = Registry("format")


@dataclass
class ExportRequest:
    """What `lightmoe export` was asked for (the defaults of its options live here)."""

    bundle: Path = option(help="Bundle folder to export.", short="-b")
    out: Path = option(help="Output folder (hf) or file (gguf, llamacpp-ot, vllm-profile).", short="-o")
    format: str = option("hf", "hf (transformers checkpoint), gguf (llama.cpp), llamacpp-ot (-ot placement rules "
                         "for a full GGUF), vllm-profile (kept expert ids as JSON).")
    task: str | None = option(None, "Export a task-aware bundle frozen to this task's resident set.")
    static: bool = option(False, "Export a managed bundle frozen to its initial set.", flag="--static")
    gpu_memory: str | None = option(None, "llamacpp-ot: GPU memory for expert tensors, e.g. 8GiB.")
    weight_bits: float | None = option(None, "llamacpp-ot: bits per expert weight in your GGUF (e.g. 4.5 for "
                                       "Q4_K_M); default the bundle's dtype.")
    gguf_name: str = option("model.gguf", "llamacpp-ot: the GGUF file named in the command line.")
    outtype: str = option("f32", "gguf: tensor type (f32, f16, bf16, q8_0).")
    converter: Path | None = option(None, "gguf: a llama.cpp source folder with convert_hf_to_gguf.py (default "
                                    ".cache/llama.cpp, from `just llama-cpp`).")

    @property
    def gpu_memory_bytes(self) -> int | None:
        from lightmoe_cli.policies.budget import parse_size

        return None if self.gpu_memory is None else parse_size(str(self.gpu_memory))


@dataclass
class ExportResult:
    out: Path
    lines: list[str]  # what to tell the user (sizes, the command to run)


def _selection(bundle, req: ExportRequest):
    from lightmoe_cli.export.selection import select
    from lightmoe_cli.policies.registry import get_policy

    m = bundle.manifest
    return select(bundle.policy, {lp.layer_index: lp.resident for lp in bundle.layers}, m.task_resident,
                  m.runtime.manager is not None, req.task, req.static, task_given=m.runtime.task_given,
                  refusal=get_policy(bundle.policy).export_refusal)


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def run_export(req: ExportRequest) -> ExportResult:
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.files import sha256_file

    if not Path(req.out).parent.is_dir():
        raise LightMoEError(f"--out folder {Path(req.out).parent} does not exist: create it or write elsewhere")

    if req.format not in FORMATS:
        raise LightMoEError(f"unknown --format {req.format!r}; formats: {', '.join(FORMATS)}")
    export = FORMATS.get(req.format)
    bundle = load_bundle(req.bundle)
    return export(bundle, req, sha256_file(bundle.path / "manifest.json"))


@FORMATS.register("hf")
def _hf(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.hf import export_hf

    export_hf(bundle, _selection(bundle, req), req.out)
    return ExportResult(req.out, _size_lines(bundle, req.out))


@FORMATS.register("gguf")
def _gguf(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.gguf import export_gguf

    export_gguf(bundle, _selection(bundle, req), req.out, req.outtype, req.converter)
    return ExportResult(req.out, _size_lines(bundle, req.out))


def _size_lines(bundle, out: Path) -> list[str]:
    expert = bundle.manifest.budget.all_expert_bytes
    original = expert + (bundle.path / "model" / "non_expert.safetensors").stat().st_size
    size = _size(out)
    return [f"export {size / 2**20:.1f} MiB vs original weights {original / 2**20:.1f} MiB "
            f"({size / original:.0%})"]


@FORMATS.register("llamacpp-ot")
def _llamacpp_ot(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.placement import LayerCost, gpu_layers, llamacpp_command, override_rule
    from lightmoe_cli.files import atomic_write

    gpu_memory = req.gpu_memory_bytes
    if gpu_memory is None:
        raise LightMoEError("--format llamacpp-ot needs --gpu-memory (e.g. 8GiB): the GPU memory for expert tensors")
    _selection(bundle, req)  # the same refusals as the weight formats
    costs = []
    for lp in bundle.layers:
        per = bundle.manifest.model.bytes_per_expert[bundle.manifest.model.moe_layers.index(lp.layer_index)]
        if req.weight_bits:
            layout = bundle.layout(lp.layer_index)
            per = int(per / _element_bits(layout.dtype) * req.weight_bits)
        costs.append(LayerCost(lp.layer_index, per * lp.num_experts, lp.covered_mass))
    on_gpu = gpu_layers(costs, gpu_memory)
    cpu = [c.layer_index for c in costs if c.layer_index not in on_gpu]
    rule = override_rule(cpu)
    cmd = llamacpp_command(req.gguf_name, rule)
    used = sum(c.expert_bytes for c in costs if c.layer_index in on_gpu)
    atomic_write(req.out, json.dumps({"command": cmd, "override_tensor": rule, "gpu_layers": on_gpu,
                                      "cpu_layers": cpu, "gpu_expert_bytes": used,
                                      "bundle_manifest_sha256": sha}, indent=1))
    return ExportResult(req.out, [f"experts of {len(on_gpu)} of {len(costs)} layers on the GPU "
                                  f"({used / 2**20:.1f} MiB)", cmd])


@FORMATS.register("vllm-profile")
def _vllm_profile(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.placement import vllm_profile
    from lightmoe_cli.files import atomic_write

    sel = _selection(bundle, req) if (req.task or req.static or bundle.manifest.runtime.manager is None) else None
    kept = sel.kept if sel else {lp.layer_index: lp.resident for lp in bundle.layers}
    payload = vllm_profile(bundle.manifest.model.name_or_path, {lp.layer_index: lp.num_experts
                                                                for lp in bundle.layers},
                           kept, bundle.manifest.task_resident, sha)
    atomic_write(req.out, json.dumps(payload, indent=1))
    return ExportResult(req.out, [f"{sum(map(len, kept.values()))} kept experts over {len(kept)} layers"])


def _element_bits(dtype: str) -> int:
    import torch

    return torch.finfo(getattr(torch, dtype)).bits if getattr(torch, dtype).is_floating_point \
        else torch.iinfo(getattr(torch, dtype)).bits
