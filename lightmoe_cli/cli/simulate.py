"""`lightmoe simulate`: replay routing traces through expert caches (LRU, LFU, Belady, static, task, predict)."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.evaluation.simulate import SimulateRequest


@command(app, "simulate", SimulateRequest)
def simulate_cmd(req: SimulateRequest) -> None:
    """Replay routing traces through per-layer expert caches: hit rate and experts moved per capacity."""
    from rich.console import Console

    from lightmoe_cli.evaluation.simulate import run_simulation
    from lightmoe_cli.report import simulation_table

    payload, folder = run_simulation(req)
    console = Console()
    console.print(simulation_table(payload["rows"], payload["tokens"]))
    console.print(f"written {folder / 'simulation.json'} and {folder / 'hit_rate.png'}")
