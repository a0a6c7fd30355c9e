"""The options `lightmoe serve` gains for a fleet, declared once and checked at the edge.

Why a separate record: the single server's `ServeRequest` stays as it is; `FleetServeRequest` adds the fleet's
options to it, and `fleet_spec()` resolves them into the frozen `FleetSpec` that ray_app.py trusts. Without Ray,
`--replicas` is one line naming the extra, before anything is loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.fleet.router import ROUTERS
from lightmoe_cli.options import option
from lightmoe_cli.serve.server import ServeRequest

RAY_MISSING = ("--replicas needs Ray Serve: pip install 'lightmoe[ray]' (or drop --replicas to run one server "
               "in this process)")


@dataclass
class FleetServeRequest(ServeRequest):
    """`lightmoe serve`, with or without a fleet."""

    replicas: int | None = option(None, "Serve with K replicas as a Ray Serve application: one ingress detects each "
                                  "request's task and routes it to a replica serving that task (needs "
                                  "pip install 'lightmoe[ray]'). --threads is then per replica (default 1).",
                                  minimum=1, maximum=4096)
    ray_address: str | None = option(None, "With --replicas: a Ray cluster (host:port), or 'local' (default): a "
                                     "local Ray with replicas x threads CPUs.", requires="replicas")
    router: str = option("affinity", "With --replicas: affinity (tasks assigned to replicas by load, a hot task on "
                         "several) or round-robin (every replica sees every task).",
                         choices=tuple(ROUTERS.names()), requires="replicas")
    queue_bound: int = option(16, "With --replicas: requests in flight on every replica of a task before one goes "
                              "to the least busy replica instead.", minimum=1, maximum=100_000, requires="replicas")

    def validate(self) -> None:
        super().validate()
        if self.replicas is None:
            return
        try:
            import ray.serve  # noqa: F401
        except ImportError:
            raise LightMoEError(RAY_MISSING) from None
        from lightmoe_cli.profile.scaleout import check_ray_address

        check_ray_address(self.ray_address or "local")

    def single(self) -> ServeRequest:
        """The single server's request (what each replica builds)."""
        return ServeRequest(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ServeRequest)})

    def fleet_spec(self):
        from lightmoe_cli.fleet.ray_app import FleetSpec
        from lightmoe_cli.serve.server import _check_port, free_port

        port = self.port or free_port(self.host)
        _check_port(self.host, port)  # before minutes of starting Ray and loading replicas
        return FleetSpec(self.replicas, self.router, self.ray_address or "local", self.queue_bound, self.host, port,
                         self.threads or 1)
