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
