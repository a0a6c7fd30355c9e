"""What `lightmoe fit` is asked for (`FitRequest`, the defaults of its options) and `run_fit`, which answers it.

Why a record: the options are declared once here, the command line expands them, and the bounds and write rules
(`--json`) are checked before any work, so a bad input is one line and nothing is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Force, ModelChoice, check_bounds, option

FIT_KIND = "lightmoe-fit"
DTYPES = ("fp32", "bf16", "fp16", "fp8", "q8_0", "q4_0")


@dataclass
class FitRequest(ModelChoice, Force):
    memory: str | None = option(None, "RAM the model may use, e.g. 64GiB (default: this machine's RAM).")
    gpu_memory: str | None = option(None, "GPU memory, e.g. 24GiB (default: the GPU's, if torch sees one; "
                                    "none: no GPU plans).")
    context: int = option(8192, "Context length the KV cache is sized for (tokens, one sequence).", minimum=1)
    dtype: str | None = option(None, "Weight format the plans assume: fp32 | bf16 | fp16 | fp8 | q8_0 | q4_0 "
                               "(default: the checkpoint's bytes when its safetensors are there, else config.json's "
                               "dtype).", choices=DTYPES)
    bandwidth: str | None = option(None, "RAM bandwidth, e.g. 30GB/s (default: measured by a short probe).")
    gpu_bandwidth: str | None = option(None, "GPU memory bandwidth, e.g. 1TB/s (default: measured when torch sees "
                                       "a GPU; otherwise GPU plans show no bound).")
    disk_bandwidth: str | None = option(None, "Disk bandwidth for on-demand expert loads, e.g. 2GB/s (default: "
                                        "measured on the model's weight files when they are there).")
    budget: float | None = option(None, "Also size a lightmoe bundle holding this fraction of the expert weights "
                                  "(e.g. 0.5): its RAM and predicted peak RSS.", above=0.0, maximum=1.0)
    json_out: Path | None = option(None, "Also write the counts and plans here as JSON.", flag="--json",
                                   role="output")

    def output_kind(self) -> tuple[str, bool]:
        return FIT_KIND, True

    def validate(self) -> None:
        """Bounds, choices and the write rules of --json, before anything is counted."""
        check_bounds(self)


def parse_rate(text: str, flag: str) -> float:
    """'30GB/s', '1.5 GiB/s', '2e9' -> bytes/s."""
    from lightmoe_cli.policies.budget import parse_size

    body = text.strip().removesuffix("/s").removesuffix("ps")
    try:
        return float(body) if body.replace(".", "", 1).replace("e", "", 1).isdigit() else float(parse_size(body))
    except LightMoEError:
        raise LightMoEError(f"cannot read {flag} {text!r}: use a rate such as 30GB/s or 1.5GiB/s") from None


def parse_memory(text: str, flag: str) -> int:
    from lightmoe_cli.policies.budget import parse_size

    try:
        value = parse_size(text)
    except LightMoEError:
        raise LightMoEError(f"cannot read {flag} {text!r}: use a size such as 16GiB or 64GB") from None
    if value <= 0:
        raise LightMoEError(f"{flag} must be above 0, not {text}")
    return value


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def sizes_of(count, dtype: str | None, context: int):
    """The count's bytes at `dtype` (None: the checkpoint's own bytes when present, else config.json's dtype,
    else bf16), and the dtype name they stand for ("checkpoint" for the files' own)."""
    from lightmoe_cli.fit.count import DTYPE_BYTES
    from lightmoe_cli.fit.plans import Sizes

    if dtype is None and count.checkpoint_bytes is not None:
        weights = {k: float(v) for k, v in count.checkpoint_bytes.items()}
        per = weights["embeddings"] / max(1, count.params["embeddings"]) or 2.0
        layer_bytes = {li: float(b) for li, b in count.layer_checkpoint_bytes.items()}
        name = count.config_dtype or "bf16"
    else:
        name = dtype or count.config_dtype or "bf16"
        per = DTYPE_BYTES[name]
        weights = {k: v * per for k, v in count.params.items()}
        layer_bytes = {m.index: m.params * per for m in count.moe_layers}
    experts = tuple((m.index, layer_bytes.get(m.index, 0.0), layer_bytes.get(m.index, 0.0) / m.num_experts, m.top_k)
                    for m in count.moe_layers)
    emb = weights["embeddings"]
    non_expert = sum(weights.values()) - weights["routed_experts"]
    row = count.hidden_size * per
    read_non_expert = non_expert - emb + row + (emb if count.tied_embeddings else 0.0)
    kv_per = per if name in ("fp32", "bf16", "fp16") else 2.0  # quantized weights: an fp16 cache
    return Sizes(weights, experts, read_non_expert, count.kv_elements(context) * kv_per), name


@dataclass
class FitReport:
    model: str
    count: Any  # ModelCount
    sizes: Any  # Sizes
    dtype: str
    context: int
    machine: Any  # Machine
    plans: list
    measured: dict[str, bool]  # which bandwidths were measured here (not given)
    warnings: list[str]

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        s = self.sizes
        return {"kind": FIT_KIND, "model": self.model, "dtype": self.dtype, "context": self.context,
                "params": self.count.to_json(),
                "bytes": {"by_kind": s.weights, "total": s.total, "non_expert": s.non_expert,
                          "routed_per_layer": {str(i): b for i, b, _, _ in s.experts},
                          "kv_cache_at_context": s.kv, "kv_cache_per_token": s.kv / self.context,
                          "read_per_token": s.read_per_token},
                "machine": asdict(self.machine), "measured": self.measured,
                "plans": [p.to_json() for p in self.plans], "warnings": self.warnings}


def run_fit(req: FitRequest) -> FitReport:
    """Count the model from its config, size it at the dtype, and list the plans for the machine."""
    from lightmoe_cli.fit.count import count_model, read_config, safetensors_files
    from lightmoe_cli.fit.plans import GiB, Machine, all_plans
    from lightmoe_cli.fit.probe import probe_disk_bandwidth, probe_memory_bandwidth

    req.validate()
    memory = parse_memory(req.memory, "--memory") if req.memory else None
    gpu_memory = parse_memory(req.gpu_memory, "--gpu-memory") if req.gpu_memory else None
    rates = {flag: parse_rate(v, flag) if v else None for flag, v in
             (("--bandwidth", req.bandwidth), ("--gpu-bandwidth", req.gpu_bandwidth),
              ("--disk-bandwidth", req.disk_bandwidth))}
    config, folder = read_config(req.model or "demo")
    count = count_model(config, folder)
    sizes, dtype = sizes_of(count, req.dtype, req.context)
    if memory is not None and memory < sizes.non_expert:
        raise LightMoEError(f"--memory {req.memory} is too small: {req.model or 'demo'} needs at least "
                            f"{sizes.non_expert / GiB:.2f} GiB for the non-expert weights alone ({dtype})")
    warnings = []
    if memory is None:
        memory = machine_memory()
        if memory < sizes.non_expert:
            warnings.append(f"no plan fits this machine's {memory / GiB:.1f} GiB of RAM: the model needs at least "
                            f"{sizes.non_expert / GiB:.2f} GiB for the non-expert weights alone ({dtype})")
    if count.checkpoint_params is not None and count.checkpoint_params != count.total:
        warnings.append(f"the safetensors files hold {count.checkpoint_params:,} values, the architecture "
                        f"{count.total:,} parameters (a quantized or differently laid-out checkpoint)")
    measured = {"bandwidth": False, "gpu_bandwidth": False, "disk_bandwidth": False}
    bandwidth, gpu_bw, disk_bw = rates["--bandwidth"], rates["--gpu-bandwidth"], rates["--disk-bandwidth"]
    if bandwidth is None:
        bandwidth, measured["bandwidth"] = probe_memory_bandwidth(), True
    if gpu_memory is None or gpu_bw is None:
        gpu_memory, gpu_bw, measured["gpu_bandwidth"] = _gpu(gpu_memory, gpu_bw)
    if disk_bw is None and folder is not None:
        disk_bw = probe_disk_bandwidth(safetensors_files(folder))
        measured["disk_bandwidth"] = disk_bw is not None
    machine = Machine(memory=memory, gpu_memory=gpu_memory, bandwidth=bandwidth, gpu_bandwidth=gpu_bw,
                      disk_bandwidth=disk_bw)
    plans = all_plans(sizes, machine, str(req.model or "demo"), dtype, req.context, req.budget)
    max_positions = _text_max_positions(config)
    if max_positions and req.context > max_positions:
        warnings.append(f"--context {req.context} is above the model's max_position_embeddings {max_positions}")
    return FitReport(str(req.model or "demo"), count, sizes, dtype, req.context, machine, plans, measured, warnings)


def _text_max_positions(config: dict) -> int | None:
    text = config.get("text_config") if config.get("hidden_size") is None else config
    value = (text or {}).get("max_position_embeddings")
    return value if isinstance(value, int) else None


def _gpu(gpu_memory: int | None, gpu_bw: float | None) -> tuple[int | None, float | None, bool]:
    """GPU memory and bandwidth: as given, else read and probed on the GPU torch sees (none: None)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return gpu_memory, gpu_bw, False
        if gpu_memory is None:
            gpu_memory = torch.cuda.get_device_properties(0).total_memory
        if gpu_bw is None:
            a = torch.ones(256 * 2**20 // 4, device="cuda")
            b = torch.empty_like(a)
            b.copy_(a)
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(10):
                b.copy_(a)
            end.record()
            torch.cuda.synchronize()
            gpu_bw = 10 * 2 * a.numel() * 4 / (start.elapsed_time(end) / 1000)  # a copy reads and writes
            return gpu_memory, gpu_bw, True
    except RuntimeError:
        return gpu_memory, gpu_bw, False
    return gpu_memory, gpu_bw, False
