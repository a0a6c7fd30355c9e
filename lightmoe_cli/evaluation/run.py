"""Orchestration of `lightmoe eval`: task data, profile, bundles, evaluation, task-shift stream -> a report.

`run_eval` returns data (an `EvalReport`); `evaluation/render.py` turns it into tables and plots. Options are
checked by `EvalRequest.validate` before any model is loaded.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.paths import CORPUS_DIR, DEFAULT_CALIBRATION, ITEMS_DIR, default_eval_dir, default_profile


@dataclass
class EvalRequest:
    """What `lightmoe eval` was asked for."""

    bundles: list[Path] = field(default_factory=list)
    model: str | None = None
    tasks: str = "demo"
    policies: list[str] = field(default_factory=lambda: ["full", "prune", "lru", "lightmoe"])
    budgets: list[float] = field(default_factory=lambda: [0.5])
    limit: int | None = None
    out: Path | None = None
    threads: int = 2
    task_shift: bool = True
    per_block: int = 30

    def validate(self) -> None:
        """Every option checked before a model is loaded (one-line errors naming the fix)."""
        from lightmoe_cli.policies.registry import get_policy

        for p in self.policies:
            get_policy(p)
        if not self.policies and not self.bundles:
            raise LightMoEError("nothing to evaluate: give --compare POLICIES or --bundle DIR")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):  # also refuses nan
            raise LightMoEError("budgets are fractions in (0, 1], e.g. --budgets 0.25,0.5,0.75")
        if not [t for t in self.tasks.split(",") if t.strip()]:
            raise LightMoEError("--tasks is empty: give demo or comma-separated task names")
        if self.limit is not None and self.limit < 1:
            raise LightMoEError(f"--limit must be a positive number of items per task, not {self.limit}")
        if self.threads < 1 or self.per_block < 1:
            raise LightMoEError("--threads and --per-block must be positive")
        for b in self.bundles:
            if not Path(b).is_dir():
                raise LightMoEError(f"bundle folder {b} does not exist")


@dataclass
class EvalReport:
    """Everything an evaluation measured; `payload` is what results.json holds."""

    out: Path
    tasks: list[str]
    rows: list[dict]
    payload: dict
    shift: list = field(default_factory=list)
    plot: Path | None = None


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


def ensure_profile(model, tok, name: str, progress=None):
    """The model's default profile, made with the default calibration recipe when missing or stale."""
    from lightmoe_cli.identity import model_identity
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.profile.artifact import ProfileError, load_profile
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
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


def run_task_shift(configs, items_dir: Path, per_block: int, threads: int) -> list:
    """The stream, once per config; a managed bundle is also served with its manager off (static)."""
    import torch

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.task_shift import DEFAULT_BLOCKS, run_stream, stream_items
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(threads)
    stream = stream_items(items_dir, DEFAULT_BLOCKS, per_block)
    results = []
    for c in configs:
        bundle = load_bundle(c.bundle, verify=False)
        if bundle.runtime_spec.manager is not None:
            results.append(run_stream(build_runtime(bundle), f"{c.policy} (manager on)", stream))
            results.append(run_stream(build_runtime(bundle, manager=False), f"{c.policy} (manager off)", stream))
        else:
            results.append(run_stream(build_runtime(bundle), c.policy, stream))
    return results


def _configs_from_bundles(bundles: list[Path]) -> list:
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.compare import EvalConfig

    configs = []
    for b in bundles:
        bb = load_bundle(b)
        configs.append(EvalConfig(bb.policy, bb.manifest.budget.requested_fraction or 1.0, Path(b)))
    return configs


def run_eval(req: EvalRequest, progress=None) -> EvalReport:
    """Build (or reuse) the bundles, evaluate each in its own process, run the task-shift stream; write
    results.json and pareto.png into the output folder and return the report."""
    from lightmoe_cli.evaluation.compare import ensure_bundles, pareto_plot, run_comparison, write_results
    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.policies.registry import get_policy

    req.validate()
    name = resolve_model(req.model) if not req.bundles else None
    out = req.out or default_eval_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    task_names, include = prepare_tasks(req.tasks, out)
    t0 = time.perf_counter()
    if req.bundles:
        configs = _configs_from_bundles(req.bundles)
    else:
        lm, tok = load_model_and_tokenizer(name)
        prof = ensure_profile(lm, tok, name, progress)
        configs = ensure_bundles(prof, lm, tok, name, req.policies, req.budgets, out / "bundles", progress)
        del lm
    rows = run_comparison(configs, task_names, include, req.limit, req.threads, progress)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "model": name, "tasks": task_names, "limit": req.limit, "rows": rows,
               "seconds": time.perf_counter() - t0}
    report = EvalReport(out, task_names, rows, payload)
    middle = sorted(req.budgets)[len(req.budgets) // 2]
    shift_configs = [c for c in configs if get_policy(c.policy).uses_budget and c.budget == middle]
    managed = [c for c in shift_configs if _has_manager(c.bundle)]
    if req.task_shift and managed:
        report.shift = run_task_shift(shift_configs, ITEMS_DIR, req.per_block, req.threads)
        payload["task_shift"] = {"budget": middle, "per_block": req.per_block,
                                 "results": [{"name": r.name, "accuracy": r.accuracy,
                                              "blocks": [b.__dict__ | {"accuracy": b.accuracy} for b in r.blocks]}
                                             for r in report.shift]}
    write_results(out, payload)
    if any(r["policy"] != "full" for r in rows):
        report.plot = out / "pareto.png"
        pareto_plot(rows, report.plot, f"{Path(name).name if name else 'bundles'}: accuracy vs memory")
    atomic_write_json(out / "summary.json", {"rows": [{k: r[k] for k in ("policy", "budget_fraction", "average")}
                                                      for r in rows]})
    return report


def _has_manager(bundle: Path) -> bool:
    from lightmoe_cli.bundle.artifact import load_bundle

    return load_bundle(bundle, verify=False).runtime_spec.manager is not None
