"""`lightmoe serve --replicas K` as a Ray Serve application: one ingress, K replicas of the single server.

Each replica is its own Ray Serve deployment (`replica-0` ... `replica-{K-1}`, one Ray actor each), so the
ingress, not Ray's own balancer, decides which replica serves a request; when a replica's actor dies, Ray Serve's
controller starts it again under the same name. A replica is `build_server` of serve/server.py (engine thread,
task scheduler, the same OpenAI app) called in-process through `asgi.call_asgi`. The ingress is `FleetFront`
behind Ray Serve's HTTP proxy, with the bundle's text classifier as its detector (the detector the single
server uses by default; the routing probe would need the model at the ingress).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from lightmoe_cli.errors import LightMoEError


@dataclass(frozen=True)
class FleetSpec:
    """What the fleet was asked for, resolved once at the edge (cli/serve.py)."""

    replicas: int
    router: str
    ray_address: str
    queue_bound: int
    host: str
    port: int
    threads: int  # torch threads per replica (Ray reserves as many CPUs for it)


class ReplicaServer:
    """One replica: the single server, built in this actor, answering raw HTTP requests in-process."""

    def __init__(self, req, index: int):
        from lightmoe_cli.serve import steplog
        from lightmoe_cli.serve.server import build_server

        # no torch.set_num_threads here: build_server loads at 1 thread and its engine thread sets req.threads
        self.index = index
        self.server = build_server(req)
        self.set_moves = 0
        rt = self.server.runtime
        use_task = rt.use_task

        def counted(task):  # the engine moves the set only when the task changes: count those moves
            self.set_moves += 1
            return use_task(task)

        rt.use_task = counted
        # every step, prefill and set move timed, when LIGHTMOE_STEP_LOG_DIR asks for it (serve/steplog.py)
        self.steps = steplog.from_env(self.server.engine, f"replica-{index}")

    async def call(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes):
        from lightmoe_cli.fleet.asgi import call_asgi

        async for item in call_asgi(self.server.app, method, path, headers, body):
            yield item

    def info(self) -> dict:
        eng, rt = self.server.engine, self.server.runtime
        if self.steps is not None:  # the engine flushes as it computes; an idle one's last steps go here
            self.steps.flush()
        return {"index": self.index, "pid": os.getpid(), "task": eng.current_task, "layer_swaps": eng.swaps,
                "set_moves": self.set_moves, "bytes_read": rt.store.bytes_read, "queue": eng.pending(),
                "running": len(eng.rows)}

    def check_health(self) -> None:
        """Ray Serve calls this periodically; a replica whose engine thread died is restarted."""
        if not self.server.engine.thread.is_alive():
            raise RuntimeError("the engine thread is not running")


def _is_gone(e: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(e, (RayActorError, ActorUnavailableError))


class FleetIngress:
    """Ray Serve's HTTP proxy hands every request to `__call__`; `FleetFront` does the rest."""

    def __init__(self, replicas: list, bundle_path: str, model_name: str, tasks: list[str], router: str,
                 queue_bound: int, api_key: str | None):
        from lightmoe_cli.bundle.task_classifier import load_text_classifier
        from lightmoe_cli.fleet.front import FleetFront
        from lightmoe_cli.fleet.router import ROUTERS

        self.handles = replicas
        clf = load_text_classifier(Path(bundle_path))
        detector = (lambda text: clf.predict(text)[0]) if clf is not None else None
        self.front = FleetFront(ROUTERS.get(router)(len(replicas), tasks, queue_bound=queue_bound), self._call,
                                self._probe, _is_gone, model_name, detector, "text", api_key)
        self._watch = None

    def _call(self, i: int, method: str, path: str, headers, body: bytes):
        return self.handles[i].options(stream=True).call.remote(method, path, headers, body)

    async def _probe(self, i: int) -> dict:
        return await self.handles[i].info.remote()

    async def __call__(self, request):
        from starlette.responses import Response, StreamingResponse

        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self.front.watch())
        body = await request.body()
        out = await self.front.handle(request.method, request.url.path, dict(request.headers), body)
        if isinstance(out.body, bytes):
            return Response(out.body, status_code=out.status, headers=out.headers)
        media = out.headers.pop("content-type", "text/event-stream")
        return StreamingResponse(out.body, status_code=out.status, headers=out.headers, media_type=media)


def build_app(req, spec: FleetSpec, bundle_path: Path, model_name: str, tasks: list[str]):
    """The Ray Serve application: K replica deployments bound into the ingress."""
    from ray import serve

    # each replica takes what the ingress sends: the ingress checks the API key ("" here, not None, so a
    # LIGHTMOE_API_KEY in the replicas' environment does not make them refuse the ingress)
    replica_req = replace(req, threads=spec.threads, max_queue=max(req.max_queue, 10_000), api_key="",
                          bundle=bundle_path)
    replica = serve.deployment(ReplicaServer, ray_actor_options={"num_cpus": spec.threads},
                               max_ongoing_requests=100_000, health_check_period_s=2, health_check_timeout_s=30,
                               graceful_shutdown_timeout_s=req.shutdown_timeout)
    replicas = [replica.options(name=f"replica-{i}").bind(replica_req, i) for i in range(spec.replicas)]
    ingress = serve.deployment(FleetIngress, name="ingress", ray_actor_options={"num_cpus": 0},
                               max_ongoing_requests=100_000)
    return ingress.bind(replicas, str(bundle_path), model_name, tasks, spec.router, spec.queue_bound, req.api_key)


def run_fleet(req, spec: FleetSpec, console=None, ready: threading.Event | None = None,
              stop: threading.Event | None = None) -> None:
    """Start the application and serve until SIGTERM/SIGINT (or `stop`), then shut Serve down."""
    from ray import serve

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.paths import DEFAULT_BUNDLE
    from lightmoe_cli.profile.scaleout import ray_session

    bundle = load_bundle(req.bundle or DEFAULT_BUNDLE)
    tasks = sorted(bundle.manifest.task_resident)
    if req.detector == "routing":
        raise LightMoEError("--replicas: the ingress names tasks with the bundle's text classifier; --detector "
                            "routing needs the model at the ingress: use --detector auto or text")
    stop = stop or threading.Event()
    with ray_session(spec.ray_address, spec.replicas * spec.threads + 1) as _:
        serve.start(http_options={"host": spec.host, "port": spec.port})
        app = build_app(req, spec, bundle.path.resolve(), bundle.path.name, tasks)
        serve.run(app, name="lightmoe", route_prefix="/", blocking=False)
        if console is not None:
            console.print(f"serving [bold]{bundle.path.name}[/] with {spec.replicas} replicas ({spec.router} "
                          f"routing, Ray at {spec.ray_address}) on http://{spec.host}:{spec.port}/v1")
        if ready is not None:
            ready.set()
        old = {}
        if threading.current_thread() is threading.main_thread():
            old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            stop.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            serve.shutdown()
