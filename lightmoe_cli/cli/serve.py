"""`lightmoe serve`: an OpenAI-compatible server over a bundle, with task-aware request scheduling; with
`--replicas K`, a Ray Serve fleet of such servers behind one task-affinity ingress."""

from __future__ import annotations

from lightmoe_cli.cli.app import app
from lightmoe_cli.cli.common import command
from lightmoe_cli.fleet.options import FleetServeRequest


@command(app, "serve", FleetServeRequest)
def serve_cmd(req: FleetServeRequest) -> None:
    """Serve a bundle over the OpenAI API (/v1/completions, /v1/chat/completions, /v1/models), with /health
    and Prometheus /metrics. Requests decode together; with task sets, requests are grouped by detected task.
    With --replicas K: K servers as a Ray Serve application, each request routed to a replica serving its task."""
    from rich.console import Console

    req.validate()  # a bad option (or --replicas without Ray) is one line before the bundle is read
    if req.replicas is not None:
        from lightmoe_cli.fleet.ray_app import run_fleet

        run_fleet(req.single(), req.fleet_spec(), Console(stderr=True))
        return
    from lightmoe_cli.serve.server import serve

    serve(req, Console(stderr=True))
