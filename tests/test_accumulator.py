"""Streaming routing statistics on hand-written routings."""

import pytest
import torch

from lightmoe_cli.analysis.similarity import coactivation_similarity, cosine_matrix, output_similarity
from lightmoe_cli.profile.accumulator import LayerStats, TaskStats
from lightmoe_cli.profile.batches import batches, token_windows


def test_counts_gate_mass_and_coactivation_are_exact():
    s = LayerStats.empty(4)
    idx = torch.tensor([[0, 1], [1, 2], [0, 1], [3, 2]])
    w = torch.tensor([[0.6, 0.4], [0.7, 0.3], [0.5, 0.5], [0.9, 0.1]])
    s.update(idx, w, mask=torch.tensor([1, 1, 0, 1]))  # the third token is padding
    assert s.tokens == 3
    assert s.counts.tolist() == [1, 2, 2, 1]
    assert s.counts.sum() == s.tokens * 2
    assert torch.allclose(s.gate_mass, torch.tensor([0.6, 1.1, 0.4, 0.9], dtype=torch.float64))
    assert torch.equal(s.coactivation, s.coactivation.T)
    assert torch.equal(s.coactivation.diagonal(), s.counts)
    assert s.coactivation[0, 1] == 1 and s.coactivation[1, 2] == 1 and s.coactivation[2, 3] == 1
    assert s.coactivation[0, 2] == 0


def test_dropped_sentinel_and_duplicate_picks():
    s = LayerStats.empty(3)
    s.update(torch.tensor([[0, 3], [1, 1]]), torch.ones(2, 2), mask=None)  # 3 == E: dropped; 1 twice: once
    assert s.counts.tolist() == [1, 1, 0] and s.tokens == 2


def test_task_stats_round_trip_and_merge():
    t = TaskStats.empty("x", {1: 4, 3: 4})
    t.layers[1].update(torch.tensor([[0, 1]]), torch.ones(1, 2), None)
    back = TaskStats.from_tensors("x", t.to_tensors())
    assert sorted(back.layers) == [1, 3] and back.layers[1].counts.tolist() == [1, 1, 0, 0]
    back.layers[1].merge(t.layers[1])
    assert back.layers[1].counts.tolist() == [2, 2, 0, 0] and back.layers[1].tokens == 2


def test_similarity_kinds_on_known_inputs():
    w = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(cosine_matrix(w), torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.float64))
    outs = torch.stack([w, -w, w])  # (E=3, N=3, H=2)
    sim = output_similarity(outs)
    assert sim[0, 2] == pytest.approx(1.0) and sim[0, 1] == pytest.approx(-1.0)
    co = torch.tensor([[4, 4, 0], [4, 4, 0], [0, 0, 0]])
    cs = coactivation_similarity(co)
    assert cs[0, 1] == pytest.approx(1.0) and cs[0, 2] == 0 and cs[2, 2] == 1


class _Tok:
    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def test_windows_respect_cap_and_batches_pad():
    windows = list(token_windows(_Tok(), ["abcdefgh", "", "xyz"], seq_len=3, max_tokens=10))
    assert [len(w) for w in windows] == [3, 3, 2, 2]
    assert sum(map(len, windows)) == 10
    b = list(batches(windows, batch_size=3, pad_id=0))
    assert b[0].input_ids.shape == (3, 3) and b[0].real_tokens == 8
    assert b[1].attention_mask.tolist() == [[1, 1]]


def test_reap_saliency_weights_output_norms_by_router_weight():
    from lightmoe_cli.analysis.similarity import reap_saliency

    outputs = torch.zeros(3, 2, 2)
    outputs[0, :, 0] = 2.0  # expert 0: norm 2 on both tokens
    outputs[1, :, 1] = 10.0  # expert 1: norm 10
    idx = torch.tensor([[0, 1], [0, 3]])  # 3 == E: dropped sentinel, ignored
    w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    s = reap_saliency(outputs, idx, w)
    assert s.tolist() == pytest.approx([(0.5 * 2 + 1.0 * 2) / 2, 0.5 * 10, 0.0])
