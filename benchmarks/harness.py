"""One measuring harness for the benchmarks: results that cannot overclaim.

Why: a speed ratio is only a result when (a) the configurations met the same machine, (b) the machine was not
busy with other work, and (c) the ratio is physically possible. So every benchmark here
- runs its configurations interleaved (A B C A B C ..., never A A A B B B), >= 5 repeats by default, each repeat
  a fresh measurement, and reports the median with its min and max;
- records the machine's load before and after, measures the CPU time other processes took during the
  measurements (/proc/stat minus our own process tree) and refuses the run when other work competed for the
  cores, when the baseline's repeats spread more than 15% or when the memory bandwidth drifted
  (`--allow-noisy` writes it anyway, marked "noisy" in the JSON and the table title);
- probes the memory bandwidth in the same run (a matvec over a buffer far above the caches) and prints beside
  each ratio its bound (lightmoe_cli.analysis.decode_bytes: bytes per decoded token, FLOPs per prefill token) and
  the configuration's fraction of the bandwidth limit. A ratio above its bound by more than the measured noise
  is flagged "above bound: not a result" in the table and the JSON.

The pure parts (order, summaries, the noise verdict, the ratio check, the rows) take numbers and return records;
sampling the machine, probing and writing are the thin rest.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lightmoe_cli.analysis.decode_bytes import BytesRecord, FlopsRecord, speedup_bound  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
ABOVE_BOUND = "above bound: not a result"
NOISY_RATIO = "noisy: not a result"


# --- summaries and order ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary:
    """Median of a metric's repeats with its range."""

    median: float
    min: float
    max: float
    n: int

    @property
    def spread(self) -> float:
        """max / min (1.0: every repeat equal); inf when the minimum is not positive."""
        return self.max / self.min if self.min > 0 else math.inf

    def to_json(self) -> dict[str, float]:
        return asdict(self) | {"spread": self.spread}


def summarise(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("no repeats to summarise")
    return Summary(float(statistics.median(values)), float(min(values)), float(max(values)), len(values))


def interleaved_order(labels: Sequence[str], repeats: int) -> list[tuple[int, str]]:
    """(repeat, label) in the order to measure: every configuration once per repeat, so drift and bursts of other
    work hit all of them alike instead of one block of repeats."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    return [(r, label) for r in range(repeats) for label in labels]


def run_interleaved(labels: Sequence[str], measure: Callable[[str], Mapping[str, Any]], repeats: int,
                    on_run: Callable[[int, str, Mapping[str, Any]], None] | None = None) -> dict[str, list[dict]]:
    """Call `measure(label)` in interleaved order; returns each label's measurements in repeat order."""
    runs: dict[str, list[dict]] = {label: [] for label in labels}
    for r, label in interleaved_order(labels, repeats):
        result = dict(measure(label))
        runs[label].append(result)
        if on_run:
            on_run(r, label, result)
    return runs


# --- the machine -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadSample:
    """The machine at one instant: load averages, busy CPU seconds on our CPUs (all processes, steal included;
    None off Linux) and the CPU seconds of our own process tree (this process and the children it waited for)."""

    wall: float
    load1: float
    load5: float
    load15: float
    busy_s: float | None
    own_s: float

    def to_json(self) -> dict[str, float | None]:
        return asdict(self)


def _busy_seconds(cpus: set[int]) -> float | None:
    """Busy time of `cpus` from /proc/stat: user, nice, system, irq, softirq and steal (a neighbour VM's share)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    busy = 0
    for line in lines:
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            busy += v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    return busy / hz


def usable_cpus() -> set[int]:
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return set(range(os.cpu_count() or 1))


def sample_load(cpus: set[int] | None = None) -> LoadSample:
    t = os.times()
    one, five, fifteen = os.getloadavg()
    return LoadSample(time.monotonic(), one, five, fifteen, _busy_seconds(cpus or usable_cpus()),
                      t.user + t.system + t.children_user + t.children_system)


def competing_cores(before: LoadSample, after: LoadSample) -> float | None:
    """Cores' worth of CPU that other processes used between two samples (None without /proc/stat)."""
    if before.busy_s is None or after.busy_s is None or after.wall <= before.wall:
        return None
    return max(0.0, (after.busy_s - before.busy_s) - (after.own_s - before.own_s)) / (after.wall - before.wall)


@dataclass(frozen=True)
class NoisePolicy:
    """When a run is too noisy to be a result. Margins are in cores beyond the ones the benchmark leaves free.

    cpu_margin None: do not judge other processes' CPU time (a benchmark whose own workers are not our children,
    such as Ray's, would count as competing); the 1-min load average judges instead."""

    load_margin: float = 0.5  # 1-min load average allowed above the free cores (when /proc/stat is missing)
    cpu_margin: float | None = 0.3  # other processes' cores allowed above the free cores
    max_spread: float = 1.15  # a baseline's max / min over its repeats
    max_bandwidth_drift: float = 0.15  # |before - after| / max of the bandwidth probes
    min_repeats: int = 5  # fewer cannot show the noise (quality benchmarks whose scores are exact pass 1)


@dataclass(frozen=True)
class Verdict:
    noisy: bool
    reasons: tuple[str, ...] = ()

    def line(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "quiet"


def judge_start(idle_competing: float | None, load1: float, cores: int, threads: int,
                policy: NoisePolicy) -> Verdict:
    """Is other work running before we start? `idle_competing`: cores busy while this process sat idle for a
    moment (None without /proc/stat: the 1-min load judges, which still remembers a previous benchmark)."""
    free = max(0, cores - threads)
    if idle_competing is not None and policy.cpu_margin is not None:
        if idle_competing > free + policy.cpu_margin:
            return Verdict(True, (f"other processes use {idle_competing:.2f} of {cores} cores before the run "
                                  f"({threads} wanted)",))
        return Verdict(False)
    if load1 > free + policy.load_margin:
        return Verdict(True, (f"1-min load {load1:.2f} before the run on {cores} cores ({threads} wanted)",))
    return Verdict(False)


def judge_noise(before: LoadSample, after: LoadSample, cores: int, threads: int, repeats: int,
                bandwidth: tuple[float, float] | None, policy: NoisePolicy, start: Verdict | None = None) -> Verdict:
    """The verdict on a finished run. before/after: the machine around the measurements; bandwidth: GB/s probed
    before and after (None: no probe)."""
    free = max(0, cores - threads)
    reasons = list(start.reasons if start else ())
    if repeats < policy.min_repeats:
        reasons.append(f"{repeats} repeats, fewer than {policy.min_repeats}: too few to see the noise")
    other = competing_cores(before, after)
    if other is not None and policy.cpu_margin is not None:
        if other > free + policy.cpu_margin:
            reasons.append(f"other processes used {other:.2f} of {cores} cores during the measurements "
                           f"({threads} ours)")
    elif after.load1 - threads > free + policy.load_margin:
        reasons.append(f"1-min load {after.load1:.2f} after the measurements, {threads} of it ours, on {cores} cores")
    # a baseline's spread judges the ratios it carries (analyse marks them noisy), not the whole run: the run is
    # refused for what slows every configuration at once -- other work, a drifting bandwidth
    if bandwidth:
        a, b = bandwidth
        drift = abs(a - b) / max(a, b) if max(a, b) > 0 else 0.0
        if drift > policy.max_bandwidth_drift:
            reasons.append(f"memory bandwidth {a:.1f} GB/s before, {b:.1f} after ({drift:.0%} apart)")
    return Verdict(bool(reasons), tuple(reasons))


# --- bounds beside ratios --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A measured quantity: `key` in a measurement's dict. `higher_is_better`: tokens/s yes, seconds no; a
    configuration's ratio is then its speed-up over its baseline either way (> 1: faster)."""

    key: str
    label: str
    higher_is_better: bool = True
    fmt: str = ",.2f"
    ratio: bool = True  # False: summarised only (e.g. peak RSS)


@dataclass
class Config:
    """One configuration of a benchmark.

    baseline: the label its ratios are taken against (None: it has none). costs: per metric key, what one token
    costs it (decode bytes or prefill FLOPs); the bound on its ratio is the baseline's cost over its own, and with
    bytes its fraction of the bandwidth limit is printed. bounds: an explicit bound per metric key overriding the
    costs (None: no bound, e.g. two code paths compared on equal work). info: extra columns, copied to the JSON.
    """

    label: str
    baseline: str | None = None
    costs: dict[str, BytesRecord] = field(default_factory=dict)
    bounds: dict[str, float | None] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RatioCheck:
    """A configuration's speed-up over its baseline beside its bound. `limit` = bound x (1 + noise), noise the
    larger relative spread of the two (at least `floor`): above it, the ratio is not a result. `noisy`: the
    repeats of either side spread more than the policy allows, so the ratio is not a result either (the rest of
    the run still is: prefill on short prompts can spread where decode does not)."""

    ratio: float
    bound: float | None
    limit: float | None
    above_bound: bool
    noisy: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"result": not (self.above_bound or self.noisy)}


def check_ratio(value: Summary, base: Summary, bound: float | None, higher_is_better: bool = True,
                floor: float = 0.02, max_spread: float = math.inf) -> RatioCheck:
    ratio = value.median / base.median if higher_is_better else base.median / value.median
    noisy = max(value.spread, base.spread) > max_spread
    if bound is None or math.isinf(bound):
        return RatioCheck(ratio, bound, None, False, noisy)
    noise = max(floor, value.spread - 1.0, base.spread - 1.0)
    limit = bound * (1.0 + noise)
    return RatioCheck(ratio, bound, limit, ratio > limit, noisy)


def bandwidth_fraction(tokens_per_s: float, cost: BytesRecord, bandwidth_gbps: float | None) -> float | None:
    """Share of the measured bandwidth a configuration's reads take: tokens/s x bytes per token / bandwidth.
    Above 1 the measurement cannot be right (or the model of the bytes is)."""
    if not bandwidth_gbps or isinstance(cost, FlopsRecord):
        return None
    return tokens_per_s * cost.total / (bandwidth_gbps * 1e9)


@dataclass
class Row:
    """One configuration's outcome: summaries, ratio checks, bandwidth fractions and flags."""

    config: Config
    stats: dict[str, Summary]
    ratios: dict[str, RatioCheck]
    fractions: dict[str, float]
    flags: list[str]
    runs: list[dict]

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {"label": c.label, "baseline": c.baseline, **c.info,
                **{k: s.median for k, s in self.stats.items()},  # the medians under the metrics' own keys
                "stats": {k: s.to_json() for k, s in self.stats.items()},
                "ratios": {k: r.to_json() for k, r in self.ratios.items()},
                "bandwidth_fraction": self.fractions,
                "cost_per_token": {k: v.to_json() | {"unit": "flops" if isinstance(v, FlopsRecord) else "bytes"}
                                   for k, v in c.costs.items()},
                "flags": self.flags,
                "runs": [{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool))} for r in self.runs]}


def bound_for(config: Config, base: Config, key: str) -> float | None:
    if key in config.bounds:
        return config.bounds[key]
    if key in config.costs and key in base.costs:
        return speedup_bound(base.costs[key], config.costs[key])
    return None


def analyse(configs: Sequence[Config], runs: Mapping[str, list[dict]], metrics: Sequence[Metric],
            bandwidth_gbps: float | None, max_spread: float | None = None) -> list[Row]:
    """Rows for the table and the JSON from the interleaved runs; a ratio whose repeats spread more than
    `max_spread` (default: the noise policy's) is marked noisy, not a result. Pure."""
    max_spread = NoisePolicy.max_spread if max_spread is None else max_spread
    by_label = {c.label: c for c in configs}
    stats = {c.label: {m.key: summarise([float(r[m.key]) for r in runs[c.label]]) for m in metrics
                       if all(m.key in r and r[m.key] is not None for r in runs[c.label]) and runs[c.label]}
             for c in configs}
    rows = []
    for c in configs:
        ratios, fractions, flags = {}, {}, []
        base = by_label.get(c.baseline) if c.baseline else None
        for m in metrics:
            s = stats[c.label].get(m.key)
            if s is None:
                continue
            cost = c.costs.get(m.key)
            if cost is not None and m.higher_is_better:
                f = bandwidth_fraction(s.median, cost, bandwidth_gbps)
                if f is not None:
                    fractions[m.key] = f
                    if f > 1.0 + max(0.02, s.spread - 1.0):
                        flags.append(f"{m.label}: {f:.0%} of the measured bandwidth")
            if base is None or not m.ratio or m.key not in stats[base.label] or stats[base.label][m.key].median <= 0:
                continue
            check = check_ratio(s, stats[base.label][m.key], bound_for(c, base, m.key), m.higher_is_better,
                                max_spread=max_spread)
            ratios[m.key] = check
            if check.noisy:
                flags.append(f"{m.label}: repeats spread more than {max_spread:.2f}x ({NOISY_RATIO})")
            if check.above_bound:
                flags.append(f"{m.label}: {check.ratio:.2f}x over {base.label!r} above its bound {check.bound:.2f}x "
                             f"({ABOVE_BOUND})")
        rows.append(Row(c, stats[c.label], ratios, fractions, flags, list(runs[c.label])))
    return rows


def baseline_spreads(rows: Sequence[Row], metrics: Sequence[Metric]) -> dict[str, float]:
    """max/min of every ratio-bearing metric of every configuration used as a baseline: their noise is every
    ratio's noise."""
    used = {r.config.baseline for r in rows if r.config.baseline}
    out = {}
    for r in rows:
        if r.config.label in used:
            for m in metrics:
                if m.ratio and m.key in r.stats:
                    out[f"{r.config.label}: {m.label}"] = r.stats[m.key].spread
    return out


# --- probe, table, JSON ----------------------------------------------------------------------------------------

def probe_bandwidth(mib: int = 512, threads: int = 2, reps: int = 7) -> Summary:
    """Memory bandwidth in GB/s: an fp32 matvec over a `mib` MiB matrix (far above the caches), median of `reps`
    after a warm-up, with `threads` torch threads (set explicitly, then restored): the most a decode step can
    stream through those cores (lightmoe_cli.fit.probe's matvec, which `lightmoe fit` uses too)."""
    from lightmoe_cli.fit.probe import matvec_rates

    return summarise([r / 1e9 for r in matvec_rates(mib, threads, reps)])


def demo_model_and_profile(threads: int, model: str | None = None):
    """(name, model, tokenizer, profile) of the demo model (or `model`) with its default profile, `threads` torch
    threads, and the demo's held-out documents built under data/tasks if they are not there yet: the set-up of
    every benchmark that serves held-out text through bundles of one profile."""
    import torch

    from lightmoe_cli.evaluation.tasks import build_demo_items
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.paths import CORPUS_DIR, ITEMS_DIR
    from lightmoe_cli.profile.run import ensure_profile

    torch.set_num_threads(threads)
    if not any((ITEMS_DIR / "ppl").glob("*.jsonl")):
        build_demo_items(CORPUS_DIR, ITEMS_DIR)
    name = resolve_model(model)
    loaded, tok = load_model_and_tokenizer(name)
    return name, loaded, tok, ensure_profile(loaded, tok, name)


def _ratio_cell(check: RatioCheck | None) -> str:
    if check is None:
        return "-"
    if check.above_bound:  # the caption spells it out: above bound, not a result
        return f"[red]({check.ratio:.2f}) above bound[/red]"
    if check.noisy:
        return f"[yellow]({check.ratio:.2f}) noisy[/yellow]"
    return f"{check.ratio:.2f}"


def render_table(title: str, rows: Sequence[Row], metrics: Sequence[Metric], info_columns: Sequence[str] = (),
                 caption: str | None = None):
    """A rich table: info columns, then per metric the median [min-max], and for ratio metrics the speed-up over
    the baseline, its bound and (bytes-bounded metrics) the fraction of the bandwidth limit."""
    from rich.markup import escape
    from rich.table import Table

    if any(c.above_bound for r in rows for c in r.ratios.values()):
        caption = (caption + "\n" if caption else "") + f"(ratio) {ABOVE_BOUND} (beyond its bound by more than " \
                                                         "the noise of the two configurations)"
    if any(c.noisy for r in rows for c in r.ratios.values()):
        caption = (caption + "\n" if caption else "") + f"(ratio) noisy: {NOISY_RATIO} (the repeats of one side " \
                                                         "spread too much)"
    table = Table(title=escape(title), caption=escape(caption) if caption else None)
    table.add_column("config", justify="left")
    for col in info_columns:
        table.add_column(col, justify="right")
    has_ratio = {m.key: any(m.key in r.ratios for r in rows) for m in metrics}
    has_fraction = {m.key: any(m.key in r.fractions for r in rows) for m in metrics}
    for m in metrics:
        table.add_column(escape(f"{m.label} [min-max]"), justify="right")
        if has_ratio[m.key]:
            table.add_column("x base", justify="right")
            table.add_column("bound", justify="right")
        if has_fraction[m.key]:
            table.add_column("of BW", justify="right")
    for r in rows:
        cells = [escape(r.config.label), *(escape(_fmt_info(r.config.info.get(col, "-"))) for col in info_columns)]
        for m in metrics:
            s = r.stats.get(m.key)
            cells.append(escape(f"{s.median:{m.fmt}} [{s.min:{m.fmt}}-{s.max:{m.fmt}}]") if s else "-")
            if has_ratio[m.key]:
                check = r.ratios.get(m.key)
                cells += [_ratio_cell(check), f"{check.bound:.2f}" if check and check.bound is not None else "-"]
            if has_fraction[m.key]:
                f = r.fractions.get(m.key)
                cells.append(f"{f:.0%}" if f is not None else "-")
        table.add_row(*cells)
    return table


def _fmt_info(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class HarnessOptions:
    """The options every timing benchmark shares, declared once."""

    repeats: int = 5
    allow_noisy: bool = False
    probe_mib: int = 512
    results_dir: Path = RESULTS

    @staticmethod
    def add_arguments(ap: argparse.ArgumentParser, repeats: int = 5) -> None:
        ap.add_argument("--repeats", type=int, default=repeats,
                        help=f"interleaved repeats per configuration (median, min, max; default {repeats})")
        ap.add_argument("--allow-noisy", action="store_true",
                        help="write the results of a noisy run (marked 'noisy') instead of refusing it")
        ap.add_argument("--probe-mib", type=int, default=512,
                        help="MiB of the memory-bandwidth probe's matrix (0: no probe; small only for smoke tests)")
        ap.add_argument("--results-dir", type=Path, default=RESULTS,
                        help="folder of the JSON results (default benchmarks/results; smoke tests write elsewhere)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> HarnessOptions:
        return cls(args.repeats, args.allow_noisy, args.probe_mib, args.results_dir)


class Harness:
    """One benchmark run: judges the machine at the start, measures interleaved, probes the bandwidth around the
    measurements, then refuses a noisy run or writes it marked. `threads`: cores the measurements keep busy."""

    def __init__(self, name: str, threads: int, options: HarnessOptions, policy: NoisePolicy = NoisePolicy(),
                 settle_s: float = 2.0, console=None):
        from rich.console import Console

        self.name, self.threads, self.options, self.policy = name, threads, options, policy
        self.console = console or Console(width=200)
        self.cpus = usable_cpus()
        self.cores = len(self.cpus)
        self.start = sample_load(self.cpus)
        time.sleep(settle_s)  # idle: whatever is busy now is other work
        idle = competing_cores(self.start, sample_load(self.cpus))
        self.start_verdict = judge_start(idle, self.start.load1, self.cores, threads, policy)
        self.start_idle_cores = idle
        self.refuse_if_noisy(self.start_verdict)
        self.before: LoadSample | None = None
        self.after: LoadSample | None = None
        self.bandwidth: tuple[Summary, Summary] | None = None

    def refuse_if_noisy(self, verdict: Verdict) -> None:
        if verdict.noisy and not self.options.allow_noisy:
            print(f"{self.name}: refused, the machine is not quiet ({verdict.line()}); rerun on a quiet machine "
                  f"or pass --allow-noisy to write it marked noisy", file=sys.stderr)
            raise SystemExit(3)

    def measure(self, labels: Sequence[str], measure: Callable[[str], Mapping[str, Any]],
                warmup: bool = False) -> dict[str, list[dict]]:
        """Interleaved repeats of `measure(label)`, the bandwidth probed just before and just after. `warmup`: one
        untimed measurement of the first label first (in-process benchmarks, where the first configuration would
        otherwise pay the allocator's and the kernels' first calls; child processes warm up on their own)."""
        if warmup and labels:
            measure(labels[0])
        probe = self.options.probe_mib
        first = probe_bandwidth(probe, self.threads) if probe else None
        self.before = sample_load(self.cpus)

        def progress(r: int, label: str, result: Mapping[str, Any]) -> None:
            self.console.print(f"[dim]repeat {r + 1}/{self.options.repeats}: {label}[/dim]")

        runs = run_interleaved(labels, measure, self.options.repeats, progress)
        self.after = sample_load(self.cpus)
        if first is not None:
            self.bandwidth = (first, probe_bandwidth(probe, self.threads))
        return runs

    @property
    def bandwidth_gbps(self) -> float | None:
        """The higher of the two probes' medians: a rate the machine was shown to reach in this run."""
        return max(self.bandwidth[0].median, self.bandwidth[1].median) if self.bandwidth else None

    def verdict(self, rows: Sequence[Row], metrics: Sequence[Metric]) -> Verdict:
        assert self.before is not None and self.after is not None, "measure() first"
        bw = (self.bandwidth[0].median, self.bandwidth[1].median) if self.bandwidth else None
        return judge_noise(self.before, self.after, self.cores, self.threads, self.options.repeats, bw, self.policy,
                           self.start_verdict)

    def machine_json(self, verdict: Verdict) -> dict[str, Any]:
        bw = self.bandwidth
        return {"cores": self.cores, "threads": self.threads, "repeats": self.options.repeats,
                "order": "interleaved", "load_start": self.start.to_json(),
                "idle_competing_cores_at_start": self.start_idle_cores,
                "load_before": self.before.to_json() if self.before else None,
                "load_after": self.after.to_json() if self.after else None,
                "competing_cores": competing_cores(self.before, self.after) if self.before and self.after else None,
                "bandwidth_gbps": self.bandwidth_gbps, "probe_mib": self.options.probe_mib,
                "bandwidth_probe": {"before": bw[0].to_json(), "after": bw[1].to_json()} if bw else None,
                "noisy": verdict.noisy, "noise_reasons": list(verdict.reasons), "policy": asdict(self.policy)}

    def finish(self, rows: Sequence[Row], metrics: Sequence[Metric], title: str, payload: dict[str, Any],
               out: Path, info_columns: Sequence[str] = (), rows_key: str = "rows") -> Path:
        """Refuse a noisy run (one line, nothing written) or print the table and write the JSON atomically
        (the harness's rows under `rows_key`, beside the benchmark's own payload)."""
        from rich.markup import escape

        verdict = self.verdict(rows, metrics)
        if verdict.noisy and not self.options.allow_noisy:  # kept for inspection, never as the result file
            refused = out.with_name(out.stem + ".refused.json")
            write_json(refused, payload | {"refused": True, "noisy": True, "machine": self.machine_json(verdict),
                                           rows_key: [r.to_json() for r in rows], "date": time.strftime("%Y-%m-%d")})
            self.console.print(f"measurements of the refused run kept in {refused} (not a result)")
        self.refuse_if_noisy(verdict)
        bw = self.bandwidth_gbps
        caption = f"median [min-max] of {self.options.repeats} interleaved repeats"
        if any(r.ratios for r in rows):
            costed = any(r.config.costs for r in rows)
            caption += "; bound: the most a ratio can be" + (" (decode: bytes read per token, prefill: FLOPs per "
                                                               "token)" if costed else "")
        if any(r.fractions for r in rows):
            caption += f"; of BW: tokens/s x bytes per token / {bw:.1f} GB/s measured"
        elif bw:
            caption += f"; memory bandwidth {bw:.1f} GB/s"
        if verdict.noisy:
            title = f"NOISY: {title}"
            caption += f"\nnoisy: {verdict.line()}"
        self.console.print(render_table(title, rows, metrics, info_columns, caption))
        for r in rows:
            for flag in r.flags:
                self.console.print(f"[red]{escape(r.config.label)}: {escape(flag)}[/red]")
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, payload | {"noisy": verdict.noisy, "machine": self.machine_json(verdict),
                                   "baseline_spreads": baseline_spreads(rows, metrics),
                                   rows_key: [r.to_json() for r in rows], "date": time.strftime("%Y-%m-%d")})
        self.console.print(f"wrote {out}")
        return out


def write_json(path: Path, payload: Any) -> Path:
    """Atomically (temp file + rename): an interrupted run leaves the previous results whole."""
    import json

    from lightmoe_cli.files import atomic_write

    return atomic_write(Path(path), json.dumps(payload, indent=1, default=str))
