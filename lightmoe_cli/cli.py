"""The `lightmoe` command line: one thin function per command; heavy imports stay inside the functions.

Why thin: `lightmoe --help` must answer instantly (torch + transformers take ~8 s to import), and every command
is a parse -> validate -> call one `run_*` function -> print-where-it-went wrapper around a testable core.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from lightmoe_cli.errors import LightMoEError, fail
from lightmoe_cli.loading import REPO_ROOT

app = typer.Typer(
    name="lightmoe",
    help="Profile Mixture-of-Experts models and prepare them for inference in less memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
demo_app = typer.Typer(help="Build the embedded demo model: corpus, training, model card.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")

DEFAULT_TRAIN_RECIPE = REPO_ROOT / "recipes" / "training" / "demo-moe.yaml"


def _offline() -> None:
    """No hub on these machines: a model argument is a local path or an already-cached hub id."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@app.command()
def models(
    arch: list[str] = typer.Option(None, "--arch", "-a", help="Only these model_type names (e.g. mixtral)."),
    no_selftest: bool = typer.Option(False, "--no-selftest", help="List architectures without running them."),
) -> None:
    """List every MoE causal-LM architecture in the installed transformers, and self-test each on a tiny config."""
    _offline()
    from lightmoe_cli.models.selftest import models_command

    try:
        models_command(arch or None, run_selftest=not no_selftest)
    except LightMoEError as e:
        fail(e)


DEFAULT_CALIBRATION = REPO_ROOT / "recipes" / "calibration" / "demo.yaml"


def _model_slug(name: str) -> str:
    return Path(name).name if Path(name).exists() else name.replace("/", "--")


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
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished task."),
    threads: int = typer.Option(None, help="torch CPU threads (default: all cores)."),
) -> None:
    """Trace routing on calibration tasks: expert frequency, co-activation and similarity per task and layer."""
    _offline()
    import torch
    from rich.console import Console

    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe
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
    try:
        recipe = load_recipe(tasks, max_tokens)
        name = resolve_model(model)
        out = out or REPO_ROOT / "artifacts" / "profiles" / _model_slug(name)
        lm, tok = load_model_and_tokenizer(name, device=device, dtype=dtype)
        settings = ProfileSettings(seq_len=seq_len, batch_size=batch_size, sample_tokens=sample_tokens,
                                   save_traces=save_traces, similarity_layer=similarity_layer)
        with token_progress(console) as progress:
            prof = run_profile(lm, tok, name, recipe, out, settings, resume=resume, progress=progress)
    except torch.OutOfMemoryError:
        fail(f"out of memory at --batch-size {batch_size}: try --batch-size {max(1, batch_size // 2)}")
    except LightMoEError as e:
        fail(e)
    for table in profile_tables(prof.manifest):
        console.print(table)
    console.print(f"profile written to {prof.path} (plots in {prof.path / 'plots'})")


def _default_profile(name: str) -> Path:
    return REPO_ROOT / "artifacts" / "profiles" / _model_slug(name)


@app.command("build-bundle")
def build_bundle_cmd(
    profile_dir: Path = typer.Option(None, "--profile", "-p", help="Profile folder (default: the demo model's)."),
    budget: float = typer.Option(None, help="Resident expert memory as a fraction of all expert weights."),
    memory: str = typer.Option(None, help="Resident expert memory as a size, e.g. 300MiB (instead of --budget)."),
    policy: str = typer.Option("lightmoe", help="lightmoe | prune | lru | full"),
    similarity: str = typer.Option("output", help="Redirect by output | weight | coactivation similarity."),
    min_similarity: float = typer.Option(0.5, help="Redirect only to a resident at least this similar."),
    missing: str = typer.Option("reroute", help="lightmoe, a missing expert with no similar resident: reroute "
                                "(top-k among residents, as a pruned router) or drop (weight 0, renormalise)."),
    eviction: str = typer.Option("lru", help="Eviction rule of the lru policy: lru | lfu."),
    ranking: str = typer.Option("gate_mass", help="Which experts stay: gate_mass | frequency | reap (REAP "
                                "saliency: router weight x expert output norm)."),
    window: int = typer.Option(256, help="lightmoe manager: tokens of demand it looks at."),
    threshold: float = typer.Option(0.25, help="lightmoe manager: missed gate-mass share that triggers a swap."),
    max_swap: int = typer.Option(4, help="lightmoe manager: experts replaced per layer per swap."),
    cooldown: int = typer.Option(512, help="lightmoe manager: tokens between two swaps of a layer."),
    model: str = typer.Option(None, "--model", "-m", help="Model (default: the one the profile names)."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Bundle folder (default: artifacts/bundles/<model>-<policy>-<budget>)."),
    dtype: str = typer.Option("float32", help="dtype of the expert store and runtime weights."),
) -> None:
    """Choose resident experts under a memory budget, a redirect table and a swap policy -> a bundle folder."""
    _offline()
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle, describe_plan
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.policies.budget import parse_size
    from lightmoe_cli.policies.manager import ManagerParams
    from lightmoe_cli.policies.plan import POLICIES
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.report import token_progress

    console = Console()
    if policy not in POLICIES:
        fail(f"unknown policy {policy!r}; policies: {', '.join(POLICIES)}")
    if similarity not in ("output", "weight", "coactivation"):
        fail(f"unknown similarity {similarity!r}; use output, weight or coactivation")
    if budget is not None and memory is not None:
        fail("give --budget or --memory, not both")
    try:
        memory_bytes = parse_size(memory) if memory else None
        fraction = None if memory_bytes is not None else (budget if budget is not None else 0.5)
        prof_dir = profile_dir or _default_profile(resolve_model(model))
        prof = load_profile(prof_dir)
        name = model or prof.manifest["model"]["name_or_path"]
        lm, tok = load_model_and_tokenizer(name, dtype=dtype)
        tag = f"{int(round(fraction * 100))}" if fraction is not None else memory.replace(" ", "")
        out = out or REPO_ROOT / "artifacts" / "bundles" / f"{_model_slug(name)}-{policy}-{tag}"
        if missing not in ("reroute", "drop"):
            fail(f"--missing must be reroute or drop, not {missing!r}")
        opts = BuildOptions(policy, fraction, memory_bytes, similarity, min_similarity, eviction,
                            ManagerParams(window, threshold, max_swap, cooldown), missing, ranking)
        with token_progress(console) as progress:
            bundle = build_bundle(prof, lm, tok, name, out, opts, progress=progress)
    except LightMoEError as e:
        fail(e)
    b = bundle.manifest["budget"]
    table = Table(title=f"bundle {policy}: {b['resident_expert_bytes'] / 2**20:.1f} MiB resident experts "
                        f"({b['resident_fraction']:.0%} of {b['all_expert_bytes'] / 2**20:.1f} MiB)")
    for col in ("layer", "slots / experts", "calibration gate mass covered", "redirected", "dropped / loaded"):
        table.add_column(col, justify="right")
    for row in describe_plan(bundle):
        table.add_row(*map(str, row))
    console.print(table)
    console.print(f"bundle written to {bundle.path}")


@app.command("run")
def run_cmd(
    bundle_dir: Path = typer.Option(None, "--bundle", "-b", help="Bundle folder (default: demo lightmoe-50)."),
    prompt: list[str] = typer.Option(None, "--prompt", help="A prompt (repeatable)."),
    input_file: Path = typer.Option(None, "--input", help="JSONL file with a 'prompt' field per line."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate per prompt."),
    stats_json: Path = typer.Option(None, help="Write the run statistics here as JSON."),
    io_bandwidth: str = typer.Option(None, help="Model a slower link for expert loads, e.g. 2GB/s."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    threads: int = typer.Option(None, help="torch CPU threads."),
) -> None:
    """Execute a bundle: only resident experts in memory, misses redirected, coarse swaps on task change."""
    _offline()
    import json as _json

    import torch
    from rich.console import Console

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.policies.budget import parse_size
    from lightmoe_cli.report import run_tables, token_progress
    from lightmoe_cli.runtime.generate import run_requests
    from lightmoe_cli.runtime.loader import build_runtime

    console = Console()
    if threads:
        torch.set_num_threads(threads)
    prompts = list(prompt or [])
    try:
        if input_file:
            if not input_file.exists():
                fail(f"input file {input_file} not found")
            for n, line in enumerate(input_file.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        prompts.append(_json.loads(line)["prompt"])
                    except (ValueError, KeyError):
                        fail(f"{input_file}:{n} is not a JSON object with a 'prompt' field")
        if not prompts:
            fail("nothing to run: give --prompt TEXT or --input prompts.jsonl")
        bw = parse_size(io_bandwidth.removesuffix("/s")) if io_bandwidth else None
        path = bundle_dir or REPO_ROOT / "artifacts" / "bundles" / "demo-moe-lightmoe-50"
        bundle = load_bundle(path)
        rt = build_runtime(bundle, device=device)
        with token_progress(console) as progress:
            stats = run_requests(rt, prompts, max_new_tokens, io_bandwidth=bw, progress=progress)
    except LightMoEError as e:
        fail(e)
    for r in stats.requests:
        console.print(f"[bold]{r.prompt}[/]{r.text}")
    for table in run_tables(stats, bundle.policy):
        console.print(table)
    if stats_json:
        tmp = stats_json.with_name(stats_json.name + ".tmp")
        tmp.write_text(_json.dumps(stats.to_json(), indent=1))
        tmp.replace(stats_json)
        console.print(f"statistics written to {stats_json}")


@app.command("eval")
def eval_cmd(
    bundle: list[Path] = typer.Option(None, "--bundle", "-b", help="Bundle(s) to evaluate (repeatable)."),
    model: str = typer.Option(None, "--model", "-m", help="Model to compare policies on (default: demo model)."),
    tasks: str = typer.Option("demo", help="'demo' (all demo tasks) or comma-separated lm-eval task names."),
    compare: str = typer.Option("full,prune,lru,lightmoe", help="Policies to build and compare."),
    budgets: str = typer.Option("0.5", help="Comma-separated budgets (fractions of expert memory)."),
    limit: int = typer.Option(None, help="Items per task (quick runs)."),
    out: Path = typer.Option(None, "--out", "-o", help="Results folder (default: artifacts/eval/<model>)."),
    threads: int = typer.Option(2, help="torch CPU threads per evaluation process."),
    task_shift: bool = typer.Option(True, help="Also run the task-shift stream scenario (needs lightmoe)."),
    per_block: int = typer.Option(30, help="Requests per block in the task-shift stream."),
) -> None:
    """Score bundles and the baselines with lm-evaluation-harness: accuracy x memory x speed."""
    _offline()
    from rich.console import Console

    from lightmoe_cli.evaluation.run import run_eval

    console = Console(width=max(Console().width, 150))
    try:
        run_eval(console, bundles=bundle or [], model=model, tasks=tasks, policies=compare.split(","),
                 budgets=[float(b) for b in budgets.split(",")], limit=limit, out=out, threads=threads,
                 task_shift=task_shift, per_block=per_block)
    except ValueError as e:
        fail(f"bad option: {e}")
    except LightMoEError as e:
        fail(e)


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
    _offline()
    from rich.console import Console

    from lightmoe_cli.demo.train import TrainRecipe, train

    console = Console()
    try:
        r = TrainRecipe.from_yaml(recipe)
    except (OSError, ValueError) as e:
        fail(f"bad training recipe: {e}")

    def show(rec: dict) -> None:
        val = rec["val_loss"]
        console.print(f"step {rec['step']:>5}  tokens {rec['tokens']:>10,}  "
                      f"val loss avg {sum(val.values()) / len(val):.3f}  "
                      + "  ".join(f"{k}={v:.2f}" for k, v in val.items()))

    try:
        state = train(r, resume=not fresh, on_log=show,
                      stop_after_s=max_minutes * 60 if max_minutes else None)
    except FileNotFoundError as e:
        fail(e)
    console.print(f"trained {state.step} steps, {state.tokens:,} tokens; model in {r.out}")


@demo_app.command("card")
def demo_card(
    recipe: Path = typer.Option(DEFAULT_TRAIN_RECIPE, help="The recipe the model was trained with."),
    tokens_per_domain: int = typer.Option(32_768, help="Held-out tokens per domain for the routing measurement."),
) -> None:
    """Measure the trained demo model (held-out loss, routing specialisation) and write its card."""
    _offline()
    from rich.console import Console

    from lightmoe_cli.demo.card import write_card
    from lightmoe_cli.demo.train import TrainRecipe

    console = Console()
    r = TrainRecipe.from_yaml(recipe)
    try:
        summary = write_card(r, tokens_per_domain=tokens_per_domain, console=console)
    except (FileNotFoundError, LightMoEError) as e:
        fail(e)
    console.print(f"card written to {Path(r.out) / 'README.md'} and {Path(r.out) / 'training.json'}")
    console.print(summary)


@demo_app.command("show")
def demo_show(
    model: str = typer.Option(None, help="Model folder or cached hub id (default: the embedded demo model)."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate per prompt."),
) -> None:
    """Load the demo model, show its card figures and continue one prompt per domain."""
    _offline()
    from lightmoe_cli.demo.show import show_demo

    try:
        show_demo(model, max_new_tokens)
    except LightMoEError as e:
        fail(e)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
