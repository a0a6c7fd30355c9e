"""The typer application every command module registers into (and the two sub-apps, demo and predict)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lightmoe",
    help="Profile Mixture-of-Experts models and prepare them for inference in less memory.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
demo_app = typer.Typer(help="Build the embedded demo model: corpus, training, model card.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")
predict_app = typer.Typer(help="Expert-activation prediction (MoE-Beyond) from routing traces.",
                          no_args_is_help=True)
app.add_typer(predict_app, name="predict")
