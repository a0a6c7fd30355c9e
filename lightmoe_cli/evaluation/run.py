"""Orchestration of `lightmoe eval`: task data, profile, bundles, evaluation, task-shift stream -> a report.

`run_eval` returns data (an `EvalReport`); `evaluation/render.py` turns it into tables and plots. Options are
checked by `EvalRequest.validate` before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import ModelChoice, Output, Threads, check_bounds, check_io, default_threads, option
from lightmoe_cli.paths import CORPUS_DIR, ITEMS_DIR, default_eval_dir


@dataclass
class EvalRequest(ModelChoice, Threads, Output):
    """What `lightmoe eval` was asked for (the defaults of its options live here)."""

    help_overrides: ClassVar[dict[str, str]] = {"out": "Results folder (default: runs/eval/<model>)."}

    bundles: list[Path] = option(help="Bundle(s) to evaluate instead of building them from --compare.",
                                 default_factory=list, flag="--bundle", short="-b", role="input")
    tasks: list[str] = option(help="demo (multiple-choice items), demo_ppl (held-out text: perplexity, NLL per "
                              "token), demo task names, lm-eval task names, or tasks of --include-path.",
                              default_factory=lambda: ["demo", "demo_ppl"])
    include_path: Path | None = option(None, "A folder of your own lm-eval task YAMLs.", role="input")
    policies: list[str] = option(help="Policies to build and compare (see `lightmoe policies`).",
                                 default_factory=lambda: ["full", "prune", "lru", "task-aware", "oracle", "random"],
                                 flag="--compare")
    budgets: list[float] = option(help="Budgets (fractions of expert memory).", default_factory=lambda: [0.5],
                                  above=0, maximum=1)
    limit: int | None = option(None, "Items per task (quick runs).", minimum=1)
    task_shift: bool = option(True, "Also run the task-shift streams (needs a managed policy).")
    block_requests: list[int] = option(help="Task-shift streams: requests per domain block, one stream per value.",
                                       default_factory=lambda: [1, 2, 8, 30], minimum=1, requires="task_shift")
    stream_requests: int = option(96, "Requests (held-out documents) per task-shift stream.", minimum=1,
                                  requires="task_shift")
    activations: list[str] = option(help="Activation budget rules to score (topk, lexi, alloc, alloc-t, naee), each "
                                    "combined with every --activation-on policy (at every budget) and every "
                                    "--active share.", default_factory=list)
    active: list[float] = option(help="With --activations: shares of activations to score.",
                                 default_factory=lambda: [0.5, 0.75], above=0, maximum=1, requires="activations")
    activation_policies: list[str] = option(help="With --activations: the resident-set policies the rules are "
                                            "combined with.", default_factory=lambda: ["full", "task-aware"],
                                            flag="--activation-on", requires="activations")
    workers: int = option(1, "Score this many bundles at once (local processes, --threads each), or as Ray tasks "
                          "with --ray-address.", minimum=1)
    ray_address: str | None = option(None, "A Ray cluster (host:port) or 'local': each bundle is scored as a Ray "
                                     "task (bundle folders must be on a filesystem every node sees).")

    @property
    def torch_threads(self) -> int:
        return self.threads or default_threads(self.workers)

    def output_kind(self) -> tuple[str, bool]:
        return "lightmoe-eval", False

    def validate(self) -> None:
        """Every option checked before a model is loaded (one-line errors naming the fix)."""
        from lightmoe_cli.policies.registry import get_policy

        for p in self.policies:
            get_policy(p)
        if not self.policies and not self.bundles:
            raise LightMoEError("nothing to evaluate: give --compare POLICIES or --bundle DIR")
        if not self.budgets or any(not 0 < b <= 1 for b in self.budgets):  # also refuses nan
            raise LightMoEError("budgets are fractions in (0, 1], e.g. --budgets 0.25,0.5,0.75")
        if not self.tasks:
            raise LightMoEError("--tasks is empty: give demo or comma-separated task names")
        if self.limit is not None and self.limit < 1:
            raise LightMoEError(f"--limit must be a positive number of items per task, not {self.limit}")
        if self.workers < 1:
            raise LightMoEError("--workers must be positive")
        if self.ray_address:
            from lightmoe_cli.profile.scaleout import check_ray_address

            check_ray_address(self.ray_address)
        if (self.threads is not None and self.threads < 1) or self.stream_requests < 1 or not self.block_requests \
                or any(b < 1 for b in self.block_requests):
            raise LightMoEError("--threads, --stream-requests and every --block-requests must be positive")
        for b in self.bundles:
            if not Path(b).is_dir():
                raise LightMoEError(f"bundle folder {b} does not exist")
        if self.activations:
            from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES

            bad = [a for a in self.activations if a not in ACTIVATION_RULES]
            if bad:
                raise LightMoEError(f"unknown --activations {bad[0]!r}; rules: {', '.join(ACTIVATION_RULES)}")
            if not self.active or any(not 0 < a <= 1 for a in self.active):
                raise LightMoEError("--active values are fractions in (0, 1], e.g. --active 0.5,0.75")
            for p in self.activation_policies:
                get_policy(p)
        if self.include_path is not None and not Path(self.include_path).is_dir():
            raise LightMoEError(f"--include-path {self.include_path} is not a folder of lm-eval task YAMLs")
        check_bounds(self)
        check_task_names(self.tasks, self.include_path)  # before any data is built or any model loads


@dataclass
class EvalReport:
    """Everything an evaluation measured; `payload` is what results.json holds."""

    out: Path
    tasks: list[str]
    rows: list[dict]
    payload: dict
    shift: list = field(default_factory=list)
    plot: Path | None = None
    shift_plot: Path | None = None
    precision_note: str = ""  # whether the middle budget's accuracy interval reaches +-2 points


def prepare_tasks(tasks: str, out: Path, include_path: Path | None = None) -> tuple[list[str], list[Path]]:
    """Resolve task names: the tags `demo` (multiple choice) and `demo_ppl` (held-out text), demo task names,
    tasks in the user's `include_path`, and lm-eval's own tasks. Builds the demo data if needed and renders
    its YAMLs into out/lm_eval_tasks; returns the names and the include paths for lm-eval."""
    from lightmoe_cli.evaluation.tasks import build_demo_items, render_lm_eval_tasks

    wanted = [t.strip() for t in tasks.split(",") if t.strip()]
    include = [out / "lm_eval_tasks"] + ([Path(include_path)] if include_path else [])
    names: list[str] = []
    if any(t.startswith("demo") for t in wanted):
        if not any(ITEMS_DIR.glob("*.jsonl")) or not any((ITEMS_DIR / "ppl").glob("*.jsonl")):
            if not (CORPUS_DIR / "manifest.json").exists():
                raise LightMoEError("demo task data needs the corpus: build it with `just corpus`")
            build_demo_items(CORPUS_DIR, ITEMS_DIR)
        _check_items(ITEMS_DIR)
        available = render_lm_eval_tasks(ITEMS_DIR, include[0])
        tags = {"demo": [n for n in available if not n.endswith("_ppl")],
                "demo_ppl": [n for n in available if n.endswith("_ppl")]}
    else:
        available, tags = [], {}
    others = []
    for t in wanted:
        if t in tags:
            names += tags[t]
        elif t in available:
            names.append(t)
        elif t.startswith("demo_"):
            raise LightMoEError(f"unknown task {t}; available: demo, demo_ppl, {', '.join(available)}")
        else:
            others.append(t)
    if others:
        names += _lm_eval_tasks(others, include)
    return list(dict.fromkeys(names)), include


def _check_items(items_dir: Path) -> None:
    """Every demo data file is non-empty JSON lines (an empty or edited file would fail deep inside lm-eval)."""
    for path in sorted(items_dir.glob("*.jsonl")) + sorted((items_dir / "ppl").glob("*.jsonl")):
        try:
            lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        except (ValueError, UnicodeDecodeError) as e:
            raise LightMoEError(f"demo task file {path} is damaged ({e}): delete {items_dir} and run again to "
                                "rebuild it") from e
        if not lines:
            raise LightMoEError(f"demo task file {path} is empty: delete {items_dir} and run again to rebuild it")


def _lm_eval_default_tasks() -> set[str]:
    """Every task, group and tag name lm-eval ships, from a cache per lm-eval version (its own index takes seconds
    to build; the cache lives in the git-ignored .cache/)."""
    import importlib.metadata

    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.paths import REPO_ROOT

    cache = REPO_ROOT / ".cache" / f"lm-eval-tasks-{importlib.metadata.version('lm_eval')}.json"
    try:
        return set(json.loads(cache.read_text()))
    except (OSError, ValueError):
        pass
    from lm_eval.tasks import TaskManager

    names = sorted(TaskManager(include_defaults=True).all_tasks)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, names)
    except OSError:
        pass  # a read-only checkout still works, only slower
    return set(names)


def _lm_eval_tasks(names: list[str], include: list[Path]) -> list[str]:
    """Task names lm-eval knows (its own, or the user's include path); an unknown one is a one-line error."""
    known = _lm_eval_default_tasks()
    extra = [p for p in include if p.is_dir()]
    if extra and any(t not in known for t in names):
        from lm_eval.tasks import TaskManager

        known |= set(TaskManager(include_path=[str(p) for p in extra], include_defaults=False).all_tasks)
    unknown = [t for t in names if t not in known]
    if unknown:
        raise LightMoEError(f"unknown task(s) {', '.join(unknown)}: not demo tasks and not known to lm-eval "
                            "(add your task YAMLs with --include-path DIR)")
    return names


def check_task_names(tasks: list[str], include_path: Path | None) -> None:
    """Every --tasks name is a demo tag, a demo task of a known domain, or known to lm-eval (or the include
    path): checked before any task data is built or model loaded."""
    from lightmoe_cli.demo.generators import GENERATORS
    from lightmoe_cli.evaluation.tasks import TAGS, TEXT_DOMAINS

    domains = [*GENERATORS, *TEXT_DOMAINS]
    demo = {f"demo_{d}{suffix}" for d in domains for suffix in ("", "_ppl")} | set(TAGS)
    bad_demo = [t for t in tasks if t.startswith("demo") and t not in demo]
    if bad_demo:
        raise LightMoEError(f"unknown task {bad_demo[0]}; demo tasks: demo, demo_ppl, "
                            f"{', '.join(sorted(demo - set(TAGS)))}")
    others = [t for t in tasks if not t.startswith("demo")]
    if others:
        _lm_eval_tasks(others, [Path(include_path)] if include_path else [])


def run_streams(configs, req: EvalRequest, full_bundle: Path | None) -> list:
    """Task-shift streams at every block length, at the middle budget: full and prune (the ends of the gap),
    the oracle (task given), the dynamic caches, and every managed bundle with each swap rule, with its swaps read
    in the background, and with its manager off."""
    import torch

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.stream import build_stream, run_stream
    from lightmoe_cli.policies.registry import get_policy
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(req.torch_threads)
    runs = []  # (name, bundle, build_runtime kwargs, task_given)
    if full_bundle is not None:
        runs.append(("full", load_bundle(full_bundle, verify=False), {}, False))
    for c in configs:
        b = load_bundle(c.bundle, verify=False)
        spec = b.runtime_spec
        if spec.manager is not None:
            own = spec.manager.mode
            runs.append((f"{c.policy} ({own})", b, {}, False))
            for rule in ("incremental", "jump"):
                if rule != own:
                    runs.append((f"{c.policy} ({rule})", b, {"swap_rule": rule}, False))
            runs.append((f"{c.policy} ({own}, background loads)", b, {"manager_loads": "background"}, False))
            runs.append((f"{c.policy} (manager off)", b, {"manager": False}, False))
        elif spec.task_given:
            runs.append((c.policy, b, {}, True))
        elif get_policy(c.policy).stream_baseline:  # prune and the dynamic caches a user would otherwise pick
            runs.append((c.policy, b, {}, False))
    results = []
    for block in req.block_requests:
        stream = build_stream(ITEMS_DIR / "ppl", block, req.stream_requests)
        for name, bundle, kwargs, task_given in runs:
            rt = build_runtime(bundle, **kwargs)
            try:
                results.append(run_stream(rt, name, stream, block, task_given))
            finally:
                rt.close()
    return results


def _configs_from_bundles(bundles: list[Path]) -> list:
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.compare import EvalConfig
    from lightmoe_cli.policies.registry import get_policy

    configs, seen = [], set()
    for b in bundles:
        bb = load_bundle(b)
        act = bb.manifest.activation
        # a policy without a budget (full) holds every expert: its row is at 1.00, whatever --budget it was built with
        budget = (bb.manifest.budget.requested_fraction or 1.0) if get_policy(bb.policy).uses_budget else 1.0
        c = EvalConfig(bb.policy, budget, Path(b), 0,
                       act.rule if act else None, act.active if act else 1.0)
        key = (c.label, c.budget)
        if key in seen:  # a second bundle of one policy at one budget (an ablation): named by its folder
            c = dataclasses.replace(c, tag=f"{c.label} ({Path(b).name})")
        seen.add((c.label, c.budget))
        configs.append(c)
    return configs


def activation_combos(req: EvalRequest) -> list[tuple[str, str, float, float]]:
    """(policy, rule, budget, active) of every activation bundle asked for: each rule x share on each
    --activation-on policy, at every budget of a policy that takes one (full: once)."""
    from lightmoe_cli.policies.registry import get_policy

    return [(p, rule, b, a) for rule in req.activations for a in req.active for p in req.activation_policies
            for b in (req.budgets if get_policy(p).uses_budget else [1.0])]


def run_eval(req: EvalRequest, progress=None) -> EvalReport:
    """Build (or reuse) the bundles, evaluate each in its own process, run the task-shift stream; write
    results.json and pareto.png into the output folder and return the report."""
    from lightmoe_cli.files import lock_output
    from lightmoe_cli.loading import resolve_model
    from lightmoe_cli.paths import default_profile

    req.validate()
    name = resolve_model(req.model) if not req.bundles else None
    out = Path(req.out or default_eval_dir(name))
    check_io(req, out, [("--model", name), ("the model's profile", default_profile(name))] if name else [])
    with lock_output(out):
        return _run_eval(req, name, out, progress)


def _claim(out: Path, force: bool, files: bool = False) -> None:
    """Mark the results folder as an evaluation's (its manifest says so), so a later run may write into it again
    and nothing else is ever written over without --force; at the end (`files`), with the sha256 of the reports
    it holds (the bundles and task YAMLs beside them are their own artifacts)."""
    from lightmoe_cli.files import atomic_write_json, check_output, sha256_file
    from lightmoe_cli.identity import library_versions

    check_output(out, "lightmoe-eval", force=force)  # again, under the lock
    out.mkdir(parents=True, exist_ok=True)
    listed = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size} for p in sorted(out.iterdir())
              if files and p.is_file() and p.name != "manifest.json" and not p.name.startswith(".")}
    atomic_write_json(out / "manifest.json", {"kind": "lightmoe-eval", "schema_version": 1,
                                              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "versions": library_versions(), "files": listed})


def _run_eval(req: EvalRequest, name: str | None, out: Path, progress) -> EvalReport:
    from lightmoe_cli.evaluation.compare import ensure_bundles, run_comparison, write_results
    from lightmoe_cli.evaluation.comparisons import add_comparisons, merge_replicates
    from lightmoe_cli.evaluation.plots import pareto_plot, task_shift_plot
    from lightmoe_cli.evaluation.stream import summarise_streams
    from lightmoe_cli.files import atomic_write, atomic_write_json
    from lightmoe_cli.loading import load_model_and_tokenizer
    from lightmoe_cli.policies.registry import get_policy

    _claim(out, req.force)
    task_names, include = prepare_tasks(",".join(req.tasks), out, req.include_path)
    t0 = time.perf_counter()
    if req.bundles:
        configs = _configs_from_bundles(req.bundles)
    else:
        lm, tok = load_model_and_tokenizer(name)
        from lightmoe_cli.profile.run import ensure_profile

        prof = ensure_profile(lm, tok, name, progress)
        combos = activation_combos(req)
        configs = ensure_bundles(prof, lm, tok, name, req.policies, req.budgets, out / "bundles", progress, combos)
        del lm
    rows = merge_replicates(run_comparison(configs, task_names, include, req.limit, req.torch_threads, progress,
                                           workers=req.workers, ray_address=req.ray_address))
    add_comparisons(rows)
    payload = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "model": name, "tasks": task_names, "limit": req.limit, "rows": rows,
               "seconds": time.perf_counter() - t0}
    report = EvalReport(out, task_names, rows, payload)
    middle = sorted(req.budgets)[len(req.budgets) // 2]
    report.precision_note = payload["precision_note"] = precision_note(rows, middle)
    shift_configs = [c for c in configs if get_policy(c.policy).uses_budget and c.budget == middle
                     and c.activation is None]
    managed = [c for c in shift_configs if _has_manager(c.bundle)]
    if req.task_shift and managed and (ITEMS_DIR / "ppl").is_dir():
        full = next((c.bundle for c in configs if c.policy == "full"), None)
        streams = run_streams(shift_configs, req, full)
        report.shift = summarise_streams(streams)
        payload["task_shift"] = {"budget": middle, "stream_requests": req.stream_requests, "rows": report.shift}
        report.shift_plot = out / "task_shift.png"
        task_shift_plot(report.shift, report.shift_plot)
    write_results(out, payload)
    if any(r["policy"] != "full" for r in rows):
        report.plot = out / "pareto.png"
        pareto_plot(rows, report.plot, Path(name).name if name else "bundles")
    from lightmoe_cli.evaluation.render import markdown_report

    atomic_write(out / "report.md", markdown_report(payload))
    atomic_write_json(out / "summary.json", {"rows": [{k: r[k] for k in ("policy", "budget_fraction", "average")}
                                                      for r in rows]})
    _claim(out, True, files=True)
    return report


def precision_note(rows: list[dict], budget: float, target_points: float = 2.0) -> str:
    """Whether the accuracy differences to prune at `budget` are precise to +-target points (the 8-task average
    moves in steps of 1/(8 x items)); NLL intervals are reported beside them."""
    widths = [r["vs_prune"]["acc"]["hi"] - r["vs_prune"]["acc"]["lo"] for r in rows
              if r["budget_fraction"] == budget and r.get("vs_prune", {}).get("acc")]
    if not widths:
        return ""
    worst = max(widths) / 2 * 100
    verdict = "meets" if worst <= target_points else "does NOT meet"
    return (f"precision at budget {budget:.2f}: accuracy differences to prune carry intervals of up to "
            f"+-{worst:.1f} points ({verdict} the +-{target_points:.0f}-point target; more items per task tighten "
            "it); per-token NLL differences are the precise comparison")


def _has_manager(bundle: Path) -> bool:
    from lightmoe_cli.bundle.artifact import load_bundle

    return load_bundle(bundle, verify=False).runtime_spec.manager is not None
