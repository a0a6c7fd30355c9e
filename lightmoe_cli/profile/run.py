"""`lightmoe profile`: trace every calibration task, then write the Profile folder atomically.

Work goes into `<out>.partial/`; each finished task is saved there at once, so `--resume` skips it after an
interruption. Only when every task, the similarities, the plots and the manifest are written is the folder
renamed to `<out>`: a crash never leaves a half profile that looks complete.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.analysis.routing_stats import entropy_bits, mean_offdiagonal, pairwise_js_bits, top_half_coverage
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import exclusive_output, save_tensors
from lightmoe_cli.identity import library_versions, model_identity
from lightmoe_cli.manifest import FINGERPRINT_KEY, write_artifact
from lightmoe_cli.profile.accumulator import TaskStats
from lightmoe_cli.profile.artifact import SCHEMA_VERSION, Profile, ProfileManifest, TaskSummary, load_profile
from lightmoe_cli.recipes import CalibrationRecipe, iter_task_texts


@dataclass
class ProfileSettings:
    seq_len: int = 256
    batch_size: int = 8
    sample_tokens: int = 512  # routed hidden states kept per layer for output-space similarity
    save_traces: bool = False
    save_router_inputs: bool = False  # traces also keep each token's router input (for expert predictors)
    trace_chunk_tokens: int = 65536
    similarity_layer: int | None = None  # layer of the similarity plot (default: the middle MoE layer)
    seed: int = 0
    extra: dict = field(default_factory=dict)


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
                       "traces": settings.save_traces, "router_inputs": settings.save_router_inputs},
                      sort_keys=True)


def run_profile(model, tokenizer, model_name: str, recipe: CalibrationRecipe, out: Path,
                settings: ProfileSettings, resume: bool = False, progress=None) -> Profile:
    """Profile `model` on every task of `recipe` into `out`; `progress` is an optional rich Progress.
    One writer per output (a second one is refused in one line); finished tasks survive an interruption in
    `<out>.partial` for `--resume`."""
    out = Path(out)
    with exclusive_output(out, ".partial") as work:
        return _profile_into(work, out, model, tokenizer, model_name, recipe, settings, resume, progress)


def _profile_into(work: Path, out: Path, model, tokenizer, model_name: str, recipe: CalibrationRecipe,
                  settings: ProfileSettings, resume: bool, progress) -> Profile:
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.profile.batches import batches, token_windows
    from lightmoe_cli.profile.expert_similarity import layer_similarities
    from lightmoe_cli.profile.plots import frequency_heatmap, similarity_heatmaps
    from lightmoe_cli.profile.tracer import HiddenSampler, TraceWriter, trace_task

    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    identity = model_identity(model, adapter, model_name)
    meta = {FINGERPRINT_KEY: identity.fingerprint}
    key = _progress_key(identity, recipe, settings)
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
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    quota = max(1, settings.sample_tokens // len(recipe.tasks))

    all_stats: list[TaskStats] = []
    timings: dict[str, float] = {}
    for task in recipe.tasks:
        stats_path = work / "stats" / f"{task.name}.safetensors"
        sample_path = work / "samples" / f"{task.name}.safetensors"
        if resume and stats_path.exists() and sample_path.exists():
            from safetensors.torch import load_file

            all_stats.append(TaskStats.from_tensors(task.name, load_file(str(stats_path))))
            if progress:
                progress.console.print(f"resumed: task {task.name} already profiled")
            continue
        sampler = HiddenSampler(layers, quota, seed=settings.seed)
        traces = TraceWriter(work / "traces" / task.name, settings.trace_chunk_tokens,
                             settings.save_router_inputs) if settings.save_traces else None
        bar = progress.add_task(f"{task.name}", total=task.max_tokens) if progress else None
        t0 = time.perf_counter()
        texts = iter_task_texts(recipe, task)
        windows = token_windows(tokenizer, texts, settings.seq_len, task.max_tokens)
        stats = trace_task(model, layers, task.name, batches(windows, settings.batch_size, pad_id),
                           sampler=sampler, sample_share=min(1.0, 2.0 * quota / task.max_tokens), traces=traces,
                           on_batch=(lambda n, b=bar: progress.advance(b, n)) if progress else None)
        timings[task.name] = time.perf_counter() - t0
        if stats.tokens == 0:
            raise LightMoEError(f"task {task.name} produced no tokens: its source is empty")
        if progress:
            progress.update(bar, total=stats.tokens, completed=stats.tokens)
        save_tensors(sampler.tensors(), sample_path, meta)
        save_tensors(stats.to_tensors(), stats_path, meta)
        all_stats.append(stats)

    # similarity over all tasks' statistics and hidden samples
    from safetensors.torch import load_file

    t0 = time.perf_counter()
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
        sim, sal = layer_similarities(adapter, m, coact, hidden, routing)
        sims.update({f"layer.{li}.{kind}": mat.float() for kind, mat in sim.items()})
        if sal is not None:
            saliency[f"layer.{li}.reap"] = sal.float()
    save_tensors(sims, work / "similarity.safetensors", meta)
    if saliency:
        save_tensors(saliency, work / "saliency.safetensors", meta)
    similarity_seconds = time.perf_counter() - t0
    shutil.rmtree(work / "samples")

    # plots
    names = [t.name for t in all_stats]
    (work / "plots").mkdir(exist_ok=True)
    freq = {m.layer_index: np.stack([(s.layers[m.layer_index].counts.double()
                                      / max(1, s.layers[m.layer_index].counts.sum())).numpy() for s in all_stats])
            for m in layers}
    frequency_heatmap(freq, names, work / "plots" / "expert_frequency.png",
                      f"{Path(model_name).name}: expert selection share by task")
    li = settings.similarity_layer if settings.similarity_layer is not None else layers[len(layers) // 2].layer_index
    if f"layer.{li}.weight" not in sims:
        raise LightMoEError(f"--similarity-layer {li} is not an MoE layer; MoE layers: "
                            f"{[m.layer_index for m in layers]}")
    kinds = [k for k in ("output", "weight", "coactivation") if f"layer.{li}.{k}" in sims]
    similarity_heatmaps({k: sims[f"layer.{li}.{k}"].numpy() for k in kinds}, li,
                        work / "plots" / f"similarity_layer{li}.png")

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
    write_artifact(work, out, manifest)
    return load_profile(out, verify=False)
