"""Rich tables for results shown in the terminal (the data comes from the pure cores)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


def domain_stats_table(stats: Sequence) -> Table:
    """Corpus build summary: documents and bytes per domain and split."""
    table = Table(title="demo corpus")
    table.add_column("domain")
    for split in ("train", "val", "test"):
        table.add_column(f"{split} docs", justify="right")
        table.add_column(f"{split} MB", justify="right")
    for s in stats:
        cells = []
        for split in ("train", "val", "test"):
            cells += [f"{s.documents[split]:,}", f"{s.bytes[split] / 1e6:.2f}"]
        table.add_row(s.domain, *cells)
    return table


class RateColumn(ProgressColumn):
    """Items per second of a progress task, in the bar's own unit (rich's speed columns assume bytes)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


def token_progress(console, unit: str = "tok") -> Progress:
    """Progress bars: done / total, rate in `unit` per second, time left."""
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(),
                    RateColumn(unit), TimeRemainingColumn(), console=console)


def profile_tables(manifest) -> list[Table]:
    """Per-task routing summary and the between-task JS matrix of a profile manifest (ProfileManifest)."""
    t = Table(title=f"routing profile: {manifest.model.name_or_path}")
    for col in ("task", "tokens", "routing entropy (bits)", "top-half coverage", "mean JS to other tasks (bits)"):
        t.add_column(col, justify="left" if col == "task" else "right")
    max_bits = max(manifest.model.num_experts)
    for s in manifest.summary:
        t.add_row(s.name, f"{s.tokens:,}", f"{s.entropy_bits:.2f}", f"{s.top_half_coverage:.1%}",
                  f"{s.mean_js_to_others_bits:.3f}")
    t.caption = (f"entropy out of log2({max_bits}); coverage = share of a task's picks on its own most frequent "
                 f"half of experts (50% = uniform); JS per layer, averaged over layers")
    names = [s.name for s in manifest.summary]
    js = Table(title=f"Jensen-Shannon divergence between tasks (bits, mean over layers; overall "
                     f"{manifest.mean_js_between_tasks_bits:.3f})")
    js.add_column("task")
    for i in range(len(names)):
        js.add_column(str(i + 1), justify="right")
    for i, (n, row) in enumerate(zip(names, manifest.js_between_tasks_bits, strict=True)):
        js.add_row(f"{i + 1} {n}", *(f"{v:.2f}" for v in row))
    return [t, js] + ([outlook_table(manifest.outlook)] if manifest.outlook else [])


def outlook_table(outlook: dict) -> Table:
    """Residency outlook: gate mass a budget holds with one global set vs each task's own set."""
    t = Table(title="residency outlook: share of each task's gate mass the resident experts hold",
              caption=f"held out = sets chosen on half the calibration tokens, measured on the other half\n"
                      f"advice: {outlook['advice']}", caption_justify="left")
    reach = any(r.get("redirect_reach") is not None for r in outlook["rows"])
    cols = ["budget", "slots", "global set", "task's own set", "held out: global", "held out: own", "gain"]
    for col in cols + (["redirect reach"] if reach else []):
        t.add_column(col, justify="right")
    for r in outlook["rows"]:
        cells = [f"{r['budget']:.0%}", str(r["slots"]), f"{r['global_coverage']:.1%}", f"{r['task_coverage']:.1%}",
                 f"{r['global_coverage_heldout']:.1%}", f"{r['task_coverage_heldout']:.1%}",
                 f"{r['heldout_gain']:+.1%}"]
        if reach:  # share of the missed gate mass whose expert has a similar enough resident
            cells.append("-" if r.get("redirect_reach") is None else f"{r['redirect_reach']:.1%}")
        t.add_row(*cells)
    return t


def policies_table() -> Table:
    """`lightmoe policies`: one line per registered policy with its parameters and defaults."""
    import dataclasses

    from rich.markup import escape

    from lightmoe_cli.policies.registry import policies

    t = Table(title="policies (build-bundle --policy NAME; parameters as --options)")
    for col in ("policy", "what it does", "parameters [default]"):
        t.add_column(col)
    for name, cls in policies().items():
        params = ", ".join(f"--{f.name.replace('_', '-')} [{f.default}]" for f in dataclasses.fields(cls.Params))
        t.add_row(name, cls.summary, escape(params) or "-")
    return t


def recovery_warning(bundle) -> str | None:
    """One line when a recovery (replace, prune-lora) went over its text more than once: its recipe was shorter
    than steps x batch x sequence length."""
    rep = bundle.manifest.replacement
    rec = rep.recovery if rep is not None else {}
    epochs = rec.get("epochs")
    if not epochs or epochs <= 1.0:
        return None
    return (f"the recovery text holds {rec['tokens']:,} training tokens for the {rec['tokens_needed']:,} its "
            f"{rec['steps']} steps read: it went over it {epochs:.1f} times (give --recover-tasks a recipe with "
            "more text, or fewer --recover-steps)")


def bundle_table(bundle) -> Table:
    """build-bundle summary: per layer slots, covered calibration gate mass, redirected and dropped experts."""
    b = bundle.manifest.budget
    table = Table(title=f"bundle {bundle.policy}: {b.resident_expert_bytes / 2**20:.1f} MiB resident experts "
                        f"({b.resident_fraction:.0%} of {b.all_expert_bytes / 2**20:.1f} MiB)")
    for col in ("layer", "slots / experts", "calibration gate mass covered", "redirected", "dropped / loaded"):
        table.add_column(col, justify="right")
    for lp in bundle.layers:
        missing = [e for e in range(lp.num_experts) if e not in set(lp.resident)]
        redirected = sum(1 for e in missing if lp.redirect[e] >= 0)
        table.add_row(str(lp.layer_index), f"{lp.slots}/{lp.num_experts}", f"{lp.covered_mass:.1%}",
                      str(redirected), str(len(missing) - redirected))
    return table


def run_tables(stats, policy: str) -> list[Table]:
    """`lightmoe run` summary and per-layer hit / redirect / drop / miss rates."""
    mib = 2**20
    t = Table(title=f"run ({policy})")
    t.add_column("measure")
    t.add_column("value", justify="right")
    prompt_tokens = sum(r.prompt_tokens for r in stats.requests)
    new_tokens = sum(r.new_tokens for r in stats.requests)
    t.add_row("requests / prompt tokens / new tokens", f"{len(stats.requests)} / {prompt_tokens} / {new_tokens}")
    t.add_row("prefill tokens/s", f"{stats.prefill_tokens_per_s:,.1f}")
    t.add_row("decode tokens/s", f"{stats.decode_tokens_per_s:,.1f}")
    t.add_row("resident expert memory", f"{stats.resident_expert_bytes / mib:,.1f} MiB")
    t.add_row("non-expert weights", f"{stats.non_expert_bytes / mib:,.1f} MiB")
    t.add_row("peak RSS (whole process)", f"{stats.peak_rss_bytes / mib:,.1f} MiB")
    t.add_row("swaps (layer events)", str(len(stats.swaps)))
    t.add_row("loads / evictions / stalls (steps that waited)",
              " / ".join(str(sum(s.get(k, 0) for s in stats.layers.values()))
                         for k in ("loads", "evictions", "stalls")))
    t.add_row("expert bytes loaded / load time", f"{stats.bytes_loaded / mib:,.1f} MiB / {stats.load_seconds:.3f} s")
    if stats.modelled_io_seconds is not None:
        t.add_row("modelled transfer time at --io-bandwidth", f"{stats.modelled_io_seconds:.3f} s")
    per = Table(title="per MoE layer")
    for col in ("layer", "picks", "hit", "redirect", "re-routed / dropped", "miss (loaded)", "loads"):
        per.add_column(col, justify="right")
    for li, s in stats.layers.items():
        per.add_row(str(li), f"{s['picks']:,}", f"{s['hit_rate']:.1%}", f"{s['redirect_rate']:.1%}",
                    f"{s['drop_rate']:.1%}", f"{s['miss_rate']:.1%}", str(s["loads"]))
    return [t, per]


def simulation_table(rows: list[dict], tokens: int) -> Table:
    """`lightmoe simulate`: hit rate and experts moved per cache policy and capacity."""
    t = Table(title=f"expert caches replaying {tokens:,} traced tokens (same start set and capacity per layer)",
              caption="belady = offline optimum of policies that load every miss; static = frequency set, never "
                      "loads (its misses are re-routed: accuracy, not I/O); task = the task's own set swapped in at "
                      "each task boundary", caption_justify="left")
    for col in ("capacity", "experts/layer", "policy", "hit rate", "loads/token", "MiB/token"):
        t.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        t.add_row(f"{r['fraction']:.0%}", str(r["capacity"]), r["policy"], f"{r['hit_rate']:.1%}",
                  f"{r['loads_per_token']:.3f}", f"{r['bytes_per_token'] / 2**20:.3f}")
    return t


def predictor_table(payload: dict) -> Table:
    """`lightmoe predict train`: held-out scores of the predictor beside its baselines."""
    scores = payload["scores"]
    inactive = next(iter(scores.values()))["all_inactive_accuracy"]
    t = Table(title=f"expert prediction on {payload['heldout_tokens']:,} held-out tokens x "
                    f"{len(payload['pairs'])} layer pairs (next layer's experts from this layer's router input)",
              caption=f"binary accuracy counts every expert as a 0/1 label: predicting nothing already scores "
                      f"{inactive:.1%}", caption_justify="left")
    for col in ("predictor", "recall@K", "precision@K", "F1", "binary accuracy"):
        t.add_column(col, justify="left" if col == "predictor" else "right")
    t.add_row("all inactive", "0.0%", "0.0%", "0.0%", f"{inactive:.1%}")
    for name, r in scores.items():
        t.add_row(name, f"{r['recall_at_k']:.1%}", f"{r['precision_at_k']:.1%}", f"{r['f1']:.1%}",
                  f"{r['binary_accuracy']:.1%}")
    return t


def similarity_comparison_table(rows: list[dict], threshold: float) -> Table:
    """`lightmoe demo similarity`: per model and layer, how alike the experts are."""
    table = Table(title="expert similarity (pairs off the diagonal); nearest = each expert's most similar other")
    for col in ("model", "layer", "kind", "mean pair", "max pair", "mean nearest", f"nearest >= {threshold:.1f}"):
        table.add_column(col, justify="left" if col in ("model", "kind") else "right")
    for r in rows:
        table.add_row(r["model"], str(r["layer"]), r["kind"], f"{r['mean_pair']:.3f}", f"{r['max_pair']:.3f}",
                      f"{r['mean_nearest']:.3f}", f"{r['share_nearest_at_threshold']:.0%}")
    return table


def showcase_table(rows, tokens: int, domains: int, budget: float) -> Table:
    """`lightmoe demo compare`: full vs prune vs task-aware at one budget on a held-out stream."""
    table = Table(title=f"the demo model at {budget:.0%} expert memory: {tokens:,} held-out tokens of {domains} "
                        "domains, served in domain blocks")
    for col in ("policy", "expert memory", "NLL / token", "vs full", "swaps", "decode tok/s"):
        table.add_column(col, justify="left" if col == "policy" else "right")
    for r in rows:
        table.add_row(r.policy, f"{r.expert_mib:.1f} MiB", f"{r.nll:.3f}", f"{r.delta_nll:+.3f}", str(r.swaps),
                      f"{r.decode_tokens_per_s:.0f}")
    return table
