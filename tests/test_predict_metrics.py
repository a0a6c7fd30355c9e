"""Predictor scores on hand-made predictions, and the all-inactive baseline MoE-Beyond's accuracy hides."""

import numpy as np
import pytest

from lightmoe_cli.analysis.predict_metrics import score_predictions, top_k_sets


def test_perfect_half_and_wrong_predictions():
    true = np.array([[0, 1], [2, 3]])
    perfect = np.zeros((2, 8))
    perfect[0, [0, 1]] = perfect[1, [2, 3]] = 1
    s = score_predictions(perfect, true)
    assert s.recall_at_k == s.precision_at_k == s.f1 == s.binary_accuracy == 1.0
    assert s.all_inactive_accuracy == pytest.approx(6 / 8)
    half = np.zeros((2, 8))
    half[0, [0, 5]] = half[1, [3, 6]] = 1
    s = score_predictions(half, true)
    assert s.recall_at_k == 0.5 and s.binary_accuracy == pytest.approx(1 - 2 / 8)
    wrong = np.zeros((2, 8))
    wrong[:, [6, 7]] = 1
    s = score_predictions(wrong, true)
    assert s.recall_at_k == 0 and s.binary_accuracy == pytest.approx(4 / 8)
    assert s.binary_accuracy < s.all_inactive_accuracy  # a wrong guess scores below predicting nothing


def test_top_k_sets_take_the_highest_scores():
    assert top_k_sets(np.array([[0.1, 0.9, 0.5, 0.7]]), 2).tolist() == [[1, 3]]
