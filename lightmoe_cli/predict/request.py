"""`lightmoe predict train` as one call: traces -> the predictor and its baselines, scored on held-out traces.

Without --heldout, the last share of each task's windows in the training profile is held out, so the command
always reports a score on text the predictor did not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Output, Threads, check_bounds, check_io, option


@dataclass(kw_only=True)
class PredictTrainRequest(Output, Threads):
    """What `lightmoe predict train` was asked for (the defaults of its options live here)."""

    help_overrides: ClassVar[dict[str, str]] = {
        "out": "Predictor folder (default: runs/predictors/<profile folder name>)."}

    profile: Path = option(help="Profile with traces and router inputs to learn from (lightmoe profile "
                           "--save-router-inputs).", short="-p", role="input")
    heldout: Path | None = option(None, "Profile of held-out text with router inputs, to score on (default: the "
                                  "last --heldout-share of each task's windows in --profile).", role="input")
    heldout_share: float = option(0.2, "Without --heldout: share of each task's windows held out.", above=0,
                                  maximum=0.9, excludes="heldout")
    epochs: int = option(30, "Training epochs over the profile's windows.", minimum=1)
    d_model: int = option(128, "Predictor width (a multiple of 4).", minimum=8)

    def output_kind(self) -> tuple[str, bool]:
        return "lightmoe-predictor", False

    @property
    def folder(self) -> Path:
        """Where the predictor goes: --out, or the default named after the training profile."""
        from lightmoe_cli.paths import default_predictor

        return self.out or default_predictor(self.profile)

    def validate(self) -> None:
        """Every option checked before any trace is read, the output included (never after training)."""
        if self.d_model % 4:
            raise LightMoEError(f"--d-model must be a multiple of 4 (at least 8), not {self.d_model}")
        check_bounds(self)
        check_io(self, self.folder)


def load_examples(req: PredictTrainRequest):
    """(training profile, held-out description, train examples, held-out examples): read and checked before any
    training starts."""
    from lightmoe_cli.predict.data import examples_from_traces, load_profile_traces, split_traces
    from lightmoe_cli.profile.artifact import load_profile

    tp = load_profile(req.profile)
    layers = list(tp.model.moe_layers)
    if len(layers) < 2:
        raise LightMoEError("the model has one MoE layer: there is no next layer to predict")
    traces = load_profile_traces(tp)
    if req.heldout is None:
        try:
            train, test = split_traces(traces, req.heldout_share)
        except ValueError as e:
            raise LightMoEError(f"{e}: give --heldout PROFILE") from e
        return tp, f"{tp.path} (last {req.heldout_share:.0%} of each task's windows)", \
            examples_from_traces(train, layers), examples_from_traces(test, layers)
    hp = load_profile(req.heldout)
    if tp.model.fingerprint != hp.model.fingerprint:
        raise LightMoEError(f"--heldout {hp.path} was profiled on another model than --profile {tp.path}")
    return tp, str(hp.path), examples_from_traces(traces, layers), \
        examples_from_traces(load_profile_traces(hp), layers)


def run_predict_train(req: PredictTrainRequest, progress=None, examples=None) -> tuple[dict, Path]:
    """Train, score every predictor beside its baselines, write the predictor; returns (scores payload, folder).
    `examples`: what `load_examples` returned, when the caller read them first."""
    import torch

    from lightmoe_cli.predict.model import save_predictor
    from lightmoe_cli.predict.train import (
        TrainSettings,
        evaluate_all,
        frequency_scores,
        logistic_scores,
        predictor_scores,
        previous_token_scores,
        timed,
        train_predictor,
    )

    req.validate()
    if req.threads:
        torch.set_num_threads(req.threads)
    tp, heldout_name, train, test = examples or load_examples(req)
    folder = req.folder
    e, k = tp.model.num_experts[0], tp.model.top_k[0]
    settings = TrainSettings(epochs=req.epochs, d_model=req.d_model)
    bar = progress.add_task("predictor", total=req.epochs) if progress else None
    model, train_s = timed(train_predictor, train, e, k, settings,
                           (lambda *_: progress.advance(bar)) if progress else None)
    lr, lr_s = timed(logistic_scores, train, test, e, settings)
    scores = {"all inactive": None, "layer frequency": frequency_scores(train, test, e),
              "previous token": previous_token_scores(train, test, e), "logistic regression": lr,
              "predictor": predictor_scores(model, test)}
    results = evaluate_all({n: s for n, s in scores.items() if s is not None}, test)
    payload = {"train_profile": str(tp.path), "heldout_profile": heldout_name, "train_tokens": train.tokens,
               "heldout_tokens": test.tokens, "pairs": [list(p) for p in train.pairs], "epochs": req.epochs,
               "train_seconds": round(train_s, 1), "logistic_seconds": round(lr_s, 1),
               "parameters": sum(p.numel() for p in model.parameters()),
               "scores": {n: vars(r) for n, r in results.items()}}
    save_predictor(model, folder, tp.model, payload, force=req.force)
    return payload, folder
