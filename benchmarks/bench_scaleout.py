"""Profiling the demo model in one process vs sharded over workers (local processes, and a local Ray when it is
installed): wall time of each and whether the statistics are byte-identical. Prints a table and writes
benchmarks/results/scaleout.json.

    python benchmarks/bench_scaleout.py --workers 2 --max-tokens 8192

On this 2-core machine the workers share the cores (and each loads the model), so the ratio shows the overhead
of scale-out, not its gain; on a multi-GPU node or a cluster each worker has its own device.

Measured with benchmarks/harness.py: the runs interleaved over `--repeats` repeats (each profiles afresh),
median [min-max] wall time, the machine's load judged with workers x threads cores counted as ours. The bound is
not a bytes ratio (profiling is prefill, compute-bound, and every run does the same FLOPs): N workers can be at
most min(N, cores // threads) times faster than one process; a faster run is flagged.
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import Config, Harness, HarnessOptions, Metric, NoisePolicy, analyse  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=8192, help="tokens per calibration task")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the single process and of each worker "
                    "(BLAS sums in another order with another thread count: identical statistics need equal counts)")
    HarnessOptions.add_arguments(ap)
    args = ap.parse_args()
    ray = importlib.util.find_spec("ray") is not None
    # Ray's workers are not our children: their CPU time would read as other work, so the load average judges
    policy = NoisePolicy(cpu_margin=None) if ray else NoisePolicy()
    harness = Harness("bench_scaleout", args.workers * args.threads, HarnessOptions.from_args(args), policy)

    import torch
    from safetensors.torch import load_file

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
    one = "1 process"
    scales = {one: None, f"{args.workers} local processes": ScaleOut(spec, args.workers)}
    if ray:
        scales[f"Ray (local, {args.workers} workers)"] = ScaleOut(spec, args.workers, "local")
    reference: list = []  # the first one-process run's statistics and similarities

    def measure(label: str) -> dict:
        out = work / label.split()[0]
        shutil.rmtree(out, ignore_errors=True)  # each repeat profiles afresh
        t0 = time.perf_counter()
        prof = run_profile(model, tok, name, recipe, out, settings, scale=scales[label])
        seconds = time.perf_counter() - t0
        stats = {t: load_file(str(prof.path / "stats" / f"{t}.safetensors")) for t in prof.manifest.tasks}
        sims = load_file(str(prof.path / "similarity.safetensors"))
        if not reference:
            reference.extend([stats, sims])
        first, first_sims = reference
        same = all(torch.equal(stats[t][k], first[t][k]) for t in stats for k in stats[t]) and \
            all(torch.equal(sims[k], first_sims[k]) for k in sims)
        counts_same = all(torch.equal(stats[t][k], first[t][k]) for t in stats for k in stats[t]
                          if k.endswith(("counts", "coactivation", "tokens")))
        mass_diff = max(float((stats[t][k] - first[t][k]).abs().max()) for t in stats for k in stats[t]
                        if k.endswith("mass"))
        return {"seconds": seconds, "tokens": sum(prof.manifest.tasks.values()), "identical_statistics": same,
                "identical_counts": counts_same, "max_gate_mass_diff": mass_diff}

    runs = harness.measure(list(scales), measure)
    # N workers on cores // threads free cores: at most that many times faster than one process (compute-bound)
    bound = float(min(args.workers, max(1, harness.cores // args.threads)))
    configs = []
    for label in scales:
        rs = runs[label]
        same, counts = all(r["identical_statistics"] for r in rs), all(r["identical_counts"] for r in rs)
        configs.append(Config(label, baseline=None if label == one else one, bounds={"seconds": bound},
                              info={"tokens": f"{rs[0]['tokens']:,}",
                                    "statistics identical": "yes" if same else ("counts yes, sums NO" if counts
                                                                                else "NO"),
                                    "max |gate mass diff|": f"{max(r['max_gate_mass_diff'] for r in rs):.1e}"}))
    metrics = [Metric("seconds", "wall s", higher_is_better=False, fmt=".1f")]
    rows = analyse(configs, runs, metrics, None)
    for r in rows:  # the earlier record's fields
        r.config.info |= {"vs_one_process": r.stats["seconds"].median / rows[0].stats["seconds"].median,
                          "identical_statistics": all(x["identical_statistics"] for x in r.runs),
                          "identical_counts": all(x["identical_counts"] for x in r.runs)}
    harness.finish(rows, metrics, f"profile of {Path(name).name}: {len(recipe.tasks)} tasks x {args.max_tokens} "
                                  f"tokens (x base: speed-up over one process; bound: workers the cores can run)",
                   {"workers": args.workers, "max_tokens": args.max_tokens, "threads_per_process": args.threads,
                    "cpu_count": os.cpu_count(), "speedup_bound": bound}, harness.options.results_dir / "scaleout.json",
                   info_columns=("tokens", "statistics identical", "max |gate mass diff|"))


if __name__ == "__main__":
    main()
