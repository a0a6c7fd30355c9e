"""`lightmoe profile`: trace every calibration task, then write the Profile folder atomically.

Work goes into `<out>.partial/`; each finished task is saved there at once, so `--resume` skips it after an
interruption. Only when every task, the similarities, the plots and the manifest are written is the folder
renamed to `<out>`: a crash never leaves a half profile that looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.analysis.routing_stats import entropy_bits, mean_offdiagonal, pairwise_js_bits, top_half_coverage
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import exclusive_output, save_tensors
from lightmoe_cli.identity import library_versions, model_identity
from lightmoe_cli.manifest import FINGERPRINT_KEY, write_artifact
from lightmoe_cli.models.offload import onload
from lightmoe_cli.profile.accumulator import TaskStats
from lightmoe_cli.profile.artifact import SCHEMA_VERSION, Profile, ProfileManifest, TaskSummary, load_profile
from lightmoe_cli.profile.scaleout import ModelSpec
from lightmoe_cli.profile.settings import ProfileSettings
from lightmoe_cli.profile.shards import merge_shards
from lightmoe_cli.recipes import CalibrationRecipe


def summarise(tasks: list[TaskStats]) -> tuple[list[TaskSummary], np.ndarray]:
    """Per-task summary and the (n_tasks, n_tasks) JS matrix averaged over layers. Pure."""
    layer_ids = list(tasks[0].layers)
    js = np.mean([pairwise_js_bits(np.stack([t.layers[li].counts.numpy() for t in tasks])) for li in layer_ids],
                 axis=0)
    n = len(tasks)
    out = []
    for i, t in enumerate(tasks):
        counts = [t.layers[li].counts.numpy() for li in layer_ids]
        out.append(TaskSummary(
            t.name, t.tokens, float(np.mean([entropy_bits(c) for c in counts])),
            float(np.mean([top_half_coverage(c) for c in counts])),
            float(js[i].sum() / (n - 1)) if n > 1 else 0.0))
    return out, js


def _outlook(all_stats: list[TaskStats], layers, sims: dict[str, torch.Tensor]) -> dict:
    """The residency outlook (analysis/outlook.py) of these statistics, as a manifest record."""
    from dataclasses import asdict

    from lightmoe_cli.analysis.outlook import residency_outlook

    task_mass = {t.name: {li: s.gate_mass.numpy() for li, s in t.layers.items()} for t in all_stats}
    halves = {t.name: {li: s.half_mass.numpy() for li, s in t.layers.items()} for t in all_stats}
    sim = {m.layer_index: sims[f"layer.{m.layer_index}.output"].double().numpy() for m in layers
           if f"layer.{m.layer_index}.output" in sims}
    out = residency_outlook(task_mass, halves, {m.layer_index: m.top_k for m in layers}, sim or None)
    return {"rows": [asdict(r) | {"heldout_gain": r.heldout_gain} for r in out.rows],
            "mean_output_similarity": out.mean_similarity, "advice": out.advice}


def _progress_key(identity, recipe: CalibrationRecipe, settings: ProfileSettings) -> str:
    return json.dumps({"model": identity.fingerprint, "recipe": recipe.fingerprint(),
                       "seq_len": settings.seq_len, "sample_tokens": settings.sample_tokens,
                       "traces": settings.save_traces, "router_inputs": settings.save_router_inputs,
                       "shards": settings.shards},
                      sort_keys=True)


@dataclass(frozen=True)
class ScaleOut:
    """Run the calibration shards elsewhere: `workers` local processes, or Ray tasks at `ray_address` ("local":
    a local Ray); each worker loads the model from `spec`."""

    spec: ModelSpec
    workers: int = 1
    ray_address: str | None = None

    @property
    def remote(self) -> bool:
        return self.workers > 1 or self.ray_address is not None


def run_profile(model, tokenizer, model_name: str, recipe: CalibrationRecipe, out: Path,
                settings: ProfileSettings, resume: bool = False, progress=None, scale: ScaleOut | None = None,
                force: bool = False) -> Profile:
    """Profile `model` on every task of `recipe` into `out`; `progress` is an optional rich Progress.
    One writer per output (a second one is refused in one line); finished tasks survive an interruption in
    `<out>.partial` for `--resume`. `scale`: run the shards in worker processes or on Ray. `force`: replace an
    `out` that is not a profile."""
    out = Path(out)
    if settings.shards < 1:
        raise LightMoEError("--shards must be positive")
    if scale is not None and scale.remote and settings.save_traces:
        raise LightMoEError("--save-traces writes one trace file per task from one process: drop --workers / "
                            "--ray-address for a traced profile")
    from lightmoe_cli.models import get_adapter

    moe_layers = [m.layer_index for m in get_adapter(model).moe_layers(model)]
    if settings.similarity_layer is not None and settings.similarity_layer not in moe_layers:
        raise LightMoEError(f"--similarity-layer {settings.similarity_layer} is not an MoE layer; MoE layers: "
                            f"{moe_layers}")
    with exclusive_output(out, ".partial") as work:
        return _profile_into(work, out, model, tokenizer, model_name, recipe, settings, resume, progress, scale,
                             force)


def _shard_results(model, tokenizer, layers, recipe: CalibrationRecipe, tasks, settings: ProfileSettings,
                   quota: int, work: Path, progress, scale: ScaleOut | None, on_task) -> None:
    """Every shard of `tasks`, here or on the workers; `on_task(task_name, results)` as soon as a task's shards
    are all in (so a finished task is saved before a later one can fail)."""
    from lightmoe_cli.profile.scaleout import ShardJob, run_local, run_ray
    from lightmoe_cli.profile.shards import Shard, profile_shard, split_windows, task_windows
    from lightmoe_cli.profile.tracer import TraceWriter

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    n = settings.shards
    bars = {t.name: progress.add_task(t.name, total=t.max_tokens) for t in tasks} if progress else {}
    out: dict[str, list] = {t.name: [] for t in tasks}
    if scale is None or not scale.remote:
        for task in tasks:
            traces = TraceWriter(work / "traces" / task.name, settings.trace_chunk_tokens,
                                 settings.save_router_inputs) if settings.save_traces else None
            shards = split_windows(task_windows(tokenizer, recipe, task, settings.seq_len), n, task.max_tokens)
            for j, windows in enumerate(shards):
                out[task.name].append(profile_shard(
                    model, layers, windows, Shard(task.name, j, n), settings, quota, task.max_tokens, pad_id,
                    traces=traces, on_batch=(lambda k, b=bars.get(task.name): progress.advance(b, k))
                    if progress else None, worker="main"))
            on_task(task.name, out[task.name])
        return
    fields = {k: v for k, v in asdict(settings).items() if k != "extra"}
    jobs = [ShardJob(t.name, j, n, windows, fields, quota, t.max_tokens, pad_id) for t in tasks
            for j, windows in enumerate(split_windows(task_windows(tokenizer, recipe, t, settings.seq_len), n,
                                                      t.max_tokens))]
    results = run_ray(scale.spec, jobs, scale.workers, scale.ray_address) if scale.ray_address \
        else run_local(scale.spec, jobs, scale.workers)
    for r in results:
        out[r.shard.task].append(r)
        if progress:
            progress.advance(bars[r.shard.task], r.tokens)
        if len(out[r.shard.task]) == settings.shards:
            on_task(r.shard.task, out[r.shard.task])


def _prepare_work(work: Path, key: str, resume: bool, progress) -> None:
    """The work folder, kept only when it resumes a run of the same settings, recipe and model."""
    if work.exists() and not (resume and (work / "progress.key").exists()
                              and (work / "progress.key").read_text() == key):
        if progress:
            progress.console.print(f"discarding the interrupted run in {work}: " + (
                "it was made with other settings, recipe or model, so it cannot be resumed" if resume
                else "continue one with --resume instead of starting over"))
        shutil.rmtree(work)
    (work / "stats").mkdir(parents=True, exist_ok=True)
    (work / "samples").mkdir(exist_ok=True)
    (work / "progress.key").write_text(key)


def _resumed_stats(work: Path, recipe: CalibrationRecipe, resume: bool, progress) -> dict[str, TaskStats]:
    """Tasks an interrupted run finished (statistics and samples both written)."""
    from safetensors.torch import load_file

    done: dict[str, TaskStats] = {}
    for task in recipe.tasks:
        stats_path = work / "stats" / f"{task.name}.safetensors"
        if resume and stats_path.exists() and (work / "samples" / f"{task.name}.safetensors").exists():
            done[task.name] = TaskStats.from_tensors(task.name, load_file(str(stats_path)))
            if progress:
                progress.console.print(f"resumed: task {task.name} already profiled")
    return done


def _similarities(work: Path, adapter, layers, recipe: CalibrationRecipe, all_stats: list[TaskStats],
                  meta: dict) -> dict[str, torch.Tensor]:
    """Expert similarity (and REAP saliency) over all tasks' statistics and hidden samples, written beside the
    statistics; the samples are deleted once used."""
    from safetensors.torch import load_file

    from lightmoe_cli.profile.expert_similarity import layer_similarities

    samples = [load_file(str(work / "samples" / f"{t.name}.safetensors")) for t in recipe.tasks]
    sims: dict[str, torch.Tensor] = {}
    saliency: dict[str, torch.Tensor] = {}
    for m in layers:
        li = m.layer_index
        coact = sum(s.layers[li].coactivation for s in all_stats)
        parts = [s for s in samples if s[f"layer.{li}.hidden"].numel()]
        hidden = torch.cat([s[f"layer.{li}.hidden"] for s in parts]) if parts else None
        routing = (torch.cat([s[f"layer.{li}.index"] for s in parts]), torch.cat([s[f"layer.{li}.weights"]
                   for s in parts])) if parts and all(f"layer.{li}.index" in s for s in parts) else None
        with onload([m.experts]):  # weights offloaded to disk (device_map="auto") are read in here
            sim, sal = layer_similarities(adapter, m, coact, hidden, routing)
        sims.update({f"layer.{li}.{kind}": mat.float() for kind, mat in sim.items()})
        if sal is not None:
            saliency[f"layer.{li}.reap"] = sal.float()
    save_tensors(sims, work / "similarity.safetensors", meta)
    if saliency:
        save_tensors(saliency, work / "saliency.safetensors", meta)
    shutil.rmtree(work / "samples")
    return sims


def _plots(work: Path, layers, all_stats: list[TaskStats], sims: dict[str, torch.Tensor],
           settings: ProfileSettings, model_name: str) -> None:
    from lightmoe_cli.profile.plots import frequency_heatmap, similarity_heatmaps

    names = [t.name for t in all_stats]
    (work / "plots").mkdir(exist_ok=True)
    freq = {m.layer_index: np.stack([(s.layers[m.layer_index].counts.double()
                                      / max(1, s.layers[m.layer_index].counts.sum())).numpy() for s in all_stats])
            for m in layers}
    frequency_heatmap(freq, names, work / "plots" / "expert_frequency.png",
                      f"{Path(model_name).name}: expert selection share by task")
    li = settings.similarity_layer if settings.similarity_layer is not None else layers[len(layers) // 2].layer_index
    kinds = [k for k in ("output", "weight", "coactivation") if f"layer.{li}.{k}" in sims]
    similarity_heatmaps({k: sims[f"layer.{li}.{k}"].numpy() for k in kinds}, li,
                        work / "plots" / f"similarity_layer{li}.png")


def _profile_into(work: Path, out: Path, model, tokenizer, model_name: str, recipe: CalibrationRecipe,
                  settings: ProfileSettings, resume: bool, progress, scale: ScaleOut | None = None,
                  force: bool = False) -> Profile:
    from lightmoe_cli.models import get_adapter

    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    identity = model_identity(model, adapter, model_name)
    meta = {FINGERPRINT_KEY: identity.fingerprint}
    _prepare_work(work, _progress_key(identity, recipe, settings), resume, progress)
    quota = max(1, settings.sample_tokens // len(recipe.tasks))
    all_stats: dict[str, TaskStats] = _resumed_stats(work, recipe, resume, progress)
    timings: dict[str, float] = {}
    todo = [t for t in recipe.tasks if t.name not in all_stats]

    def save_task(name: str, results: list) -> None:
        stats, samples = merge_shards(name, results, quota)
        timings[name] = sum(r.seconds for r in results)
        if stats.tokens == 0:
            raise LightMoEError(f"task {name} produced no tokens: its source is empty")
        save_tensors(samples, work / "samples" / f"{name}.safetensors", meta)
        save_tensors(stats.to_tensors(), work / "stats" / f"{name}.safetensors", meta)
        all_stats[name] = stats

    _shard_results(model, tokenizer, layers, recipe, todo, settings, quota, work, progress, scale, save_task)
    all_stats = [all_stats[t.name] for t in recipe.tasks]

    t0 = time.perf_counter()
    sims = _similarities(work, adapter, layers, recipe, all_stats, meta)
    similarity_seconds = time.perf_counter() - t0
    _plots(work, layers, all_stats, sims, settings, model_name)

    summaries, js = summarise(all_stats)
    outlook = _outlook(all_stats, layers, sims)
    (work / "progress.key").unlink()
    manifest = ProfileManifest(
        kind=ProfileManifest.KIND, schema_version=SCHEMA_VERSION, created=ProfileManifest.now(), model=identity,
        versions=library_versions(), recipe=recipe.resolved(),
        settings={k: v for k, v in asdict(settings).items() if k != "extra"},
        tasks={s.name: s.tokens for s in all_stats}, summary=summaries,
        js_between_tasks_bits=js.round(5).tolist(), mean_js_between_tasks_bits=mean_offdiagonal(js),
        similarity_kinds=sorted({k.split(".")[2] for k in sims}),
        timings_s={"tasks": timings, "similarity": similarity_seconds}, outlook=outlook)
    write_artifact(work, out, manifest, force)
    return load_profile(out, verify=False)


def ensure_profile(model, tok, name: str, progress=None):
    """The model's default profile, made with the default calibration recipe when missing or stale."""
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.paths import DEFAULT_CALIBRATION, default_profile
    from lightmoe_cli.profile.artifact import ProfileError
    from lightmoe_cli.recipes import load_recipe

    path = default_profile(name)
    try:
        prof = load_profile(path)
        prof.check_model(model_identity(model, get_adapter(model), name))
        return prof
    except ProfileError:
        if progress:
            progress.console.print(f"profiling {name} with the default calibration recipe (no usable profile "
                                   f"at {path})")
    return run_profile(model, tok, name, load_recipe(DEFAULT_CALIBRATION), path, ProfileSettings(),
                       progress=progress)
