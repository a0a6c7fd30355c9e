"""`lightmoe eval`: build (or reuse) bundles for policies x budgets from one profile, evaluate each in its own
process, and report accuracy x memory x speed as a table, results.json and pareto.png."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from lightmoe_cli.errors import LightMoEError


@dataclass(frozen=True)
class EvalConfig:
    policy: str
    budget: float  # fraction of expert bytes (1.0 for full)
    bundle: Path
    replicate: int = 0  # seed of a replicated policy (random); rows of one policy x budget are averaged
    activation: str | None = None  # an activation budget rule and its share of activations
    active: float = 1.0
    tag: str | None = None  # the row's name when it is not the policy's (an ablation's bundle folder)

    @property
    def label(self) -> str:
        if self.tag:
            return self.tag
        return self.policy if self.activation is None else f"{self.policy}+{self.activation}@{self.active:.0%}"


def run_worker(bundle: Path, tasks: list[str], include_path: list[Path], limit: int | None, threads: int) -> dict:
    args = json.dumps({"bundle": str(bundle), "tasks": tasks, "include_path": [str(p) for p in include_path],
                       "limit": limit, "threads": threads})
    res = subprocess.run([sys.executable, "-m", "lightmoe_cli.evaluation.worker", args], capture_output=True,
                         text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("LIGHTMOE_RESULT ")]
    if res.returncode or not lines:
        errors = [ln.removeprefix("LIGHTMOE_ERROR ") for ln in res.stdout.splitlines()
                  if ln.startswith("LIGHTMOE_ERROR ")]
        log = Path(bundle).with_suffix(".eval.log")
        log.write_text(f"{res.stdout}\n{res.stderr}")
        if errors:
            raise LightMoEError(f"evaluation of {bundle} failed: {errors[-1]}")
        raise LightMoEError(f"evaluation of {bundle} failed unexpectedly (exit {res.returncode}); its output is in "
                            f"{log}")
    return json.loads(lines[-1].removeprefix("LIGHTMOE_RESULT "))


def ensure_bundles(prof, model, tokenizer, model_name: str, policies: list[str], budgets: list[float],
                   root: Path, progress=None, activations: list[tuple[str, str, float, float]] = ()
                   ) -> list[EvalConfig]:
    """Build each policy x budget bundle (and each (policy, rule, budget, active) activation bundle) unless a
    bundle with the same plan inputs already exists."""
    from lightmoe_cli.bundle.artifact import BundleError, load_bundle
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.files import sha256_file
    from lightmoe_cli.policies.registry import get_policy

    wanted: list[tuple[EvalConfig, BuildOptions]] = []
    for policy in policies:
        cls = get_policy(policy)
        for budget, seed in [(b, s) for b in (budgets if cls.uses_budget else [1.0]) for s in range(cls.replicates)]:
            path = root / (f"{policy}-{int(round(budget * 100))}" + (f"-s{seed}" if cls.replicates > 1 else ""))
            wanted.append((EvalConfig(policy, budget, path, seed),
                           BuildOptions(policy=policy, fraction=budget if cls.uses_budget else None,
                                        params={"seed": seed} if cls.replicates > 1 else {})))
    for policy, rule, budget, active in activations:
        uses_budget = get_policy(policy).uses_budget
        budget = budget if uses_budget else 1.0
        path = root / f"{policy}-{int(round(budget * 100))}-{rule}{int(round(active * 100))}"
        wanted.append((EvalConfig(policy, budget, path, 0, rule, active),
                       BuildOptions(policy=policy, fraction=budget if uses_budget else None, activation=rule,
                                    active=active)))
    profile_sha = sha256_file(prof.path / "manifest.json")
    for config, opts in wanted:
        try:
            fresh = load_bundle(config.bundle, verify=False).manifest.profile.manifest_sha256 == profile_sha
        except BundleError:
            fresh = False
        if not fresh:
            if progress:
                progress.console.print(f"building bundle {config.bundle.name}")
            build_bundle(prof, model, tokenizer, model_name, config.bundle, opts)
    return [config for config, _ in wanted]


def write_results(out: Path, payload: dict) -> None:
    from lightmoe_cli.files import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", payload)


def _score(bundle: Path, tasks: list[str], include_path: list[Path], limit: int | None, threads: int) -> dict:
    """One bundle's worker result with its wall time (module level: Ray ships it to its workers)."""
    t0 = time.perf_counter()
    r = run_worker(bundle, tasks, include_path, limit, threads)
    r["wall_seconds"] = time.perf_counter() - t0
    return r


def run_comparison(configs: list[EvalConfig], tasks: list[str], include_path: list[Path], limit: int | None,
                   threads: int, progress=None, workers: int = 1, ray_address: str | None = None) -> list[dict]:
    """Score every config, each in its own process: one at a time, `workers` at once (threads each), or as Ray
    tasks. Rows come back in the configs' order whatever finished first."""
    from concurrent.futures import ThreadPoolExecutor  # each thread waits on its own worker process
    from contextlib import ExitStack

    bar = progress.add_task("evaluating", total=len(configs)) if progress else None
    args = (tasks, include_path, limit, threads)
    with ExitStack() as stack:
        if ray_address:
            from lightmoe_cli.profile.scaleout import ray_session

            ray = stack.enter_context(ray_session(ray_address, workers * threads))
            remote = ray.remote(num_cpus=threads)(_score)
            pending, result_of = [remote.remote(c.bundle, *args) for c in configs], ray.get
        else:
            pool = stack.enter_context(ThreadPoolExecutor(max(1, workers)))
            pending, result_of = [pool.submit(_score, c.bundle, *args) for c in configs], lambda f: f.result()
        results = []
        for p in pending:
            results.append(result_of(p))
            if progress:
                progress.advance(bar)
    from lightmoe_cli.bundle.artifact import load_bundle

    rows = []
    for c, r in zip(configs, results, strict=True):
        r["budget_fraction"] = c.budget  # the budget asked for: rows at one budget are compared with prune's
        # what the bundle itself holds (full: 1.00; replace: kept experts + low-rank terms), for the tables
        r["resident_fraction"] = load_bundle(c.bundle, verify=False).manifest.budget.resident_fraction
        r["replicate"] = c.replicate
        if c.activation or c.tag:
            r["policy"], r["activation"], r["active"] = c.label, c.activation, c.active
        rows.append(r)
    return rows
