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


def run_worker(bundle: Path, tasks: list[str], include_path: list[Path], limit: int | None, threads: int) -> dict:
    args = json.dumps({"bundle": str(bundle), "tasks": tasks, "include_path": [str(p) for p in include_path],
                       "limit": limit, "threads": threads})
    res = subprocess.run([sys.executable, "-m", "lightmoe_cli.evaluation.worker", args], capture_output=True,
                         text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("LIGHTMOE_RESULT ")]
    if res.returncode or not lines:
        tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
        raise LightMoEError(f"evaluation of {bundle} failed: {tail[0][:300]}")
    return json.loads(lines[-1].removeprefix("LIGHTMOE_RESULT "))


def ensure_bundles(prof, model, tokenizer, model_name: str, policies: list[str], budgets: list[float],
                   root: Path, progress=None) -> list[EvalConfig]:
    """Build each policy x budget bundle unless a bundle with the same plan inputs already exists."""
    from lightmoe_cli.bundle.artifact import BundleError, load_bundle
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.files import sha256_file
    from lightmoe_cli.policies.registry import get_policy

    profile_sha = sha256_file(prof.path / "manifest.json")
    configs = []
    for policy in policies:
        uses_budget = get_policy(policy).uses_budget
        for budget in (budgets if uses_budget else [1.0]):
            path = root / f"{policy}-{int(round(budget * 100))}"
            try:
                existing = load_bundle(path, verify=False)
                fresh = existing.manifest.profile.manifest_sha256 == profile_sha
            except BundleError:
                fresh = False
            if not fresh:
                if progress:
                    progress.console.print(f"building bundle {path.name}")
                build_bundle(prof, model, tokenizer, model_name, path,
                             BuildOptions(policy=policy, fraction=budget if uses_budget else None))
            configs.append(EvalConfig(policy, budget, path))
    return configs


def pareto_plot(rows: list[dict], path: Path, title: str) -> None:
    """Two panels against resident expert memory, one line per policy: quality (NLL per token above the full
    model's, or accuracy below it, with paired 95% interval bars) and cost (decode tokens/s): a policy that
    keeps quality by loading experts on demand shows its price on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = "nll" if any(r.get("vs_full", {}).get("nll") for r in rows) else "acc"
    scale = 1.0 if metric == "nll" else 100.0
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for policy in sorted({r["policy"] for r in rows} - {"full"}):
        mine = sorted((r for r in rows if r["policy"] == policy), key=lambda r: r["resident_expert_bytes"])
        mib = [r["resident_expert_bytes"] / 2**20 for r in mine]
        ivs = [r.get("vs_full", {}).get(metric) for r in mine]
        if all(ivs):
            y = [iv["diff"] * scale for iv in ivs]
            err = [[(iv["diff"] - iv["lo"]) * scale for iv in ivs], [(iv["hi"] - iv["diff"]) * scale for iv in ivs]]
            ax.errorbar(mib, y, yerr=err, marker="o", capsize=3, label=policy)
        ax2.plot(mib, [r["decode_tokens_per_s"] for r in mine], marker="o", label=policy)
    for r in rows:
        if r["policy"] == "full":
            ax2.axhline(r["decode_tokens_per_s"], color="black", linestyle="--", label="full model")
    ax.axhline(0, color="black", linestyle="--", label="full model")
    ax.set_xlabel("resident expert memory (MiB)")
    ax.set_ylabel("NLL per token above the full model (nats)" if metric == "nll"
                  else "accuracy vs the full model (points)")
    ax.set_title(f"{title}: quality (95% paired intervals)")
    ax2.set_xlabel("resident expert memory (MiB)")
    ax2.set_ylabel("decode tokens/s")
    ax2.set_title("cost: decode speed (on-demand loading stalls)")
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    from lightmoe_cli.files import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def write_results(out: Path, payload: dict) -> None:
    from lightmoe_cli.files import atomic_write_json

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", payload)


def run_comparison(configs: list[EvalConfig], tasks: list[str], include_path: list[Path], limit: int | None,
                   threads: int, progress=None) -> list[dict]:
    rows = []
    bar = progress.add_task("evaluating", total=len(configs)) if progress else None
    for c in configs:
        t0 = time.perf_counter()
        r = run_worker(c.bundle, tasks, include_path, limit, threads)
        r["wall_seconds"] = time.perf_counter() - t0
        r["budget_fraction"] = c.budget
        rows.append(r)
        if progress:
            progress.advance(bar)
    return rows
