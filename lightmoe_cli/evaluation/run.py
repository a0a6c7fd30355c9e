"""Orchestration of `lightmoe eval`: task data, profile, bundles, evaluation, task-shift stream, reports."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.loading import REPO_ROOT

ITEMS_DIR = REPO_ROOT / "data" / "tasks" / "items"
CORPUS_DIR = REPO_ROOT / "data" / "corpus"


def prepare_tasks(tasks: str, out: Path) -> tuple[list[str], Path]:
    """Build the demo task items if needed, render lm-eval YAMLs into out/lm_eval_tasks, resolve task names."""
    from lightmoe_cli.evaluation.tasks import build_demo_items, render_lm_eval_tasks

    if not any(ITEMS_DIR.glob("*.jsonl")):
        if not (CORPUS_DIR / "manifest.json").exists():
            raise LightMoEError("demo task data needs the corpus: build it with `just corpus`")
        build_demo_items(CORPUS_DIR, ITEMS_DIR)
    include = out / "lm_eval_tasks"
    available = render_lm_eval_tasks(ITEMS_DIR, include)
    names = available if tasks == "demo" else [t.strip() for t in tasks.split(",") if t.strip()]
    unknown = [t for t in names if t not in available]
    if unknown:
        raise LightMoEError(f"unknown task(s) {', '.join(unknown)}; available: demo, {', '.join(available)}")
    return names, include


def _ensure_profile(model, tok, name: str, console: Console):
    from lightmoe_cli.cli import _model_slug
    from lightmoe_cli.profile.artifact import ProfileError, load_profile
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe
    from lightmoe_cli.report import token_progress

    path = REPO_ROOT / "artifacts" / "profiles" / _model_slug(name)
    try:
        prof = load_profile(path)
        from lightmoe_cli.identity import model_identity
        from lightmoe_cli.models import get_adapter

        prof.check_model(model_identity(model, get_adapter(model), name))
        return prof
    except ProfileError:
        console.print(f"profiling {name} with the default calibration recipe (no usable profile at {path})")
    with token_progress(console) as progress:
        return run_profile(model, tok, name, load_recipe(REPO_ROOT / "recipes" / "calibration" / "demo.yaml"),
                           path, ProfileSettings(), progress=progress)


def results_table(rows: list[dict], tasks: list[str]) -> Table:
    t = Table(title="accuracy x memory x speed (acc on each demo task, multiple choice)")
    for col in ("policy", "budget", *[x.removeprefix("demo_")[:9] for x in tasks], "avg", "experts MiB",
                "peak RSS MiB", "decode tok/s", "swaps", "redirect", "reroute/drop", "miss"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(r["policy"], f"{r['budget_fraction']:.2f}", *[f"{r['scores'][x]:.3f}" for x in tasks],
                  f"[bold]{r['average']:.3f}[/]", f"{r['resident_expert_bytes'] / 2**20:.1f}",
                  f"{r['peak_rss_mib']:.0f}", f"{r['decode_tokens_per_s']:.1f}", str(r["swaps"]),
                  f"{r['redirect_rate']:.1%}", f"{r['reroute_or_drop_rate']:.1%}", f"{r['miss_rate']:.1%}")
    return t


def shift_table(results) -> Table:
    t = Table(title="task-shift stream (accuracy per block; swaps; MiB loaded; seconds)")
    t.add_column("config")
    for i, b in enumerate(results[0].blocks):
        t.add_column(f"{i + 1}: {b.domain}", justify="right")
    t.add_column("overall", justify="right")
    for r in results:
        t.add_row(r.name, *[f"{b.accuracy:.2f} ({b.swaps} sw, {b.bytes_loaded / 2**20:.1f} MiB, {b.seconds:.0f}s)"
                            for b in r.blocks], f"[bold]{r.accuracy:.3f}[/]")
    return t


def run_task_shift(configs, items_dir: Path, per_block: int, threads: int) -> list:
    import torch

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.task_shift import DEFAULT_BLOCKS, run_stream, stream_items
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(threads)
    stream = stream_items(items_dir, DEFAULT_BLOCKS, per_block)
    results = []
    for c in configs:
        rt = build_runtime(load_bundle(c.bundle, verify=False))
        name = c.policy
        if c.policy == "lightmoe":
            results.append(run_stream(rt, "lightmoe (manager on)", stream))
            rt = build_runtime(load_bundle(c.bundle, verify=False))
            for m in rt.layers:
                m.manager = None
            name = "lightmoe (manager off)"
        results.append(run_stream(rt, name, stream))
    return results


def run_eval(console: Console, bundles: list[Path], model: str | None, tasks: str, policies: list[str],
             budgets: list[float], limit: int | None, out: Path | None, threads: int, task_shift: bool,
             per_block: int) -> dict:
    from lightmoe_cli.cli import _model_slug
    from lightmoe_cli.evaluation.compare import EvalConfig, ensure_bundles, pareto_plot, run_comparison, write_results
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.policies.plan import POLICIES
    from lightmoe_cli.report import token_progress

    bad = [p for p in policies if p not in POLICIES]
    if bad:
        raise LightMoEError(f"unknown policy {bad[0]!r}; policies: {', '.join(POLICIES)}")
    if any(not 0 < b <= 1 for b in budgets):
        raise LightMoEError("budgets are fractions in (0, 1], e.g. --budgets 0.25,0.5,0.75")
    name = resolve_model(model) if not bundles else None
    out = out or REPO_ROOT / "artifacts" / "eval" / (_model_slug(name) if name else "bundles")
    out.mkdir(parents=True, exist_ok=True)
    task_names, include = prepare_tasks(tasks, out)
    t0 = time.perf_counter()
    with token_progress(console) as progress:
        if bundles:
            from lightmoe_cli.bundle.artifact import load_bundle

            configs = []
            for b in bundles:
                bb = load_bundle(b)
                configs.append(EvalConfig(bb.policy, bb.manifest["budget"]["requested_fraction"] or 1.0, b))
        else:
            lm, tok = load_model_and_tokenizer(name)
            prof = _ensure_profile(lm, tok, name, console)
            configs = ensure_bundles(prof, lm, tok, name, policies, budgets, out / "bundles", progress)
            del lm
        rows = run_comparison(configs, task_names, include, limit, threads, out, progress)
    console.print(results_table(rows, task_names))
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "model": name, "tasks": task_names, "limit": limit, "rows": rows,
               "seconds": time.perf_counter() - t0}
    shift = []
    middle = sorted(budgets)[len(budgets) // 2]
    shift_configs = [c for c in configs if c.policy in ("lightmoe", "lru", "prune") and c.budget == middle]
    if task_shift and any(c.policy == "lightmoe" for c in shift_configs):
        shift = run_task_shift(shift_configs, ITEMS_DIR, per_block, threads)
        console.print(shift_table(shift))
        payload["task_shift"] = {"budget": middle, "per_block": per_block,
                                 "results": [{"name": r.name, "accuracy": r.accuracy,
                                              "blocks": [b.__dict__ | {"accuracy": b.accuracy} for b in r.blocks]}
                                             for r in shift]}
    write_results(out, payload)
    if any(r["policy"] != "full" for r in rows):
        pareto_plot(rows, out / "pareto.png", f"{Path(name).name if name else 'bundles'}: accuracy vs memory")
    console.print(f"results written to {out / 'results.json'}" + (f" and {out / 'pareto.png'}" if rows else ""))
    (out / "summary.json").write_text(json.dumps({"rows": [{k: r[k] for k in ("policy", "budget_fraction",
                                                                               "average")} for r in rows]}))
    return payload
