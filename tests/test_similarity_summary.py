"""Similarity summaries that say whether redirect can pay off, and the side-by-side histogram plot."""

import numpy as np

from lightmoe_cli.analysis.similarity import nearest_neighbour_similarity, similarity_summary
from lightmoe_cli.demo.compare_similarity import compare_similarity


def test_nearest_neighbour_ignores_the_diagonal_and_summary_counts_redirectable_experts():
    sim = np.array([[1.0, 0.9, 0.1, 0.0],
                    [0.9, 1.0, 0.2, 0.3],
                    [0.1, 0.2, 1.0, 0.4],
                    [0.0, 0.3, 0.4, 1.0]])
    assert np.allclose(nearest_neighbour_similarity(sim), [0.9, 0.9, 0.4, 0.4])
    s = similarity_summary(sim, threshold=0.5)
    assert s["max_pair"] == 0.9 and np.isclose(s["mean_pair"], (0.9 + 0.1 + 0.0 + 0.2 + 0.3 + 0.4) / 6)
    assert s["share_nearest_at_threshold"] == 0.5 and np.isclose(s["mean_nearest"], 0.65)


def test_compare_similarity_writes_a_png_and_one_row_per_model_layer_kind(tmp_path):
    rng = np.random.default_rng(0)

    def layer(alike: bool) -> dict:
        x = rng.normal(size=(8, 16)) + (5 * np.ones(16) if alike else 0)
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        return {"output": u @ u.T, "weight": u @ u.T}

    models = {"scratch": {0: layer(False), 1: layer(False)}, "upcycled": {0: layer(True), 1: layer(True)}}
    rows = compare_similarity(models, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(rows) == 2 * 2 * 2
    up = [r["mean_pair"] for r in rows if r["model"] == "upcycled"]
    scratch = [r["mean_pair"] for r in rows if r["model"] == "scratch"]
    assert min(up) > max(scratch)
