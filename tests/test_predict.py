"""`lightmoe predict train` on the tiny model: traces with router inputs, windows, a trained predictor that beats
the layer-frequency guess on a learnable routing, and a predictor folder that loads back."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.predict.data import PredictorData, examples_from_traces, window_starts
from lightmoe_cli.predict.model import load_predictor
from lightmoe_cli.predict.train import TrainSettings, evaluate_all, frequency_scores, predictor_scores, train_predictor


def test_window_starts_split_on_position_zero():
    assert window_starts(np.array([0, 1, 2, 0, 1, 0])) == [(0, 3), (3, 5), (5, 6)]
    assert window_starts(np.array([3, 4, 0, 1])) == [(0, 2), (2, 4)]  # a trace that starts mid-window


def test_predictor_learns_a_routing_that_depends_on_the_input():
    """Next layer's picks are a function of the input's sign pattern: the predictor must beat frequency."""
    rng = np.random.default_rng(0)

    def make(n_seq: int) -> PredictorData:
        xs, ys = [], []
        for _ in range(n_seq):
            x = rng.normal(size=(32, 8)).astype(np.float32)
            first = (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0).astype(int)  # 4 groups of 2 experts each
            ys.append(np.stack([2 * first, 2 * first + 1], axis=1))
            xs.append(x)
        return PredictorData([(0, 1)], xs, ys, [0] * n_seq, ["t"] * n_seq)

    train, test = make(48), make(12)
    model = train_predictor(train, 8, 2, TrainSettings(epochs=25, d_model=32, layers=1))
    res = evaluate_all({"freq": frequency_scores(train, test, 8), "pred": predictor_scores(model, test)}, test)
    assert res["freq"].recall_at_k < 0.4 and res["pred"].recall_at_k > 0.7


def test_predict_train_command_on_profiled_traces(tiny_moe, tmp_path):
    root, _, _ = tiny_moe
    profiles = {}
    for name in ("train", "heldout"):
        out = tmp_path / name
        res = CliRunner().invoke(app, ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"),
                                       "--out", str(out), "--batch-size", "4", "--seq-len", "32",
                                       "--save-router-inputs", "--threads", "1"])
        assert res.exit_code == 0, res.output
        assert "router inputs in the traces: up to" in res.output
        profiles[name] = out
    from lightmoe_cli.predict.data import load_profile_traces
    from lightmoe_cli.profile.artifact import load_profile

    prof = load_profile(profiles["train"])
    data = examples_from_traces(load_profile_traces(prof), [0, 2])
    assert data.pairs == [(0, 2)] and all(len(x) <= 32 for x in data.inputs)
    assert data.tokens == sum(prof.manifest.tasks.values())
    pred = tmp_path / "pred"
    res = CliRunner().invoke(app, ["predict", "train", "--profile", str(profiles["train"]), "--heldout",
                                   str(profiles["heldout"]), "--epochs", "2", "--d-model", "16", "--threads", "1",
                                   "--out", str(pred)])
    assert res.exit_code == 0, res.output
    assert "logistic regression" in res.output and "already scores 75.0%" in res.output  # (E - K) / E = 6 / 8
    scores = json.loads((pred / "scores.json").read_text())["scores"]
    assert set(scores) == {"layer frequency", "previous token", "logistic regression", "predictor"}
    model = load_predictor(pred, prof.model.fingerprint)
    assert model.cfg.pairs == [(0, 2)] and model.cfg.num_experts == 8
    manifest = json.loads((pred / "manifest.json").read_text())
    assert manifest["kind"] == "lightmoe-predictor" and manifest["model"]["fingerprint"] == prof.model.fingerprint
    assert set(manifest["files"]) == {"predictor.safetensors", "scores.json"}
    res = CliRunner().invoke(app, ["simulate", "--heldout", str(profiles["heldout"]),
                                   "--profile", str(profiles["train"]), "--predictor",
                                   str(pred), "--cache", "0.5",
                                   "--out", str(tmp_path / "sim")])
    assert res.exit_code == 0, res.output
    rows = json.loads((tmp_path / "sim" / "simulation.json").read_text())["rows"]
    assert {r["policy"] for r in rows} == {"lru", "lfu", "belady", "static", "task", "predict"}
    res = CliRunner().invoke(app, ["predict", "train", "--profile", str(root / "model"), "--heldout", "x"])
    assert res.exit_code == 1 and "\n" == res.output[-1] and res.output.count("\n") == 1


@pytest.mark.parametrize("kind", ["missing", "damaged", "before-manifests"])
def test_a_damaged_predictor_is_one_line(tmp_path, kind):
    from lightmoe_cli.errors import LightMoEError

    if kind == "damaged":
        (tmp_path / "manifest.json").write_text("{")
    if kind == "before-manifests":
        (tmp_path / "predictor.json").write_text("{}")
    with pytest.raises(LightMoEError, match="lightmoe predict train"):
        load_predictor(tmp_path)
