"""The `lightmoe` command line: one thin function per command; heavy imports stay inside the functions.

Why thin: `lightmoe --help` must answer instantly (torch + transformers take ~8 s to import), and every command
is a parse -> validate -> call one `run_*` function -> print-where-it-went wrapper around a testable core.
"""

from __future__ import annotations

from pathlib import Path

import typer

from lightmoe_cli.errors import LightMoEError, fail
from lightmoe_cli.paths import DEFAULT_BUNDLE, DEFAULT_CALIBRATION, DEFAULT_TRAIN_RECIPE, offline, repo_relative
from lightmoe_cli.policy_options import policy_help, with_policy_options

app = typer.Typer(
    name="lightmoe",
    help="Profile Mixture-of-Experts models and prepare them for inference in less memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
demo_app = typer.Typer(help="Build the embedded demo model: corpus, training, model card.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
predict_app = typer.Typer(help="Expert-activation prediction (MoE-Beyond) from routing traces.",
                          no_args_is_help=True)
app.add_typer(predict_app, name="predict")


@app.command()
def models(
    arch: list[str] = typer.Option(None, "--arch", "-a", help="Only these model_type names (e.g. mixtral)."),
    no_selftest: bool = typer.Option(False, "--no-selftest", help="List architectures without running them."),
) -> None:
    """List every MoE causal-LM architecture in the installed transformers, and self-test each on a tiny config."""
    offline()
    from lightmoe_cli.models.selftest import models_command

    try:
        models_command(arch or None, run_selftest=not no_selftest)
    except LightMoEError as e:
        fail(e)


@app.command()
def profile(
    model: str = typer.Option(None, "--model", "-m", help="Model folder or cached hub id (default: demo model)."),
    tasks: Path = typer.Option(DEFAULT_CALIBRATION, "--tasks", "-t", help="Calibration recipe (YAML)."),
    out: Path = typer.Option(None, "--out", "-o", help="Profile folder (default: artifacts/profiles/<model>)."),
    max_tokens: int = typer.Option(None, help="Token cap per task (overrides the recipe)."),
    batch_size: int = typer.Option(8, help="Sequences per forward pass."),
    seq_len: int = typer.Option(256, help="Tokens per sequence (longer documents are cut into windows)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    dtype: str = typer.Option("float32", help="float32 (fast on CPU), bfloat16, float16 or auto."),
    sample_tokens: int = typer.Option(512, help="Routed hidden states per layer for output-space similarity."),
    similarity_layer: int = typer.Option(None, help="Layer shown in the similarity plot (default: middle)."),
    save_traces: bool = typer.Option(False, help="Also write raw per-token routing traces (int16/fp16 chunks)."),
    save_router_inputs: bool = typer.Option(False, help="Traces also keep every token's router input (fp16), the "
                                            "training data of `lightmoe predict` (implies --save-traces)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished task."),
    threads: int = typer.Option(None, help="torch CPU threads (default: all cores; per worker with --workers)."),
    workers: int = typer.Option(1, help="Profile the calibration shards in this many local processes (each loads "
                                "the model), or Ray tasks with --ray-address."),
    ray_address: str = typer.Option(None, help="A Ray cluster (host:port, ray://host:port) or 'local': shards "
                                    "become Ray tasks (pip install 'lightmoe[ray]')."),
    shards: int = typer.Option(4, help="Pieces per task; the same shards give identical statistics with any "
                               "number of workers."),
    device_map: str = typer.Option(None, help="'auto': accelerate spreads a model too large for one device over "
                                   "GPUs, CPU and disk (with --max-memory)."),
    max_memory: str = typer.Option(None, help="With --device-map: per-device limits, e.g. '0=70GiB,cpu=200GiB'."),
    offload_folder: Path = typer.Option(None, help="With --device-map: where weights placed on disk go."),
) -> None:
    """Trace routing on calibration tasks: expert frequency, co-activation and similarity per task and layer."""
    offline()
    import torch
    from rich.console import Console

    from lightmoe_cli.loading import load_model_and_tokenizer, parse_placement, resolve_model
    from lightmoe_cli.paths import default_profile
    from lightmoe_cli.profile.run import ModelSpec, ProfileSettings, ScaleOut, run_profile
    from lightmoe_cli.recipes import check_sources, load_recipe
    from lightmoe_cli.report import profile_tables, token_progress

    console = Console()
    for flag, value in (("--batch-size", batch_size), ("--seq-len", seq_len), ("--sample-tokens", sample_tokens)):
        if value <= 0:
            fail(f"{flag} must be positive")
    if max_tokens is not None and max_tokens <= 0:
        fail("--max-tokens must be positive (it caps the tokens profiled per task)")
    if device.startswith("cuda") and not torch.cuda.is_available():
        fail("--device cuda asked for, but torch sees no CUDA device: use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    if workers < 1 or shards < 1:
        fail("--workers and --shards must be positive")
    out_used = out
    try:
        recipe = load_recipe(tasks, max_tokens)
        check_sources(recipe)
        name = resolve_model(model)
        out_used = out or default_profile(name)
        placement = parse_placement(device_map, max_memory, offload_folder)
        import os

        spec = ModelSpec(str(name), dtype, device, threads=threads or max(1, (os.cpu_count() or 1) // workers),
                         **placement)
        if ray_address:
            from lightmoe_cli.profile.scaleout import check_ray_address

            check_ray_address(ray_address)
        lm, tok = load_model_and_tokenizer(name, device=device, dtype=dtype, **placement)
        if save_router_inputs:
            from lightmoe_cli.models import get_adapter

            n_layers = len(get_adapter(lm).moe_layers(lm))
            size = sum(t.max_tokens for t in recipe.tasks) * n_layers * lm.config.hidden_size * 2
            console.print(f"router inputs in the traces: up to {size / 2**20:,.0f} MiB ({n_layers} MoE layers x "
                          f"{lm.config.hidden_size} fp16 values per token)")
        settings = ProfileSettings(seq_len=seq_len, batch_size=batch_size, sample_tokens=sample_tokens,
                                   save_traces=save_traces or save_router_inputs,
                                   save_router_inputs=save_router_inputs, similarity_layer=similarity_layer,
                                   shards=shards)
        with token_progress(console) as progress:
            prof = run_profile(lm, tok, name, recipe, out_used, settings, resume=resume, progress=progress,
                               scale=ScaleOut(spec, workers, ray_address))  # in this process unless it is remote
    except KeyboardInterrupt:
        partial = f"{out_used}.partial" if out_used else "the .partial folder beside the output"
        fail(f"interrupted: finished tasks are kept in {partial} and any earlier profile is untouched; continue "
             "with the same command and --resume", code=130)
    except torch.OutOfMemoryError:
        fail(f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)}")
    except LightMoEError as e:
        fail(e)
    for table in profile_tables(prof.manifest):
        console.print(table)
    console.print(f"profile written to {prof.path} (plots in {prof.path / 'plots'})")


@app.command("policies")
def policies_cmd() -> None:
    """List the registered policies: one line each, with their parameters and defaults."""
    from rich.console import Console

    from lightmoe_cli.report import policies_table

    Console().print(policies_table())


def build_bundle_cmd(
    profile_dir: Path = typer.Option(None, "--profile", "-p", help="Profile folder (default: the demo model's)."),
    budget: float = typer.Option(None, help="Resident expert memory as a fraction of all expert weights."),
    memory: str = typer.Option(None, help="Resident expert memory as a size, e.g. 300MiB (instead of --budget)."),
    policy: str = typer.Option("lightmoe", help=policy_help() + " (see `lightmoe policies`)"),
    ranking: str = typer.Option("gate_mass", help="Which experts stay: gate_mass | frequency | reap (REAP "
                                "saliency: router weight x expert output norm)."),
    model: str = typer.Option(None, "--model", "-m", help="Model (default: the one the profile names)."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Bundle folder (default: artifacts/bundles/<model>-<policy>-<budget>)."),
    dtype: str = typer.Option("float32", help="dtype of the expert store and runtime weights."),
    activation: str = typer.Option(None, help="Activation budget (fewer experts per token): topk (uniform) | "
                                   "lexi (data-free per-layer k) | alloc (Alloc-L: calibration sensitivity + DP) | "
                                   "alloc-t (Alloc-L + per-token pooling) | naee (per-token threshold)."),
    active: float = typer.Option(1.0, help="With --activation: share of the model's activations kept, summed "
                                 "over MoE layers (e.g. 0.5)."),
    policy_params: dict | None = None,
) -> None:
    """Choose resident experts under a memory budget, a redirect table and a swap policy -> a bundle folder."""
    offline()
    from rich.console import Console

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.paths import default_bundle, default_profile
    from lightmoe_cli.policies.budget import parse_size
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.report import bundle_table, token_progress

    console = Console()
    if budget is not None and memory is not None:
        fail("give --budget or --memory, not both")
    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"unknown --dtype {dtype}; use float32, bfloat16 or float16")
    try:
        memory_bytes = parse_size(memory) if memory else None
        fraction = None if memory_bytes is not None else (budget if budget is not None else 0.5)
        opts = BuildOptions(policy, fraction, memory_bytes, ranking, policy_params or {}, activation, active)
        _, params = opts.resolve()  # every option checked before a model is loaded
        prof = load_profile(profile_dir or default_profile(resolve_model(model)))
        name = model or prof.model.name_or_path
        tag = f"{int(round(fraction * 100))}" if fraction is not None else memory.replace(" ", "")
        if hasattr(params, "compression"):  # expert replacing sets its own memory
            tag = f"c{int(round(params.compression * 100))}-r{params.rank}"
        if activation:
            tag += f"-{activation}{int(round(active * 100))}"
        lm, tok = load_model_and_tokenizer(name, dtype=dtype)
        with token_progress(console, unit="experts") as progress:
            bundle = build_bundle(prof, lm, tok, name, out or default_bundle(name, policy, tag), opts,
                                  progress=progress)
    except KeyboardInterrupt:
        fail("interrupted: no bundle was written and any earlier bundle at that path is untouched (a replace or "
             "prune-lora recovery keeps its checkpoint in <out>.recover: the same command resumes it)", code=130)
    except LightMoEError as e:
        fail(e)
    console.print(bundle_table(bundle))
    console.print(f"bundle written to {bundle.path}")


app.command("build-bundle")(with_policy_options(build_bundle_cmd))


@app.command("run")
def run_cmd(
    bundle_dir: Path = typer.Option(None, "--bundle", "-b", help="Bundle folder (default: demo lightmoe-50)."),
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    input_file: Path = typer.Option(None, "--input", help="JSONL file with a 'prompt' field per line."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate per prompt."),
    stats_json: Path = typer.Option(None, help="Write the run statistics here as JSON."),
    io_bandwidth: str = typer.Option(None, help="A slower link for expert loads, e.g. 2GB/s: every run-time "
                                     "expert read is throttled to it for real (lru stalls for it, swap overlaps it)."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(None, help="torch CPU threads."),
    no_manager: bool = typer.Option(False, "--no-manager", help="Serve a managed bundle statically (no swaps)."),
    manager_loads: str = typer.Option("blocking", help="How a managed bundle's swaps are read: blocking (at the "
                                      "request boundary) or background (on a loader thread; the old experts serve "
                                      "until the new ones land)."),
) -> None:
    """Execute a bundle: only resident experts in memory, misses redirected, coarse swaps on task change."""
    offline()
    from lightmoe_cli.policies.budget import parse_size
    from lightmoe_cli.runtime.prompts import read_prompts

    if not 1 <= max_new_tokens <= 1_000_000:
        fail(f"--max-new-tokens must be between 1 and 1000000, not {max_new_tokens}")
    if stats_json is not None and not stats_json.parent.is_dir():
        fail(f"--stats-json folder {stats_json.parent} does not exist: create it or write elsewhere")
    if threads is not None and threads < 1:
        fail("--threads must be positive")
    try:
        prompts = read_prompts(prompt, input_file)
        bw = parse_size(io_bandwidth.removesuffix("/s")) if io_bandwidth else None
    except LightMoEError as e:
        fail(e)

    import torch
    from rich.console import Console

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.report import run_tables, token_progress
    from lightmoe_cli.runtime.generate import run_requests
    from lightmoe_cli.runtime.loader import build_runtime
    from lightmoe_cli.runtime.prompts import check_lengths

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    try:
        bundle = load_bundle(bundle_dir or DEFAULT_BUNDLE)
        rt = build_runtime(bundle, device=device, manager=not no_manager, io_bandwidth=bw,
                           manager_loads=manager_loads)
        check_lengths(rt, prompts, max_new_tokens)
        with token_progress(console, unit="requests") as progress:
            stats = run_requests(rt, prompts, max_new_tokens, io_bandwidth=bw, progress=progress)
    except LightMoEError as e:
        fail(e)
    for r in stats.requests:
        console.print(f"[bold]{r.prompt}[/]{r.text}")
    for table in run_tables(stats, bundle.policy):
        console.print(table)
    if stats_json:
        atomic_write_json(stats_json, stats.to_json())
        console.print(f"statistics written to {stats_json}")


@app.command("eval")
def eval_cmd(
    bundle: list[Path] = typer.Option(None, "--bundle", "-b", help="Bundle(s) to evaluate (repeatable)."),
    model: str = typer.Option(None, "--model", "-m", help="Model to compare policies on (default: demo model)."),
    tasks: str = typer.Option("demo,demo_ppl", help="Comma-separated: demo (multiple-choice items), demo_ppl "
                              "(held-out text: perplexity, NLL per token), demo task names, lm-eval task names, "
                              "or tasks of --include-path."),
    include_path: Path = typer.Option(None, "--include-path", help="A folder of your own lm-eval task YAMLs."),
    compare: str = typer.Option("full,prune,lru,lightmoe,oracle,random", help="Policies to build and compare: "
                                + policy_help().replace(" | ", ", ") + "."),
    budgets: str = typer.Option("0.5", help="Comma-separated budgets (fractions of expert memory)."),
    limit: int = typer.Option(None, help="Items per task (quick runs)."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: artifacts/eval/<model>)."),
    threads: int = typer.Option(2, help="torch CPU threads per evaluation process."),
    task_shift: bool = typer.Option(True, help="Also run the task-shift streams (needs a managed policy)."),
    block_requests: str = typer.Option("1,2,8,30", help="Task-shift streams: requests per domain block, one "
                                       "stream per value."),
    stream_requests: int = typer.Option(96, help="Requests (held-out documents) per task-shift stream."),
    activations: str = typer.Option("", help="Activation budget rules to score (comma-separated: topk, lexi, "
                                    "alloc, alloc-t, naee), each combined with every --activation-on policy "
                                    "(at every budget) and every --active share."),
    active: str = typer.Option("0.5,0.75", help="With --activations: shares of activations to score."),
    activation_on: str = typer.Option("full,lightmoe", help="With --activations: the resident-set policies the "
                                      "rules are combined with (any of full, prune, lightmoe, lru, ...)."),
    workers: int = typer.Option(1, help="Score this many bundles at once (local processes, --threads each), or "
                                "as Ray tasks with --ray-address."),
    ray_address: str = typer.Option(None, help="A Ray cluster (host:port) or 'local': each bundle is scored as a "
                                    "Ray task (bundle folders must be on a filesystem every node sees)."),
) -> None:
    """Score bundles and the baselines with lm-evaluation-harness: accuracy x memory x speed."""
    offline()
    from lightmoe_cli.evaluation.run import EvalRequest

    try:
        req = EvalRequest(bundles=bundle or [], model=model, tasks=tasks, include_path=include_path,
                          policies=[p.strip() for p in compare.split(",") if p.strip()],
                          budgets=[float(b) for b in budgets.split(",")], limit=limit, out=out, threads=threads,
                          task_shift=task_shift, block_requests=[int(b) for b in block_requests.split(",")],
                          stream_requests=stream_requests,
                          activations=[a.strip() for a in activations.split(",") if a.strip()],
                          active=[float(a) for a in active.split(",")],
                          activation_policies=[p.strip() for p in activation_on.split(",") if p.strip()],
                          workers=workers, ray_address=ray_address)
        req.validate()
    except ValueError as e:
        fail(f"bad --budgets {budgets!r} or --block-requests {block_requests!r}: {e}")
    except LightMoEError as e:
        fail(e)

    from rich.console import Console

    from lightmoe_cli.evaluation.render import render_eval
    from lightmoe_cli.evaluation.run import run_eval
    from lightmoe_cli.report import token_progress

    console = Console(width=max(Console().width, 100))  # the tables are laid out for 100 columns
    try:
        with token_progress(console, unit="bundles") as progress:
            report = run_eval(req, progress)
    except KeyboardInterrupt:
        fail("interrupted: bundles built so far are kept and reused by the next run; results were not written",
             code=130)
    except LightMoEError as e:
        fail(e)
    render_eval(console, report)


@app.command("export")
def export_cmd(
    bundle_dir: Path = typer.Option(..., "--bundle", "-b", help="Bundle folder to export."),
    fmt: str = typer.Option("hf", "--format", help="hf (transformers checkpoint), gguf (llama.cpp), llamacpp-ot "
                            "(-ot placement rules for a full GGUF), vllm-profile (kept expert ids as JSON)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (hf) or file (gguf, llamacpp-ot, vllm-profile)."),
    task: str = typer.Option(None, help="Export a task-aware bundle frozen to this task's resident set."),
    static: bool = typer.Option(False, "--static", help="Export a managed bundle frozen to its initial set."),
    gpu_memory: str = typer.Option(None, help="llamacpp-ot: GPU memory for expert tensors, e.g. 8GiB."),
    weight_bits: float = typer.Option(None, help="llamacpp-ot: bits per expert weight in your GGUF (e.g. 4.5 for "
                                      "Q4_K_M); default the bundle's dtype."),
    gguf_name: str = typer.Option("model.gguf", help="llamacpp-ot: the GGUF file named in the command line."),
    outtype: str = typer.Option("f32", help="gguf: tensor type (f32, f16, bf16, q8_0)."),
    converter: Path = typer.Option(None, help="gguf: a llama.cpp source folder with convert_hf_to_gguf.py "
                                   "(default .cache/llama.cpp, from `just llama-cpp`)."),
) -> None:
    """Export a bundle for serving engines: a transformers checkpoint, a GGUF, or placement rules."""
    offline()
    from lightmoe_cli.export.run import ExportRequest, run_export
    from lightmoe_cli.policies.budget import parse_size

    try:
        if not out.parent.is_dir():
            raise LightMoEError(f"--out folder {out.parent} does not exist: create it or write elsewhere")
        req = ExportRequest(bundle_dir, fmt, out, task, static, parse_size(gpu_memory) if gpu_memory else None,
                            weight_bits, gguf_name, outtype, converter)
        result = run_export(req)
    except LightMoEError as e:
        fail(e)
    from rich.console import Console

    console = Console()
    console.print(f"{fmt} export written to {result.out}")
    for line in result.lines:
        console.print(line)


@app.command("simulate")
def simulate_cmd(
    traces: Path = typer.Option(..., "--traces", help="Profile folder with routing traces to replay (made with "
                                "--save-traces; held-out text: recipes/calibration/demo-heldout.yaml)."),
    profile_dir: Path = typer.Option(None, "--profile", "-p", help="Profile whose statistics choose the resident "
                                     "sets (default: the traced model's default profile)."),
    cache: str = typer.Option("0.05,0.1,0.25,0.5", help="Cache capacities, fractions of each layer's experts."),
    policies: str = typer.Option("lru,lfu,belady,static,task", help="Cache policies: lru, lfu, belady (offline "
                                 "optimum), static (frequency set), task (the task's own set, swapped per task)."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for simulation.json and hit_rate.png (default: "
                             "artifacts/eval/<model>-cache)."),
    predictor: Path = typer.Option(None, help="A trained predictor (lightmoe predict train): adds the `predict` "
                                   "policy, LRU + prefetch of the next layer's predicted experts."),
    prefetch_width: int = typer.Option(None, help="Experts prefetched per token and layer (default: top-k)."),
) -> None:
    """Replay routing traces through per-layer expert caches: hit rate and experts moved per capacity."""
    offline()
    from dataclasses import asdict

    import numpy as np
    from rich.console import Console

    from lightmoe_cli.evaluation.cache_replay import SIM_POLICIES, replay
    from lightmoe_cli.evaluation.plots import hit_rate_plot
    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.paths import EVAL_DIR, default_profile, model_slug
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.report import simulation_table

    console = Console()
    try:
        fractions = [float(c) for c in cache.split(",") if c.strip()]
    except ValueError:
        fail(f"bad --cache {cache!r}: give fractions such as 0.05,0.1,0.25")
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        fail(f"--cache values are fractions in (0, 1], not {cache!r}")
    wanted = [p.strip() for p in policies.split(",") if p.strip()]
    if predictor is not None and "predict" not in wanted:
        wanted.append("predict")
    if "predict" in wanted and predictor is None:
        fail("policy predict needs --predictor DIR (train one with `lightmoe predict train`)")
    bad = [p for p in wanted if p not in SIM_POLICIES]
    if bad or not wanted:
        fail(f"unknown --policies {bad[0] if bad else policies!r}; policies: {', '.join(SIM_POLICIES)}")
    try:
        tp = load_profile(traces)
        sp = load_profile(profile_dir or default_profile(tp.model.name_or_path))
        if sp.model.fingerprint != tp.model.fingerprint:
            fail(f"--profile {sp.path} was made for another model than the traces in {tp.path}")
        # with a predictor the traces are read once, router inputs included; without, only the picks
        full = None
        if predictor is not None:
            from lightmoe_cli.predict.data import load_profile_traces

            full = load_profile_traces(tp)
        trace = {t: full[t]["ids"] for t in tp.task_names} if full is not None else \
            {t: {li: v.numpy() for li, v in tp.trace_ids(t).items()} for t in tp.task_names}
        mass = {t: {li: s.gate_mass.numpy() for li, s in sp.task_stats(t).layers.items()} for t in sp.task_names}
    except LightMoEError as e:
        fail(e)
    ident = tp.model
    predicted = None
    if predictor is not None:
        from lightmoe_cli.predict.model import load_predictor
        from lightmoe_cli.predict.train import predicted_experts

        try:
            pm = load_predictor(predictor)
            if pm.cfg.num_experts != ident.num_experts[0]:
                fail(f"--predictor {predictor} predicts {pm.cfg.num_experts} experts; the traced model has "
                     f"{ident.num_experts[0]}: train a predictor on this model's profile")
            width = prefetch_width or ident.top_k[0]
            if width < 1:
                fail("--prefetch-width must be positive")
            predicted = {t: predicted_experts(pm, tr, width) for t, tr in full.items()}
        except LightMoEError as e:
            fail(e)
    rows = replay(trace, mass, ident.num_experts[0], float(np.mean(ident.bytes_per_expert)), fractions, wanted,
                  predicted)
    folder = out or EVAL_DIR / f"{model_slug(ident.name_or_path)}-cache"
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"traces": str(tp.path), "profile": str(sp.path), "tokens": int(sum(len(next(iter(v.values())))
                                                                                  for v in trace.values())),
               "rows": [asdict(r) for r in rows]}
    atomic_write_json(folder / "simulation.json", payload)
    hit_rate_plot(payload["rows"], folder / "hit_rate.png", model_slug(ident.name_or_path))
    console.print(simulation_table(payload["rows"], payload["tokens"]))
    console.print(f"written {folder / 'simulation.json'} and {folder / 'hit_rate.png'}")


@predict_app.command("train")
def predict_train(
    profile_dir: Path = typer.Option(..., "--profile", "-p", help="Profile with traces and router inputs to learn "
                                     "from (lightmoe profile --save-router-inputs)."),
    heldout: Path = typer.Option(..., "--heldout", help="Profile of held-out text with router inputs, to score on."),
    out: Path = typer.Option(None, "--out", "-o", help="Predictor folder (default: <profile>/predictor)."),
    epochs: int = typer.Option(30, help="Training epochs over the profile's windows."),
    d_model: int = typer.Option(128, help="Predictor width."),
    threads: int = typer.Option(2, help="torch CPU threads."),
) -> None:
    """Train the expert predictor (next layer's experts from this layer's router input) and score it on
    held-out traces beside its baselines: layer frequency, previous token, logistic regression."""
    offline()
    import torch
    from rich.console import Console

    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.predict.data import examples_from_traces, load_profile_traces
    from lightmoe_cli.predict.model import save_predictor
    from lightmoe_cli.predict.train import (
        TrainSettings,
        evaluate_all,
        frequency_scores,
        logistic_scores,
        predictor_scores,
        previous_token_scores,
        timed,
        train_predictor,
    )
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.report import predictor_table, token_progress

    if epochs < 1 or d_model < 8 or d_model % 4:
        fail("--epochs must be positive and --d-model a multiple of 4 (at least 8)")
    torch.set_num_threads(threads)
    console = Console(width=max(Console().width, 100))
    try:
        tp, hp = load_profile(profile_dir), load_profile(heldout)
        if tp.model.fingerprint != hp.model.fingerprint:
            fail(f"--heldout {hp.path} was profiled on another model than --profile {tp.path}")
        layers = list(tp.model.moe_layers)
        if len(layers) < 2:
            fail("the model has one MoE layer: there is no next layer to predict")
        train = examples_from_traces(load_profile_traces(tp), layers)
        test = examples_from_traces(load_profile_traces(hp), layers)
    except LightMoEError as e:
        fail(e)
    e, k = tp.model.num_experts[0], tp.model.top_k[0]
    settings = TrainSettings(epochs=epochs, d_model=d_model)
    with token_progress(console, unit="epochs") as progress:
        bar = progress.add_task("predictor", total=epochs)
        model, train_s = timed(train_predictor, train, e, k, settings, lambda *_: progress.advance(bar))
    lr, lr_s = timed(logistic_scores, train, test, e, settings)
    scores = {"all inactive": None, "layer frequency": frequency_scores(train, test, e),
              "previous token": previous_token_scores(train, test, e), "logistic regression": lr,
              "predictor": predictor_scores(model, test)}
    results = evaluate_all({n: s for n, s in scores.items() if s is not None}, test)
    folder = out or tp.path / "predictor"
    payload = {"train_profile": str(tp.path), "heldout_profile": str(hp.path), "train_tokens": train.tokens,
               "heldout_tokens": test.tokens, "pairs": [list(p) for p in train.pairs], "epochs": epochs,
               "train_seconds": round(train_s, 1), "logistic_seconds": round(lr_s, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "scores": {n: vars(r) for n, r in results.items()}}
    save_predictor(model, folder, payload)
    atomic_write_json(folder / "scores.json", payload)
    console.print(predictor_table(payload))
    console.print(f"predictor written to {folder}")


@app.command("lm-eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                          "help_option_names": []}, add_help_option=False)
def lm_eval_cmd(ctx: typer.Context) -> None:
    """lm-evaluation-harness's own command line with the `lightmoe` model registered; every argument goes to
    lm-eval, e.g. `lightmoe lm-eval --model lightmoe --model_args bundle=DIR --tasks hellaswag`."""
    offline()
    import sys

    from lm_eval.__main__ import cli_evaluate

    import lightmoe_cli.evaluation.lm_eval_model  # noqa: F401 - registers the "lightmoe" model class

    sys.argv = ["lm-eval", *ctx.args]
    cli_evaluate()


@demo_app.command("corpus")
def demo_corpus(
    out: Path = typer.Option(Path("data/corpus"), help="Folder for the corpus (one sub-folder per domain)."),
    max_bytes: int = typer.Option(5_000_000, help="Bytes of text per domain (all splits)."),
) -> None:
    """Build the multi-domain demo corpus from offline sources and our own generators."""
    from rich.console import Console

    from lightmoe_cli.demo.corpus import CorpusSourceMissing, build_corpus
    from lightmoe_cli.report import domain_stats_table

    console = Console()
    try:
        with console.status("building corpus") as status:
            stats = build_corpus(out, max_bytes_per_domain=max_bytes,
                                 progress=lambda d: status.update(f"building corpus: {d}"))
    except CorpusSourceMissing as e:
        fail(e)
    console.print(domain_stats_table(stats))
    console.print(f"corpus written to {out}")


@demo_app.command("train")
def demo_train(
    recipe: Path = typer.Option(DEFAULT_TRAIN_RECIPE, help="Training recipe (YAML)."),
    fresh: bool = typer.Option(False, help="Ignore an existing checkpoint and start over."),
    max_minutes: float = typer.Option(None, help="Stop (with a checkpoint) after this many minutes."),
) -> None:
    """Train the demo MoE from its recipe (resumes from the last checkpoint unless --fresh)."""
    offline()
    from rich.console import Console

    from lightmoe_cli.demo.train import TrainRecipe, train

    console = Console()
    try:
        r = TrainRecipe.from_yaml(recipe)
    except (OSError, ValueError) as e:
        fail(f"bad training recipe: {e}")

    def show(rec: dict) -> None:
        val = rec["val_loss"]
        console.print(f"step {rec['step']:>5} {rec.get('phase', 'moe'):<7} tokens {rec['tokens']:>10,}  "
                      f"val loss avg {sum(val.values()) / len(val):.3f}  "
                      + "  ".join(f"{k}={v:.2f}" for k, v in val.items()))

    try:
        state = train(r, resume=not fresh, on_log=show,
                      stop_after_s=max_minutes * 60 if max_minutes else None)
    except (FileNotFoundError, LightMoEError) as e:
        fail(e)
    console.print(f"trained {state.step} steps, {state.tokens:,} tokens; model in {r.out}")


@demo_app.command("card")
def demo_card(
    recipe: Path = typer.Option(DEFAULT_TRAIN_RECIPE, help="The recipe the model was trained with."),
    tokens_per_domain: int = typer.Option(32_768, help="Held-out tokens per domain for the routing measurement."),
) -> None:
    """Measure the trained demo model (held-out loss, routing specialisation) and write its card."""
    offline()
    from rich.console import Console

    from lightmoe_cli.demo.card import write_card
    from lightmoe_cli.demo.train import TrainRecipe

    console = Console()
    r = TrainRecipe.from_yaml(recipe)
    try:
        summary = write_card(r, tokens_per_domain=tokens_per_domain, console=console,
                             recipe_path=repo_relative(recipe))
    except (FileNotFoundError, LightMoEError) as e:
        fail(e)
    console.print(f"card written to {Path(r.out) / 'README.md'} and {Path(r.out) / 'training.json'}")
    console.print(summary)


@demo_app.command("similarity")
def demo_similarity(
    model: list[str] = typer.Option(["demo", "demo-upcycled"], "--model", "-m",
                                    help="Models to compare (repeatable; profiled first when needed)."),
    out: Path = typer.Option(Path("artifacts/eval/expert-similarity.png"), help="Histogram PNG to write."),
    threshold: float = typer.Option(0.5, help="Similarity a nearest neighbour must reach to count as redirectable."),
) -> None:
    """How alike are the experts? Per-layer similarity histograms of several models, side by side."""
    offline()
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.demo.compare_similarity import compare_similarity, similarity_matrices
    from lightmoe_cli.loading import resolve_model
    from lightmoe_cli.paths import model_slug

    console = Console()
    try:
        mats = {model_slug(resolve_model(m)): similarity_matrices(resolve_model(m)) for m in model}
    except LightMoEError as e:
        fail(e)
    rows = compare_similarity(mats, out, threshold)
    table = Table(title="expert similarity (pairs off the diagonal); nearest = each expert's most similar other")
    for col in ("model", "layer", "kind", "mean pair", "max pair", "mean nearest", f"nearest >= {threshold:.1f}"):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    for r in rows:
        table.add_row(r["model"], str(r["layer"]), r["kind"], f"{r['mean_pair']:.3f}", f"{r['max_pair']:.3f}",
                      f"{r['mean_nearest']:.3f}", f"{r['share_nearest_at_threshold']:.0%}")
    console.print(table)
    console.print(f"histograms written to {out}")


@demo_app.command("show")
def demo_show(
    model: str = typer.Option(None, help="Model folder or cached hub id (default: the embedded demo model)."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate per prompt."),
) -> None:
    """Load the demo model, show its card figures and continue one prompt per domain."""
    offline()
    from lightmoe_cli.demo.show import show_demo

    try:
        show_demo(model, max_new_tokens)
    except LightMoEError as e:
        fail(e)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
