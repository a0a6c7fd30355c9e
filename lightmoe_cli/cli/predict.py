"""`lightmoe predict train`: the expert-activation predictor (MoE-Beyond) from a profile's routing traces."""

from __future__ import annotations

from lightmoe_cli.cli.app import predict_app
from lightmoe_cli.cli.common import command
from lightmoe_cli.predict.request import PredictTrainRequest


@command(predict_app, "train", PredictTrainRequest)
def predict_train(req: PredictTrainRequest) -> None:
    """Train the expert predictor (next layer's experts from this layer's router input) and score it on
    held-out traces beside its baselines: layer frequency, previous token, logistic regression."""
    from rich.console import Console

    from lightmoe_cli.predict.request import load_examples, run_predict_train
    from lightmoe_cli.report import predictor_table, token_progress

    req.validate()
    examples = load_examples(req)  # a bad profile is one line, before the progress bar
    console = Console(width=max(Console().width, 100))
    with token_progress(console, unit="epochs") as progress:
        payload, folder = run_predict_train(req, progress, examples)
    console.print(predictor_table(payload))
    console.print(f"predictor written to {folder}")
