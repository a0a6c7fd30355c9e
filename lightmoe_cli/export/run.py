"""Orchestration of `lightmoe export`: bundle + format -> files, each format's one function."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.export.gguf import GGUF_KIND, OUTTYPES
from lightmoe_cli.options import Output, check_bounds, option
from lightmoe_cli.registry import Registry


@dataclass(frozen=True)
class ExportFormat:
    """One `--format`: its function (bundle, request, manifest sha256 -> ExportResult) and what it writes (the
    kind its output says it is, and whether that is one file or a folder), for the write rules."""

    export: Callable[[Any, ExportRequest, str], ExportResult]
    kind: str
    single_file: bool


# format name -> ExportFormat, in `--format` help order; each format is one function below, so `run_export`
# holds no list of names
FORMATS: Registry[ExportFormat] = Registry("format")


def export_format(name: str, kind: str, single_file: bool) -> Callable:
    """Decorator: register the function as `--format name`, writing a `kind` folder or file."""
    def register(fn: Callable) -> Callable:
        FORMATS.register(name, ExportFormat(fn, kind, single_file))
        return fn
    return register


LLAMACPP_OT, VLLM = ("llamacpp-ot",), ("vllm-profile",)


@dataclass(kw_only=True)
class ExportRequest(Output):
    """What `lightmoe export` was asked for (the defaults of its options live here); an option of one format is
    refused with another (declared beside it with `requires`)."""

    out: Path = option(help="Output folder (hf) or file (gguf, llamacpp-ot, vllm-profile).", short="-o",
                       role="output")
    bundle: Path = option(help="Bundle folder to export.", short="-b", role="input")
    format: str = option("hf", "hf (transformers checkpoint), gguf (llama.cpp), llamacpp-ot (-ot placement rules "
                         "for a full GGUF), vllm-profile (kept expert ids as JSON).")
    task: str | None = option(None, "Export a task-aware bundle frozen to this task's resident set.")
    static: bool = option(False, "Export a managed bundle frozen to its initial set.", flag="--static",
                          excludes="task")
    gpu_memory: str | None = option(None, "llamacpp-ot: GPU memory for expert tensors, e.g. 8GiB.",
                                    requires=("format", LLAMACPP_OT))
    weight_bits: float | None = option(None, "llamacpp-ot: bits per expert weight in your GGUF (e.g. 4.5 for "
                                       "Q4_K_M); default the bundle's dtype.", above=0, maximum=32,
                                       requires=("format", LLAMACPP_OT))
    gguf_name: str = option("model.gguf", "llamacpp-ot: the GGUF file named in the command line.",
                            requires=("format", LLAMACPP_OT))
    gguf_arch: str | None = option(None, "llamacpp-ot: your GGUF's architecture (its general.architecture), named "
                                   "in the experts-per-token override of an activation budget; default: the one "
                                   "llama.cpp's converter gives the bundle's model.", requires=("format", LLAMACPP_OT))
    outtype: str = option("f32", "gguf: tensor type (f32, f16, bf16, q8_0).", choices=OUTTYPES,
                          requires=("format", ("gguf",)))
    converter: Path | None = option(None, "gguf: a llama.cpp source folder with convert_hf_to_gguf.py (default "
                                    ".cache/llama.cpp, from `just llama-cpp`).", requires=("format", ("gguf",)),
                                    role="input")

    @property
    def gpu_memory_bytes(self) -> int | None:
        from lightmoe_cli.policies.budget import parse_size

        return None if self.gpu_memory is None else parse_size(str(self.gpu_memory))

    def output_kind(self) -> tuple[str, bool]:
        f = FORMATS.get(self.format)
        return f.kind, f.single_file

    def validate(self) -> None:
        """Every option checked before the bundle is read: the format, each option's bounds and format, the
        output's folder and the write rules."""
        if self.format not in FORMATS:
            raise LightMoEError(f"unknown --format {self.format!r}; formats: {', '.join(FORMATS)}")
        check_bounds(self)  # the write rules of --out included
        if not Path(self.out).parent.is_dir():
            raise LightMoEError(f"--out folder {Path(self.out).parent} does not exist: create it or write "
                                "elsewhere")
        if self.gpu_memory is not None and not self.gpu_memory_bytes:
            raise LightMoEError(f"--gpu-memory {self.gpu_memory} must be above 0")


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

    req.validate()
    bundle = load_bundle(req.bundle)
    return FORMATS.get(req.format).export(bundle, req, sha256_file(bundle.path / "manifest.json"))


@export_format("hf", "lightmoe-hf-export", single_file=False)
def _hf(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.hf import export_hf

    export_hf(bundle, _selection(bundle, req), req.out, force=req.force)
    return ExportResult(req.out, _size_lines(bundle, req.out))


@export_format("gguf", GGUF_KIND, single_file=True)
def _gguf(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.gguf import export_gguf

    export_gguf(bundle, _selection(bundle, req), req.out, req.outtype, req.converter, force=req.force)
    return ExportResult(req.out, _size_lines(bundle, req.out))


def _size_lines(bundle, out: Path) -> list[str]:
    expert = bundle.manifest.budget.all_expert_bytes
    original = expert + (bundle.path / "model" / "non_expert.safetensors").stat().st_size
    size = _size(out)
    return [f"export {size / 2**20:.1f} MiB vs original weights {original / 2**20:.1f} MiB "
            f"({size / original:.0%})"]


@export_format("llamacpp-ot", "lightmoe-llamacpp-ot", single_file=True)
def _llamacpp_ot(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.placement import (
        LayerCost,
        experts_override,
        gguf_architecture,
        gpu_layers,
        llamacpp_command,
        override_rule,
    )
    from lightmoe_cli.export.selection import uniform_experts_per_token
    from lightmoe_cli.files import write_output

    gpu_memory = req.gpu_memory_bytes
    if gpu_memory is None:
        raise LightMoEError("--format llamacpp-ot needs --gpu-memory (e.g. 8GiB): the GPU memory for expert tensors")
    _selection(bundle, req)  # the same refusals as the weight formats
    # an activation budget becomes llama.cpp's experts-per-token override, or the export is refused
    top_k = uniform_experts_per_token(bundle.manifest.activation,
                                      "llama.cpp's experts-per-token override (one value for every layer)")
    kv = None
    if top_k is not None:
        arch = req.gguf_arch or gguf_architecture(bundle.manifest.model.architecture)
        kv = experts_override(arch, top_k)
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
    cmd = llamacpp_command(req.gguf_name, rule, kv)
    used = sum(c.expert_bytes for c in costs if c.layer_index in on_gpu)
    write_output(req.out, json.dumps({"kind": FORMATS.get("llamacpp-ot").kind, "command": cmd,
                                      "override_tensor": rule, "override_kv": kv, "experts_per_token": top_k,
                                      "gpu_layers": on_gpu, "cpu_layers": cpu, "gpu_expert_bytes": used,
                                      "bundle_manifest_sha256": sha}, indent=1),
                 FORMATS.get("llamacpp-ot").kind, req.force)
    lines = [f"experts of {len(on_gpu)} of {len(costs)} layers on the GPU ({used / 2**20:.1f} MiB)"]
    if top_k is not None:
        lines.append(f"activation budget: {top_k} experts per token ({kv})")
    return ExportResult(req.out, [*lines, cmd])


@export_format("vllm-profile", "lightmoe-expert-selection", single_file=True)
def _vllm_profile(bundle, req: ExportRequest, sha: str) -> ExportResult:
    from lightmoe_cli.export.placement import vllm_profile
    from lightmoe_cli.files import write_output

    sel = _selection(bundle, req) if (req.task or req.static or bundle.manifest.runtime.manager is None) else None
    kept = sel.kept if sel else {lp.layer_index: lp.resident for lp in bundle.layers}
    payload = vllm_profile(bundle.manifest.model.name_or_path, {lp.layer_index: lp.num_experts
                                                                for lp in bundle.layers},
                           kept, bundle.manifest.task_resident, sha, bundle.manifest.activation)
    write_output(req.out, json.dumps(payload, indent=1), FORMATS.get("vllm-profile").kind, req.force)
    lines = [f"{sum(map(len, kept.values()))} kept experts over {len(kept)} layers"]
    if bundle.manifest.activation is not None:
        ks = payload["experts_per_token"]
        lines.append(f"activation budget ({bundle.manifest.activation.rule}): experts per token per layer "
                     + ", ".join(f"{li}: {k}" for li, k in ks.items()))
    return ExportResult(req.out, lines)


def _element_bits(dtype: str) -> int:
    import torch

    return torch.finfo(getattr(torch, dtype)).bits if getattr(torch, dtype).is_floating_point \
        else torch.iinfo(getattr(torch, dtype)).bits
