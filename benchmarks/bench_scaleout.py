"""Profiling the demo model in one process vs sharded over workers (local processes, and a local Ray when it is
installed): wall time of each and whether the statistics are byte-identical. Prints a table and writes
benchmarks/results/scaleout.json.

    python benchmarks/bench_scaleout.py --workers 2 --max-tokens 8192

On this 2-core machine the workers share the cores (and each loads the model), so the ratio shows the overhead
of scale-out, not its gain; on a multi-GPU node or a cluster each worker has its own device.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8192, help="tokens per calibration task")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the single process and of each worker "
                    "(BLAS sums in another order with another thread count: identical statistics need equal counts)")
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table
    from safetensors.torch import load_file

    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.paths import DEFAULT_CALIBRATION
    from lightmoe_cli.profile.run import ModelSpec, ProfileSettings, ScaleOut, run_profile
    from lightmoe_cli.recipes import load_recipe

    torch.set_num_threads(args.threads)
    name = resolve_model(None)
    recipe = load_recipe(DEFAULT_CALIBRATION, args.max_tokens)
    model, tok = load_model_and_tokenizer(name)
    work = ROOT / "runs" / "bench-scaleout"
    shutil.rmtree(work, ignore_errors=True)
    settings = ProfileSettings(seq_len=256, batch_size=8)
    spec = ModelSpec(str(name), threads=args.threads)
    runs = [("1 process", None), (f"{args.workers} local processes", ScaleOut(spec, args.workers))]
    if importlib.util.find_spec("ray") is not None:
        runs.append((f"Ray (local, {args.workers} workers)", ScaleOut(spec, args.workers, "local")))
    rows, first = [], None
    for label, scale in runs:
        t0 = time.perf_counter()
        prof = run_profile(model, tok, name, recipe, work / label.split()[0], settings, scale=scale)
        seconds = time.perf_counter() - t0
        stats = {t: load_file(str(prof.path / "stats" / f"{t}.safetensors")) for t in prof.manifest.tasks}
        sims = load_file(str(prof.path / "similarity.safetensors"))
        if first is None:
            first = (stats, sims, seconds)
        same = all(torch.equal(stats[t][k], first[0][t][k]) for t in stats for k in stats[t]) and \
            all(torch.equal(sims[k], first[1][k]) for k in sims)
        counts_same = all(torch.equal(stats[t][k], first[0][t][k]) for t in stats for k in stats[t]
                          if k.endswith(("counts", "coactivation", "tokens")))
        mass_diff = max(float((stats[t][k] - first[0][t][k]).abs().max()) for t in stats for k in stats[t]
                        if k.endswith("mass"))
        rows.append({"run": label, "seconds": seconds, "vs_one_process": seconds / first[2],
                     "tokens": sum(prof.manifest.tasks.values()), "identical_statistics": same,
                     "identical_counts": counts_same, "max_gate_mass_diff": mass_diff})
    table = Table(title=f"profile of {Path(name).name}: {len(recipe.tasks)} tasks x {args.max_tokens} tokens")
    for col in ("run", "wall s", "vs 1 process", "tokens", "statistics identical", "max |gate mass diff|"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run"], f"{r['seconds']:.1f}", f"{r['vs_one_process']:.2f}x", f"{r['tokens']:,}",
                      "yes" if r["identical_statistics"] else ("counts yes, sums NO" if r["identical_counts"]
                                                                else "NO"), f"{r['max_gate_mass_diff']:.1e}")
    Console().print(table)
    RESULTS.mkdir(exist_ok=True)
    atomic_write_json(RESULTS / "scaleout.json", {"workers": args.workers, "max_tokens": args.max_tokens,
                                                  "threads_per_process": args.threads,
                                                  "cpu_count": os.cpu_count(), "rows": rows})


if __name__ == "__main__":
    main()
