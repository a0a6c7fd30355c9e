"""Paired bootstrap intervals: correct point estimates, coverage, tighter than unpaired, seeded."""

import numpy as np
import pytest

from lightmoe_cli.analysis.paired import gap_closed, macro_statistic, paired_bootstrap


def test_point_estimate_is_the_macro_difference():
    a = {"x": np.array([1, 1, 0, 1]), "y": np.array([0, 0, 1, 1])}
    b = {"x": np.array([1, 0, 0, 0]), "y": np.array([0, 0, 1, 1])}
    iv = paired_bootstrap(a, b)
    assert iv.diff == pytest.approx(((3 / 4 - 1 / 4) + 0) / 2)
    assert iv.lo <= iv.diff <= iv.hi


def test_ratio_statistic_weights_by_tokens():
    nll = {"t": np.array([10.0, 30.0])}
    tokens = {"t": np.array([10.0, 10.0])}
    assert macro_statistic(nll, tokens) == pytest.approx(2.0)
    iv = paired_bootstrap({"t": np.array([10.0, 30.0])}, {"t": np.array([5.0, 25.0])}, tokens)
    assert iv.diff == pytest.approx(0.5) and iv.lo == pytest.approx(0.5) and iv.hi == pytest.approx(0.5)


def test_interval_covers_the_truth_about_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(200):
        base = rng.normal(size=300)
        a = {"t": base + 0.1 + rng.normal(scale=0.5, size=300)}
        b = {"t": base}
        iv = paired_bootstrap(a, b, replicates=500, seed=trial)
        covered += iv.lo <= 0.1 <= iv.hi
    assert 0.9 <= covered / 200 <= 0.99


def test_pairing_is_tighter_than_the_spread_of_either_system():
    rng = np.random.default_rng(2)
    base = rng.normal(scale=3.0, size=200)
    a, b = {"t": base + rng.normal(scale=0.1, size=200)}, {"t": base}
    iv = paired_bootstrap(a, b)
    assert iv.half_width < 0.05 < 3.0 / np.sqrt(200)


def test_seeded_and_validated():
    a, b = {"t": np.arange(10.0)}, {"t": np.arange(10.0)[::-1]}
    assert paired_bootstrap(a, b, seed=3) == paired_bootstrap(a, b, seed=3)
    with pytest.raises(ValueError, match="same non-empty length"):
        paired_bootstrap({"t": np.zeros(3)}, {"t": np.zeros(4)})
    with pytest.raises(ValueError, match="tasks differ"):
        paired_bootstrap({"t": np.zeros(3)}, {"u": np.zeros(3)})


def test_gap_closed():
    assert gap_closed(policy=1.0, prune=1.5, full=0.5) == pytest.approx(0.5)  # NLL: halfway to full
    assert gap_closed(policy=0.45, prune=0.40, full=0.50) == pytest.approx(0.5)  # accuracy: same formula
    assert gap_closed(policy=1.0, prune=1.0, full=1.0) is None
