"""Fit's predicted peak RSS of a lightmoe bundle against the measured peak RSS of `lightmoe run` (issue 23).

For each model and budget B: `lightmoe build-bundle --policy prune --budget B`, `lightmoe run` on it (2 prompts x
32 new tokens; its --stats-json holds peak_rss_bytes and the non-expert and resident expert bytes it holds), and
`lightmoe fit --dtype fp32 --context 64 --budget B --json` (its predicted peak RSS). Every command is its own
process, so every peak is its own. Also the peak RSS of a process that only imports what `run` imports (the floor
of the runtime baseline). Memory is not timing-sensitive: a loaded machine measures the same. Prints a table per
model, writes benchmarks/results/fit-rss.json; the bundles are deleted afterwards (--keep-bundles keeps them).

Models: `demo` / `demo-upcycled` (their shipped profiles), `olmoe-<N>L` (benchmarks/bench_runtime.py's random
OLMoE-shaped model with N layers, made under data/bench/ when missing, and a short profile of it on the generated
domains), or a model folder as FOLDER=PROFILE.

    python benchmarks/fit_rss.py                                   # demo and olmoe-2L (~1.05B params, fp32)
    python benchmarks/fit_rss.py --model demo --budgets 0.5
    just fit-rss
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, write_json  # noqa: E402

WORK = ROOT / "data" / "bench"
LIGHTMOE = [sys.executable, "-m", "lightmoe_cli.cli"]
PROMPTS = ["The history of", "def main():"]  # as the demo's first measurement (runs/fitcheck.log)
MiB = 2**20
# What `lightmoe run` imports before it reads a bundle (lightmoe, torch, transformers' model and generation code:
# any modeling module pulls in PreTrainedModel, ~120 MiB of it): the floor under the runtime baseline.
IMPORTS = ("import lightmoe_cli.cli.run, lightmoe_cli.runtime.loader, lightmoe_cli.report; "
           "from transformers import GenerationMixin, PreTrainedModel; "
           "from lightmoe_cli.runtime.generate import peak_rss_bytes; print(peak_rss_bytes())")


def sh(args: list[str], log: Path) -> None:
    """Run one lightmoe step in its own process; its output goes to `log`, a failure raises with its tail."""
    res = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    log.write_text(res.stdout + res.stderr)
    if res.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{(res.stdout + res.stderr)[-2000:]}")


def resolve(spec: str, profile_tokens: int) -> tuple[str, str, Path | None]:
    """(label, model for the CLI, profile folder or None for the model's shipped one)."""
    if "=" in spec:
        folder, profile = spec.split("=", 1)
        return Path(folder).name, folder, Path(profile)
    m = re.fullmatch(r"olmoe-(\d+)L", spec)
    if not m:
        return spec, spec, None  # demo / demo-upcycled: their shipped profiles
    from benchmarks.bench_runtime import generated_recipe, random_olmoe

    folder = random_olmoe(int(m.group(1)), WORK / spec)
    profile = WORK / f"profile-{spec}"
    if not (profile / "manifest.json").exists():  # RSS does not depend on the profile's quality: a short one
        sh([*LIGHTMOE, "profile", "--model", str(folder), "--tasks", str(generated_recipe(profile_tokens)),
            "--max-tokens", str(profile_tokens), "--batch-size", "4", "--sample-tokens", "128",
            "--out", str(profile), "--force"], WORK / f"profile-{spec}.log")
    return spec, str(folder), profile


def imports_peak() -> int:
    res = subprocess.run([sys.executable, "-c", IMPORTS], capture_output=True, text=True, cwd=ROOT, check=True)
    return int(res.stdout.strip().splitlines()[-1])


def measure(label: str, model: str, profile: Path | None, budget: float, new_tokens: int, keep: bool) -> dict:
    """Build a prune bundle at `budget`, run it, ask fit for its prediction; the record of the three."""
    out = WORK / f"fitcheck-{label}-{budget:g}"
    logs = WORK / "fitcheck-logs"
    logs.mkdir(parents=True, exist_ok=True)
    stem = f"{logs}/{label}-{budget:g}"  # no Path.with_suffix: "0.25" has a dot
    build = [*LIGHTMOE, "build-bundle", "--model", model, "--policy", "prune", "--budget", f"{budget:g}",
             "--out", str(out), "--force"]
    sh(build + (["--profile", str(profile)] if profile else []), Path(stem + ".build.log"))
    stats_path = Path(stem + ".stats.json")
    prompts = [a for p in PROMPTS for a in ("--prompt", p)]
    sh([*LIGHTMOE, "run", "--bundle", str(out), *prompts, "--max-new-tokens", str(new_tokens),
        "--stats-json", str(stats_path), "--force"], Path(stem + ".run.log"))
    stats = json.loads(stats_path.read_text())
    fit_path = Path(stem + ".fit.json")
    # bandwidths given: the probes take time and do not enter the RSS prediction
    sh([*LIGHTMOE, "fit", "--model", model, "--dtype", "fp32", "--context", "64", "--budget", f"{budget:g}",
        "--bandwidth", "20GB/s", "--disk-bandwidth", "1GB/s", "--json", str(fit_path),
        "--force"], Path(stem + ".fit.log"))
    fit = json.loads(fit_path.read_text())
    plan = next(p for p in fit["plans"] if p["name"] == f"lightmoe bundle at --budget {budget:g}")
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
    measured, predicted = stats["peak_rss_bytes"], plan["ram_bytes"]
    held = {"non_expert": stats["non_expert_bytes"], "resident_experts": stats["resident_expert_bytes"]}
    terms = {"non_expert": fit["bytes"]["non_expert"], "kv_cache": fit["bytes"]["kv_cache_at_context"],
             "resident_experts": budget * fit["bytes"]["by_kind"]["routed_experts"]}
    terms["runtime"] = predicted - sum(terms.values())  # the rest of the prediction: the runtime's own
    return {"model": label, "budget": budget, "predicted_bytes": predicted, "measured_bytes": measured,
            "error": predicted / measured - 1, "predicted_terms": terms, "held_by_run": held,
            "measured_beyond_weights": measured - sum(held.values()),
            "tokens": [[r["prompt_tokens"], r["new_tokens"]] for r in stats["requests"]],
            "commands": {"build": " ".join(build[2:]), "fit": f"fit --model {model} --dtype fp32 --context 64 "
                         f"--budget {budget:g}"}}


def table(label: str, rows: list[dict], floor: int):
    from rich.table import Table

    t = Table(title=f"{label}: fit's predicted peak RSS vs `lightmoe run`'s, MiB (prune, fp32, {len(PROMPTS)} "
                    f"prompts; imports alone {floor / MiB:,.0f} MiB)")
    for c in ("budget", "predicted", "measured", "error", "non-expert held", "experts held", "peak - held",
              "predicted - weights"):
        t.add_column(c, justify="right")
    for r in rows:
        p = r["predicted_terms"]
        t.add_row(f"{r['budget']:.1%}", f"{r['predicted_bytes'] / MiB:,.1f}", f"{r['measured_bytes'] / MiB:,.1f}",
                  f"{r['error']:+.2%}", f"{r['held_by_run']['non_expert'] / MiB:,.1f}",
                  f"{r['held_by_run']['resident_experts'] / MiB:,.1f}", f"{r['measured_beyond_weights'] / MiB:,.1f}",
                  f"{(p['runtime'] + p['kv_cache']) / MiB:,.1f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", default=None,
                    help="demo | demo-upcycled | olmoe-<N>L | FOLDER=PROFILE (repeatable; default demo, olmoe-2L)")
    ap.add_argument("--budgets", default="0.25,0.5,0.75")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--profile-tokens", type=int, default=512, help="per generated domain, for olmoe-<N>L")
    ap.add_argument("--keep-bundles", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "fit-rss.json")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    console = Console(width=max(Console().width, 120))
    WORK.mkdir(parents=True, exist_ok=True)
    floor = imports_peak()
    budgets = [float(b) for b in args.budgets.split(",")]
    payload = {"date": time.strftime("%Y-%m-%d"), "machine": {"cores": os.cpu_count(), "torch": torch.__version__,
                                                               "python": platform.python_version()},
               "prompts": PROMPTS, "new_tokens": args.new_tokens, "imports_peak_bytes": floor, "models": {}}
    for spec in args.model or ["demo", "olmoe-2L"]:
        label, model, profile = resolve(spec, args.profile_tokens)
        rows = [measure(label, model, profile, b, args.new_tokens, args.keep_bundles) for b in budgets]
        payload["models"][label] = {"model": model, "profile": str(profile) if profile else None, "rows": rows}
        console.print(table(label, rows, floor))
    console.print(f"written to {write_json(args.out, payload)}")


if __name__ == "__main__":
    main()
