"""The benchmark harness's pure parts: interleaving, summaries, the noise verdict, the above-bound flag.

Why: these decide whether a measured ratio is printed as a result; they are tested on fake measurements (no
model, no timing), so the tests are exact.
"""

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (  # noqa: E402
    ABOVE_BOUND,
    Config,
    LoadSample,
    Metric,
    NoisePolicy,
    Summary,
    analyse,
    bandwidth_fraction,
    baseline_spreads,
    check_ratio,
    competing_cores,
    interleaved_order,
    judge_noise,
    judge_start,
    render_table,
    run_interleaved,
    summarise,
    write_json,
)
from lightmoe_cli.analysis.decode_bytes import BytesRecord, FlopsRecord  # noqa: E402


def test_interleaved_order_alternates_configurations():
    assert interleaved_order(["A", "B", "C"], 2) == [(0, "A"), (0, "B"), (0, "C"), (1, "A"), (1, "B"), (1, "C")]
    with pytest.raises(ValueError):
        interleaved_order(["A"], 0)


def test_run_interleaved_calls_in_order_and_groups_by_label():
    calls = []

    def measure(label):
        calls.append(label)
        return {"x": len(calls)}

    runs = run_interleaved(["A", "B"], measure, 3)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert runs == {"A": [{"x": 1}, {"x": 3}, {"x": 5}], "B": [{"x": 2}, {"x": 4}, {"x": 6}]}


def test_summary_median_min_max_spread():
    s = summarise([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 10.0, 5)
    assert s.spread == 10.0
    assert summarise([1.0, 2.0]).median == 1.5
    assert math.isinf(summarise([0.0, 1.0]).spread)
    with pytest.raises(ValueError):
        summarise([])


def _load(wall, load1, busy, own):
    return LoadSample(wall=wall, load1=load1, load5=load1, load15=load1, busy_s=busy, own_s=own)


def test_competing_cores_is_busy_time_minus_our_own():
    a, b = _load(0, 0, 100.0, 10.0), _load(10, 0, 125.0, 30.0)  # 25 s busy, 20 ours, over 10 s
    assert competing_cores(a, b) == pytest.approx(0.5)
    assert competing_cores(_load(0, 0, None, 0), _load(1, 0, None, 0)) is None


QUIET = NoisePolicy()


def test_quiet_run_is_not_noisy():
    v = judge_noise(_load(0, 2.0, 0, 0), _load(100, 2.1, 200.0, 199.0), cores=2, threads=2, repeats=5,
                    bandwidth=(20.0, 19.5), policy=QUIET)
    assert not v.noisy and v.line() == "quiet"


@pytest.mark.parametrize("change, reason", [
    ({"after": _load(100, 2.0, 260.0, 199.0)}, "other processes used 0.61"),  # 61 s of someone else's CPU
    ({"bandwidth": (20.0, 14.0)}, "memory bandwidth"),
    ({"repeats": 3}, "3 repeats"),
])
def test_noisy_runs_say_why(change, reason):
    kw = {"after": _load(100, 2.1, 200.0, 199.0), "bandwidth": (20.0, 19.5), "repeats": 5} | change
    v = judge_noise(_load(0, 2.0, 0, 0), kw["after"], 2, 2, kw["repeats"], kw["bandwidth"], QUIET)
    assert v.noisy and any(reason in r for r in v.reasons), v.reasons


def test_without_proc_stat_the_load_average_judges():
    before = _load(0, 0.1, None, 0)
    assert not judge_noise(before, _load(100, 2.3, None, 0), 2, 2, 5, None, QUIET).noisy
    v = judge_noise(before, _load(100, 3.2, None, 0), 2, 2, 5, None, QUIET)
    assert v.noisy and "1-min load 3.20" in v.line()
    assert judge_noise(before, _load(100, 2.0, 0.0, 0), 2, 2, 1, None, NoisePolicy(min_repeats=1)).reasons == ()


def test_start_verdict():
    assert judge_start(0.05, 1.9, cores=2, threads=2, policy=QUIET).noisy is False  # load1 remembers; CPU is idle
    assert judge_start(0.9, 0.0, 2, 2, QUIET).noisy
    assert judge_start(None, 1.9, 2, 2, QUIET).noisy  # no /proc/stat: the load average
    assert not judge_start(None, 1.9, 8, 2, QUIET).noisy  # 6 cores free
    assert not judge_start(0.9, 0.0, 2, 2, NoisePolicy(cpu_margin=None)).noisy  # the load average only
    start = judge_start(0.9, 0.0, 2, 2, QUIET)
    v = judge_noise(_load(0, 0, 0, 0), _load(1, 0, 0, 0), 2, 2, 5, None, QUIET, start)
    assert v.noisy and v.reasons == start.reasons


def test_ratio_above_its_bound_beyond_noise_is_flagged():
    base = Summary(10.0, 9.9, 10.1, 5)  # 2% spread
    fine = check_ratio(Summary(12.5, 12.4, 12.6, 5), base, bound=1.27)
    assert not fine.above_bound and fine.ratio == pytest.approx(1.25)
    over = check_ratio(Summary(15.3, 15.0, 15.5, 5), base, bound=1.27)
    # noise: the larger relative spread of the two, here the configuration's 15.5 / 15.0
    assert over.above_bound and over.limit == pytest.approx(1.27 * 15.5 / 15.0)
    noisy_base = Summary(10.0, 9.0, 11.0, 5)  # 22% spread: 1.30 is within the noise of 1.27
    assert not check_ratio(Summary(13.0, 12.9, 13.1, 5), noisy_base, bound=1.27).above_bound
    assert not check_ratio(Summary(99.0, 99.0, 99.0, 5), base, bound=None).above_bound
    slower = check_ratio(Summary(2.0, 2.0, 2.0, 5), Summary(4.0, 4.0, 4.0, 5), bound=1.0, higher_is_better=False)
    assert slower.ratio == 2.0 and slower.above_bound  # seconds: half the time is a 2x speed-up


def test_bandwidth_fraction():
    cost = BytesRecord(lm_head=0.5e9, routed_experts=0.5e9)
    assert bandwidth_fraction(10.0, cost, 20.0) == pytest.approx(0.5)
    assert bandwidth_fraction(10.0, FlopsRecord(lm_head=1e9), 20.0) is None
    assert bandwidth_fraction(10.0, cost, None) is None


def _fake_runs(values: dict[str, list[float]]) -> dict[str, list[dict]]:
    return {label: [{"decode_tokens_per_s": v, "seconds": 1 / v} for v in vs] for label, vs in values.items()}


def test_analyse_flags_the_ratio_above_its_bound_and_keeps_the_rest():
    """The README's 1.53x at half the activations against a 1.27x bound: flagged, not a result."""
    full = BytesRecord(lm_head=0.41e9, attention=0.13e9, routed_experts=0.40e9)
    half = BytesRecord(lm_head=0.41e9, attention=0.13e9, routed_experts=0.20e9)
    configs = [Config("full top-k", costs={"decode_tokens_per_s": full}),
               Config("topk", baseline="full top-k", costs={"decode_tokens_per_s": half}),
               Config("alloc", baseline="full top-k", costs={"decode_tokens_per_s": half}),
               Config("same code", baseline="full top-k", bounds={"decode_tokens_per_s": None})]
    runs = _fake_runs({"full top-k": [16.6, 16.5, 16.7, 16.6, 16.6], "topk": [20.0, 20.1, 19.9, 20.0, 20.0],
                       "alloc": [25.4, 25.5, 25.3, 25.4, 25.4], "same code": [30.0] * 5})
    metrics = [Metric("decode_tokens_per_s", "decode tok/s"), Metric("seconds", "s", False, ratio=False)]
    rows = {r.config.label: r for r in analyse(configs, runs, metrics, bandwidth_gbps=20.0)}
    bound = 0.94 / 0.74
    assert rows["topk"].ratios["decode_tokens_per_s"].bound == pytest.approx(bound)
    assert not rows["topk"].ratios["decode_tokens_per_s"].above_bound and rows["topk"].flags == []
    alloc = rows["alloc"].ratios["decode_tokens_per_s"]
    assert alloc.above_bound and alloc.ratio == pytest.approx(25.4 / 16.6)
    assert any(ABOVE_BOUND in f for f in rows["alloc"].flags)
    assert "decode_tokens_per_s" not in rows["full top-k"].ratios  # the baseline has no ratio
    assert rows["same code"].ratios["decode_tokens_per_s"].bound is None and rows["same code"].flags == []
    assert "seconds" not in rows["topk"].ratios and rows["topk"].stats["seconds"].n == 5
    assert rows["full top-k"].fractions["decode_tokens_per_s"] == pytest.approx(16.6 * 0.94e9 / 20e9)
    assert rows["same code"].fractions == {}
    # 30 tok/s x 0.94 GB would be above a 20 GB/s bandwidth: flagged as impossible
    configs[3].costs = {"decode_tokens_per_s": full}
    rows = {r.config.label: r for r in analyse(configs, runs, metrics, bandwidth_gbps=20.0)}
    assert any("of the measured bandwidth" in f for f in rows["same code"].flags)
    assert baseline_spreads(list(rows.values()), metrics) == {
        "full top-k: decode tok/s": pytest.approx(16.7 / 16.5)}
    row = rows["alloc"].to_json()
    assert row["ratios"]["decode_tokens_per_s"]["result"] is False and row["decode_tokens_per_s"] == 25.4
    assert row["cost_per_token"]["decode_tokens_per_s"]["unit"] == "bytes"


def test_table_marks_the_flag_and_json_is_written_whole(tmp_path):
    from rich.console import Console

    configs = [Config("base", costs={"decode_tokens_per_s": BytesRecord(lm_head=2.0)}),
               Config("fast", baseline="base", costs={"decode_tokens_per_s": BytesRecord(lm_head=1.0)})]
    rows = analyse(configs, _fake_runs({"base": [10.0] * 5, "fast": [30.0] * 5}),
                   [Metric("decode_tokens_per_s", "decode tok/s")], bandwidth_gbps=1.0)
    console = Console(width=200, record=True)
    console.print(render_table("t", rows, [Metric("decode_tokens_per_s", "decode tok/s")]))
    text = console.export_text()
    assert "(3.00) above bound" in text and ABOVE_BOUND in text and "2.00" in text  # the bound beside it
    assert "[min-max]" in text  # rich markup escaped
    out = write_json(tmp_path / "r.json", {"rows": [r.to_json() for r in rows]})
    assert out.read_text().startswith("{") and not (tmp_path / "r.json.tmp").exists()


def test_a_spread_baseline_makes_its_ratios_noisy_not_the_run():
    base, value = Summary(10.0, 8.0, 10.5, 5), Summary(12.0, 11.9, 12.1, 5)  # the baseline spreads 1.31x
    check = check_ratio(value, base, 1.27, max_spread=1.15)
    assert check.noisy and not check.to_json()["result"]
    quiet = check_ratio(value, Summary(10.0, 9.9, 10.1, 5), 1.27, max_spread=1.15)
    assert not quiet.noisy and quiet.to_json()["result"]
