"""`lightmoe demo ...`: build, train, measure and show the embedded demo MoE."""

from __future__ import annotations

from pathlib import Path

import typer

from lightmoe_cli.cli.app import demo_app
from lightmoe_cli.cli.common import command
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.evaluation.showcase import ShowcaseRequest
from lightmoe_cli.options import split_list
from lightmoe_cli.paths import DEFAULT_TRAIN_RECIPE, RUNS_DIR, repo_relative


@command(demo_app, "corpus")
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
        raise LightMoEError(str(e)) from e
    console.print(domain_stats_table(stats))
    console.print(f"corpus written to {out}")


def _load_recipe(recipe: Path):
    from lightmoe_cli.demo.train import TrainRecipe

    try:
        return TrainRecipe.from_yaml(recipe)
    except (OSError, ValueError) as e:
        raise LightMoEError(f"bad training recipe: {e}") from e


@command(demo_app, "train")
def demo_train(
    recipe: Path = typer.Option(DEFAULT_TRAIN_RECIPE, help="Training recipe (YAML)."),
    fresh: bool = typer.Option(False, help="Ignore an existing checkpoint and start over."),
    max_minutes: float = typer.Option(None, help="Stop (with a checkpoint) after this many minutes."),
) -> None:
    """Train the demo MoE from its recipe (resumes from the last checkpoint unless --fresh)."""
    from rich.console import Console

    from lightmoe_cli.demo.train import train

    console = Console()
    r = _load_recipe(recipe)

    def show(rec: dict) -> None:
        val = rec["val_loss"]
        console.print(f"step {rec['step']:>5} {rec.get('phase', 'moe'):<7} tokens {rec['tokens']:>10,}  "
                      f"val loss avg {sum(val.values()) / len(val):.3f}  "
                      + "  ".join(f"{k}={v:.2f}" for k, v in val.items()))

    try:
        state = train(r, resume=not fresh, on_log=show, stop_after_s=max_minutes * 60 if max_minutes else None)
    except FileNotFoundError as e:
        raise LightMoEError(str(e)) from e
    console.print(f"trained {state.step} steps, {state.tokens:,} tokens; model in {r.out}")


@command(demo_app, "card")
def demo_card(
    recipe: Path = typer.Option(DEFAULT_TRAIN_RECIPE, help="The recipe the model was trained with."),
    tokens_per_domain: int = typer.Option(32_768, help="Held-out tokens per domain for the routing measurement."),
) -> None:
    """Measure the trained demo model (held-out loss, routing specialisation) and write its card."""
    from rich.console import Console

    from lightmoe_cli.demo.card import write_card

    console = Console()
    r = _load_recipe(recipe)
    try:
        summary = write_card(r, tokens_per_domain=tokens_per_domain, console=console,
                             recipe_path=repo_relative(recipe))
    except FileNotFoundError as e:
        raise LightMoEError(str(e)) from e
    console.print(f"card written to {Path(r.out) / 'README.md'} and {Path(r.out) / 'training.json'}")
    console.print(summary)


@command(demo_app, "similarity")
def demo_similarity(
    model: list[str] = typer.Option(None, "--model", "-m", help="Models to compare (comma-separated or repeated; "
                                    "profiled first when needed) [default: demo,demo-upcycled]."),
    out: Path = typer.Option(RUNS_DIR / "expert-similarity.png", help="Histogram PNG to write (the shipped one, "
                             "artifacts/eval/expert-similarity.png, is rebuilt by `just bench-redirect`)."),
    threshold: float = typer.Option(0.5, help="Similarity a nearest neighbour must reach to count as redirectable."),
) -> None:
    """How alike are the experts? Per-layer similarity histograms of several models, side by side."""
    from rich.console import Console

    from lightmoe_cli.demo.compare_similarity import compare_similarity, similarity_matrices
    from lightmoe_cli.loading import resolve_model
    from lightmoe_cli.paths import model_slug
    from lightmoe_cli.report import similarity_comparison_table

    names = split_list(model) or ["demo", "demo-upcycled"]
    mats = {model_slug(resolve_model(m)): similarity_matrices(resolve_model(m)) for m in names}
    rows = compare_similarity(mats, out, threshold)
    console = Console()
    console.print(similarity_comparison_table(rows, threshold))
    console.print(f"histograms written to {out}")


@command(demo_app, "show")
def demo_show(
    model: str = typer.Option(None, "--model", "-m", help="Model folder or cached hub id (default: the embedded "
                              "demo model)."),
    max_new_tokens: int = typer.Option(40, help="Tokens to generate per prompt."),
) -> None:
    """Load the demo model, show its card figures and continue one prompt per domain."""
    from lightmoe_cli.demo.show import show_demo

    show_demo(model, max_new_tokens)


@command(demo_app, "compare", ShowcaseRequest)
def demo_compare(req: ShowcaseRequest) -> None:
    """What lightmoe is for: full vs prune vs the task-aware bundle at one budget, on held-out text of several
    domains (expert memory, NLL difference to full, swaps, decode speed)."""
    from rich.console import Console

    from lightmoe_cli.evaluation.showcase import gap_closed, run_showcase
    from lightmoe_cli.report import showcase_table, token_progress

    console = Console(width=max(Console().width, 100))
    with token_progress(console, unit="bundles") as progress:
        rows, tokens, domains = run_showcase(req, progress)
    console.print(showcase_table(rows, tokens, domains, req.budget))
    closed = gap_closed(rows)
    if closed is not None:
        console.print(f"task-aware closes {closed:.0%} of prune's NLL gap to the full model in the same expert memory")
