"""Routing statistics on hand-made arrays whose answers are known."""

import numpy as np
import pytest

from lightmoe_cli.analysis.routing_stats import (
    cross_coverage,
    entropy_bits,
    js_divergence_bits,
    mean_offdiagonal,
    pairwise_js_bits,
    top_half_coverage,
)


def test_entropy_and_js_extremes():
    assert entropy_bits(np.ones(8)) == pytest.approx(3.0)
    assert entropy_bits(np.array([5, 0, 0, 0])) == pytest.approx(0.0)
    assert js_divergence_bits(np.array([1, 2, 3]), np.array([2, 4, 6])) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence_bits(np.array([1, 1, 0, 0]), np.array([0, 0, 3, 1])) == pytest.approx(1.0)


def test_pairwise_js_is_symmetric_with_zero_diagonal():
    counts = np.array([[10, 0, 5, 1], [1, 9, 0, 3], [4, 4, 4, 4]])
    js = pairwise_js_bits(counts)
    assert np.allclose(js, js.T) and np.allclose(np.diag(js), 0)
    assert js[0, 1] > js[0, 2] > 0
    assert mean_offdiagonal(js) == pytest.approx(js[np.triu_indices(3, 1)].mean())


def test_top_half_coverage():
    assert top_half_coverage(np.array([1, 1, 1, 1])) == pytest.approx(0.5)
    assert top_half_coverage(np.array([6, 2, 1, 1])) == pytest.approx(0.8)
    cc = cross_coverage(np.array([[6, 2, 1, 1], [0, 0, 5, 5]]))
    assert cc[0, 0] == pytest.approx(0.8) and cc[0, 1] == pytest.approx(0.0)
    assert cc[1, 1] == pytest.approx(1.0) and cc[1, 0] == pytest.approx(0.2)
