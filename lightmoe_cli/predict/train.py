"""Train the expert predictor and its baselines on one profile's traces, score all of them on held-out traces.

Baselines, so the learned predictor's numbers mean something: layer frequency (the target layer's most used
experts, the same guess for every token), the previous token's picks at the target layer, and a scikit-learn
logistic regression on the same router input (one binary classifier per expert).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from lightmoe_cli.analysis.predict_metrics import PredictionScores, score_predictions
from lightmoe_cli.predict.data import PredictorData
from lightmoe_cli.predict.model import ExpertPredictor, PredictorConfig


@dataclass
class TrainSettings:
    epochs: int = 30
    batch: int = 16
    lr: float = 2e-3
    d_model: int = 128
    layers: int = 2
    lr_examples: int = 8000  # logistic regression: examples per layer pair (sub-sampled)
    seed: int = 0


def _multi_hot(ids: np.ndarray, e: int) -> np.ndarray:
    out = np.zeros((len(ids), e), dtype=np.float32)
    np.put_along_axis(out, ids, 1.0, axis=1)
    return out


def _batches(data: PredictorData, order: np.ndarray, size: int, e: int):
    for b in range(0, len(order), size):
        idx = order[b:b + size]
        s = max(len(data.inputs[i]) for i in idx)
        h = data.inputs[idx[0]].shape[1]
        x = np.zeros((len(idx), s, h), dtype=np.float32)
        y = np.zeros((len(idx), s, e), dtype=np.float32)
        pad = np.ones((len(idx), s), dtype=bool)
        for r, i in enumerate(idx):
            n = len(data.inputs[i])
            x[r, :n], y[r, :n], pad[r, :n] = data.inputs[i], _multi_hot(data.targets[i], e), False
        yield (torch.from_numpy(x), torch.tensor([data.pair_of[i] for i in idx]), torch.from_numpy(pad),
               torch.from_numpy(y))


def train_predictor(train: PredictorData, num_experts: int, top_k: int, settings: TrainSettings,
                    on_epoch=None) -> ExpertPredictor:
    torch.manual_seed(settings.seed)
    cfg = PredictorConfig(train.inputs[0].shape[1], num_experts, top_k, train.pairs, settings.d_model,
                          settings.layers, max_len=max(len(x) for x in train.inputs))
    model = ExpertPredictor(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.01)
    rng = np.random.default_rng(settings.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="none")
    for epoch in range(settings.epochs):
        model.train()
        total = 0.0
        for x, pair, pad, y in _batches(train, rng.permutation(len(train.inputs)), settings.batch, num_experts):
            loss = (loss_fn(model(x, pair, pad), y).mean(-1) * (~pad)).sum() / (~pad).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach())
        if on_epoch:
            on_epoch(epoch, total)
    return model.eval()


@torch.no_grad()
def predictor_scores(model: ExpertPredictor, data: PredictorData) -> list[np.ndarray]:
    """Per sequence: (S, E) predicted scores."""
    out = []
    for i in range(len(data.inputs)):
        x = torch.from_numpy(data.inputs[i])[None]
        out.append(model(x, torch.tensor([data.pair_of[i]]))[0].numpy())
    return out


def frequency_scores(train: PredictorData, test: PredictorData, e: int) -> list[np.ndarray]:
    freq = {p: np.zeros(e) for p in range(len(train.pairs))}
    for ids, p in zip(train.targets, train.pair_of, strict=True):
        freq[p] += np.bincount(ids.reshape(-1), minlength=e)[:e]
    return [np.tile(freq[p], (len(ids), 1)) for ids, p in zip(test.targets, test.pair_of, strict=True)]


def previous_token_scores(train: PredictorData, test: PredictorData, e: int) -> list[np.ndarray]:
    """The previous token's picks at the target layer (the first token of a window: layer frequency)."""
    freq = frequency_scores(train, test, e)
    out = []
    for ids, f in zip(test.targets, freq, strict=True):
        s = f / max(f[0].max(), 1) * 0.5  # frequency only breaks ties below a real pick
        s[1:] += _multi_hot(ids[:-1], e)
        out.append(s)
    return out


def logistic_scores(train: PredictorData, test: PredictorData, e: int, settings: TrainSettings) -> list[np.ndarray]:
    """scikit-learn logistic regression per layer pair, one binary classifier per expert."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(settings.seed)
    models = {}
    for p in range(len(train.pairs)):
        x = np.concatenate([a for a, q in zip(train.inputs, train.pair_of, strict=True) if q == p])
        y = np.concatenate([_multi_hot(t, e) for t, q in zip(train.targets, train.pair_of, strict=True) if q == p])
        keep = rng.permutation(len(x))[:settings.lr_examples]
        x, y = x[keep], y[keep]
        seen = y.sum(0) > 0  # an expert never picked in training gets score 0
        scaler = StandardScaler().fit(x)
        clf = OneVsRestClassifier(LogisticRegression(max_iter=300, C=0.1)).fit(scaler.transform(x), y[:, seen])
        models[p] = (scaler, clf, seen)
    out = []
    for x, p in zip(test.inputs, test.pair_of, strict=True):
        scaler, clf, seen = models[p]
        s = np.zeros((len(x), e))
        s[:, seen] = clf.predict_proba(scaler.transform(x))
        out.append(s)
    return out


def evaluate_all(scores: dict[str, list[np.ndarray]], test: PredictorData) -> dict[str, PredictionScores]:
    truth = np.concatenate(test.targets)
    return {name: score_predictions(np.concatenate(s), truth) for name, s in scores.items()}


def timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


@torch.no_grad()
def predicted_experts(model: ExpertPredictor, trace: dict, width: int) -> dict[int, np.ndarray]:
    """For one task's traces ({"positions", "router_input", "ids"} as load_profile_traces gives), the `width`
    experts the predictor names for every token of each target layer: {target layer: (T, width)}."""
    from lightmoe_cli.analysis.predict_metrics import top_k_sets
    from lightmoe_cli.predict.data import window_starts

    out = {}
    windows = window_starts(trace["positions"])
    for p, (src, dst) in enumerate(model.cfg.pairs):
        parts = []
        for start, end in windows:
            x = torch.from_numpy(np.asarray(trace["router_input"][src][start:end], dtype=np.float32))[None]
            parts.append(top_k_sets(model(x, torch.tensor([p]))[0].numpy(), width))
        out[dst] = np.concatenate(parts)
    return out
