"""`lightmoe profile` as one call: a model and a calibration recipe -> the profile artifact.

Every option is checked here before the model loads (bounds, the Ray address, the placement); the router-input
size is announced before anything is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import ModelChoice, Output, Threads, check_bounds, check_io, default_threads, option
from lightmoe_cli.paths import DEFAULT_CALIBRATION


@dataclass
class ProfileRequest(ModelChoice, Threads, Output):
    """What `lightmoe profile` was asked for (the defaults of its options live here)."""

    help_overrides: ClassVar[dict[str, str]] = {"out": "Profile folder (default: artifacts/profiles/<model>)."}

    tasks: Path = option(DEFAULT_CALIBRATION, "Calibration recipe (YAML).", short="-t", role="input")
    max_tokens: int | None = option(None, "Token cap per task (overrides the recipe).", minimum=1)
    batch_size: int = option(8, "Sequences per forward pass.", minimum=1)
    seq_len: int = option(256, "Tokens per sequence (longer documents are cut into windows).", minimum=1)
    device: str = option("cpu", "cpu or cuda.")
    dtype: str = option("float32", "float32 (fast on CPU), bfloat16, float16 or auto.")
    sample_tokens: int = option(512, "Routed hidden states per layer for output-space similarity.", minimum=1)
    similarity_layer: int | None = option(None, "Layer shown in the similarity plot (default: middle).")
    save_traces: bool = option(False, "Also write raw per-token routing traces (int16/fp16 chunks).")
    save_router_inputs: bool = option(False, "Traces also keep every token's router input (fp16), the training "
                                      "data of `lightmoe predict` (implies --save-traces).")
    resume: bool = option(False, "Continue an interrupted run from its last finished task.")
    workers: int = option(1, "Profile the calibration shards in this many local processes (each loads the model), "
                          "or Ray tasks with --ray-address.", minimum=1)
    ray_address: str | None = option(None, "A Ray cluster (host:port, ray://host:port) or 'local': shards become "
                                     "Ray tasks (pip install 'lightmoe[ray]').")
    shards: int = option(4, "Pieces per task (at most its tokens); the same shards give identical statistics with "
                         "any number of workers.", minimum=1)
    device_map: str | None = option(None, "'auto': accelerate spreads a model too large for one device over GPUs, "
                                    "CPU and disk (with --max-memory).")
    max_memory: str | None = option(None, "With --device-map: per-device limits, e.g. '0=70GiB,cpu=200GiB'.",
                                    requires="device_map")
    offload_folder: Path | None = option(None, "With --device-map: where weights placed on disk go.",
                                         requires="device_map")

    def output_kind(self) -> tuple[str, bool]:
        return "lightmoe-profile", False

    def validate(self) -> None:
        import torch

        for flag, value in (("--batch-size", self.batch_size), ("--seq-len", self.seq_len),
                            ("--sample-tokens", self.sample_tokens)):
            if value <= 0:
                raise LightMoEError(f"{flag} must be positive")
        if self.max_tokens is not None and self.max_tokens <= 0:
            raise LightMoEError("--max-tokens must be positive (it caps the tokens profiled per task)")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise LightMoEError("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
        if self.workers < 1 or self.shards < 1:
            raise LightMoEError("--workers and --shards must be positive")
        if self.threads is not None and self.threads < 1:
            raise LightMoEError("--threads must be positive")
        check_bounds(self)
        from lightmoe_cli.loading import parse_placement

        parse_placement(self.device_map, self.max_memory, self.offload_folder)
        if self.ray_address:
            from lightmoe_cli.profile.scaleout import check_ray_address

            check_ray_address(self.ray_address)


def run_profile_request(req: ProfileRequest, progress=None, notice=print):
    """Load the model and profile it on the recipe; returns the Profile. `notice` gets one-line messages."""
    import torch

    from lightmoe_cli.loading import load_model_and_tokenizer, parse_placement, resolve_model
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.paths import default_profile
    from lightmoe_cli.profile.run import ModelSpec, ProfileSettings, ScaleOut, run_profile
    from lightmoe_cli.recipes import check_sources, load_recipe, resolve_path

    req.validate()
    if req.threads:
        torch.set_num_threads(req.threads)
    recipe = load_recipe(req.tasks, req.max_tokens)
    check_sources(recipe)
    fewest = min(recipe.tasks, key=lambda t: t.max_tokens)
    if req.shards > fewest.max_tokens:
        raise LightMoEError(f"--shards {req.shards} is more than the {fewest.max_tokens} tokens of task "
                            f"{fewest.name}: give at most --shards {fewest.max_tokens}")
    name = resolve_model(req.model)
    out = req.out or default_profile(name)
    check_io(req, out, [("--model", name), *((f"task {t.name}", resolve_path(recipe, t.source.path))
                                             for t in recipe.tasks if t.source.path)])
    placement = parse_placement(req.device_map, req.max_memory, req.offload_folder)
    spec = ModelSpec(str(name), req.dtype, req.device, threads=req.threads or default_threads(req.workers),
                     **placement)
    lm, tok = load_model_and_tokenizer(name, device=req.device, dtype=req.dtype, **placement)
    moe_layers = [m.layer_index for m in get_adapter(lm).moe_layers(lm)]
    if req.save_router_inputs:
        size = sum(t.max_tokens for t in recipe.tasks) * len(moe_layers) * lm.config.hidden_size * 2
        notice(f"router inputs in the traces: up to {size / 2**20:,.0f} MiB ({len(moe_layers)} MoE layers x "
               f"{lm.config.hidden_size} fp16 values per token)")
    settings = ProfileSettings(seq_len=req.seq_len, batch_size=req.batch_size, sample_tokens=req.sample_tokens,
                               save_traces=req.save_traces or req.save_router_inputs,
                               save_router_inputs=req.save_router_inputs, similarity_layer=req.similarity_layer,
                               shards=req.shards)
    return run_profile(lm, tok, name, recipe, out, settings, resume=req.resume, progress=progress,
                       scale=ScaleOut(spec, req.workers, req.ray_address),  # in this process unless it is remote
                       force=req.force)
