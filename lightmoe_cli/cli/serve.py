"""`lightmoe serve`: an OpenAI-compatible server over a bundle, with task-aware request scheduling."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.serve.server import ServeRequest


@command(app, "serve", ServeRequest)
def serve_cmd(req: ServeRequest) -> None:
    """Serve a bundle over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models), with /health
    and Prometheus /metrics. Requests decode together; with task sets, requests are grouped by detected task."""
    from rich.console import Console

    from lightmoe_cli.serve.server import serve

    serve(req, Console(stderr=True))
