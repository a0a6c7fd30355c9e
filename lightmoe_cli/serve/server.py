"""`lightmoe serve` as one call: a bundle and serving options -> a running OpenAI-compatible server.

`build_server` assembles runtime, detector, scheduler, engine, metrics and app (tests and the load benchmark
use it directly); `serve` runs it under uvicorn until SIGTERM/SIGINT, after which uvicorn stops taking
connections, the in-flight requests finish within `--shutdown-timeout`, and the process exits 0.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import Threads, check_bounds, option
from lightmoe_cli.paths import DEFAULT_BUNDLE

DETECTORS = ("auto", "routing", "text")


@dataclass
class ServeRequest(Threads):
    """What `lightmoe serve` was asked for."""

    threads: int | None = option(None, "torch CPU threads of the engine (default: every core).", minimum=1)

    bundle: Path | None = option(None, "Bundle folder (default: the demo model's task-aware bundle at 50%).",
                                 short="-b", role="input")
    host: str = option("127.0.0.1", "Address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes it).")
    port: int = option(8000, "TCP port (0: any free port).", minimum=0, maximum=65535)
    api_key: str | None = option(None, "Require 'Authorization: Bearer KEY' on every request but /health (or "
                                 "set LIGHTMOE_API_KEY).")
    max_batch: int = option(8, "Requests decoded together.", minimum=1, maximum=256)
    max_queue: int = option(64, "Requests waiting beyond the batch before new ones get 429.", minimum=1,
                            maximum=100_000)
    schedule: str | None = option(None, "fifo (arrival order; a managed bundle's own swap rule moves experts) or "
                                  "task (group requests by detected task, move the set between groups). Default: "
                                  "task for a bundle with task sets, else fifo.", choices=("fifo", "task"))
    task_groups: int | None = option(None, "Task schedule: serve the bundle's tasks in this many groups, each "
                                     "with one resident set its members share (the tasks whose sets overlap "
                                     "most; docs/serving.md). Fewer groups give larger batches, more throughput "
                                     "and less of each task's own set. Default: a set per task.", minimum=1)
    max_wait_ms: float = option(500.0, "Longest a request waits while other tasks' groups are served (task "
                                "schedule).", minimum=0)
    detector: str = option("auto", "How a request's task is named: text (the bundle's text classifier; 99.5% right "
                           "on the demo's held-out documents, no forward pass), routing (its first MoE layer's "
                           "routing against the task signatures; 95%), or auto (text when the bundle has a "
                           "classifier, else routing).", choices=DETECTORS)
    probe_tokens: int = option(64, "Prompt tokens the routing detector reads.", minimum=1, maximum=100_000)
    stream_interval_ms: float = option(20.0, "Streaming: the first token is sent at once, then the tokens decoded "
                                       "since the last chunk at most every this many ms (0: one chunk per token).",
                                       minimum=0)
    shutdown_timeout: float = option(30.0, "Seconds in-flight requests get to finish after SIGTERM.", minimum=0)
    device: str = option("cpu", "cpu or cuda.")

    def validate(self) -> None:
        check_bounds(self)
        if self.api_key is None:
            self.api_key = os.environ.get("LIGHTMOE_API_KEY") or None


@dataclass
class Server:
    app: object
    engine: object
    context: object
    runtime: object
    schedule: str
    info: dict = field(default_factory=dict)

    def close(self) -> None:
        self.engine.stop()
        self.runtime.close()


def _max_context(config, tokenizer) -> int:
    n = getattr(config, "max_position_embeddings", None) or getattr(tokenizer, "model_max_length", None)
    return int(n) if n and n < 10**8 else 4096


def build_server(req: ServeRequest, bundle=None) -> Server:
    """Runtime + detector + scheduler + engine + app, ready to run (the engine thread started)."""
    import torch
    from transformers import AutoConfig

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.bundle.task_classifier import load_text_classifier
    from lightmoe_cli.policies.base import Serving
    from lightmoe_cli.runtime.loader import build_runtime
    from lightmoe_cli.runtime.strategies import Remap
    from lightmoe_cli.serve.app import ServerContext, create_app
    from lightmoe_cli.serve.detect import RoutingDetector
    from lightmoe_cli.serve.engine import Engine
    from lightmoe_cli.serve.metrics import ServerMetrics
    from lightmoe_cli.serve.scheduler import SCHEDULERS

    req.validate()
    threads = req.threads or engine_threads()
    # the engine thread computes with `threads`; this thread loads with one, so it never forms an OpenMP team of
    # its own: with two teams alive, GNU OpenMP counts more threads than cores and stops spinning between
    # parallel regions, and every region then waits for its workers to wake (on the 2-core machine, a decode
    # step of 8 rows took 16.6 ms on an engine thread at 2 threads after the loader had used 2, 8.2 ms when it
    # had used 1; benchmarks/bench_serve.py --phases load, docs/serving.md)
    torch.set_num_threads(1)
    bundle = bundle or load_bundle(req.bundle or DEFAULT_BUNDLE)
    man = bundle.manifest
    remap = bundle.runtime_spec.serving == Serving.REMAP
    can_task = bool(man.task_resident) and remap
    schedule = req.schedule or ("task" if can_task else "fifo")
    if schedule == "task" and not can_task:
        raise LightMoEError(f"--schedule task needs a bundle with per-task resident sets (task-aware); this "
                            f"{bundle.policy} bundle has none: use --schedule fifo")
    # task scheduling moves the sets itself; FIFO leaves a managed bundle's own rule in charge
    rt = build_runtime(bundle, device=req.device, manager=schedule == "fifo")
    if schedule == "task" and not all(isinstance(m, Remap) for m in rt.layers):
        rt.close()
        raise LightMoEError(f"--schedule task: the {bundle.policy} bundle cannot switch resident sets")
    config = AutoConfig.from_pretrained(bundle.path / "model")
    sched = SCHEDULERS[schedule](req.max_batch, req.max_wait_ms / 1000.0)
    if req.task_groups and schedule != "task":
        rt.close()
        raise LightMoEError("--task-groups shares sets between the task schedule's groups: it needs --schedule task "
                            "(and a bundle with per-task sets)")
    if req.task_groups and set(man.task_signatures) != set(man.task_resident):
        rt.close()
        raise LightMoEError("--task-groups needs every task's signature in the bundle; rebuild it")
    group_of = share_sets(rt, req.task_groups) if req.task_groups else {}
    engine = Engine(rt, sched, None, max_queue=req.max_queue, jump_at_boundaries=rt.jump is not None,
                    stream_interval_s=req.stream_interval_ms / 1000.0, threads=threads, group_of=group_of)
    detector = None
    if schedule == "task":
        classifier = load_text_classifier(bundle.path) if req.detector in ("auto", "text") else None
        if req.detector == "text" and classifier is None:
            rt.close()
            raise LightMoEError(f"bundle {bundle.path} has no text classifier (built before it existed): "
                                "rebuild it or use --detector routing")
        if classifier is not None:
            detector = _TextDetector(classifier)
        else:
            detector = RoutingDetector(man.task_signatures, rt.layers[0].layer_index, engine.probe,
                                       req.probe_tokens)
    engine.detector = detector
    metrics = ServerMetrics(lambda: engine.swaps, lambda: rt.store.bytes_read)
    engine.metrics = metrics
    info = {"bundle": str(bundle.path), "policy": bundle.policy, "schedule": schedule,
            "detector": detector.name if detector else None, "tasks": sorted(man.task_resident),
            "max_batch": req.max_batch, "threads": threads,
            "task_groups": sorted(set(group_of.values())) if group_of else None}
    ctx = ServerContext(engine, rt.tokenizer, bundle.path.name, _max_context(config, rt.tokenizer), metrics,
                        sorted(man.task_resident), req.api_key, info)
    engine.start()
    return Server(create_app(ctx), engine, ctx, rt, schedule, info)


def share_sets(rt, groups: int) -> dict[str, str]:
    """Give the runtime one shared set per group of the bundle's tasks (serve/task_groups.py); returns task ->
    the name of the set that serves it."""
    from lightmoe_cli.serve.task_groups import group_tasks

    man = rt.bundle.manifest
    group_of = {}
    for g in group_tasks(man.signature_arrays(), man.task_resident, groups):
        if len(g.members) > 1:
            rt.shared_sets[g.name] = (g.resident, g.signature)
        group_of |= {t: g.name for t in g.members}
    return group_of


def engine_threads(cores: int | None = None) -> int:
    """The engine's default torch threads: every core, as `run` uses. It was every core but one, from a
    measurement on the 2-core machine (one request alone: 386 tokens/s at 1 engine thread, 263 at 2) made while
    the loading thread's OpenMP team slowed the engine's (see `build_server`); with that mended, 2 threads
    served more under load (prune at 50%, 16 clients at will: 13.6 requests/s against 12.0 at 1 thread in
    back-to-back runs, benchmarks/results/serve-rate0-t2.json and -t1.json) and one request alone decoded faster
    (307 against 261 tokens/s, serve-single-12.json; docs/serving.md)."""
    import os

    return max(1, cores or len(os.sched_getaffinity(0)))


class _TextDetector:
    name = "text"

    def __init__(self, classifier):
        self.classifier = classifier

    def detect(self, prompt_ids, text):
        return self.classifier.predict(text)


def _check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise LightMoEError(f"cannot listen on {host}:{port} ({e.strerror}): pick another --port (0: any free "
                                "one) or stop what holds it") from e


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ThreadedServer:
    """A server running uvicorn on a background thread (tests, the load benchmark); `stop()` shuts it down as
    SIGTERM would."""

    def __init__(self, server: Server, host: str = "127.0.0.1", port: int | None = None,
                 shutdown_timeout: float = 10.0):
        import uvicorn

        self.server, self.host, self.port = server, host, port or free_port(host)
        config = uvicorn.Config(server.app, host=host, port=self.port, log_level="warning",
                                timeout_graceful_shutdown=shutdown_timeout)
        self.uvicorn = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.uvicorn.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise LightMoEError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(timeout=30)
        self.server.close()

    def __exit__(self, *exc) -> None:
        self.stop()


def _graceful_server(config):
    """uvicorn re-raises SIGTERM after its graceful shutdown, so the process would end by the signal (-15); a
    server that finished its requests should exit 0, so here the signal only asks uvicorn to stop."""
    import contextlib
    import signal

    import uvicorn

    class GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            old = {s: signal.signal(s, lambda sig, frame: self.handle_exit(sig, frame))
                   for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, h in old.items():
                    signal.signal(s, h)

    return GracefulServer(config)


def serve(req: ServeRequest, console=None) -> None:
    """Run until SIGTERM/SIGINT; in-flight requests finish within --shutdown-timeout."""
    import uvicorn

    req.validate()
    port = req.port or free_port(req.host)
    _check_port(req.host, port)  # before minutes of loading, not after
    server = build_server(req)
    if console is not None:
        i = server.info
        console.print(f"serving [bold]{server.context.model_name}[/] ({i['policy']}, schedule {i['schedule']}"
                      f"{', detector ' + i['detector'] if i['detector'] else ''}) on http://{req.host}:{port}/v1"
                      f"{'  (API key required)' if req.api_key else ''}")
    config = uvicorn.Config(server.app, host=req.host, port=port, log_level="warning",
                            timeout_graceful_shutdown=req.shutdown_timeout)
    try:
        _graceful_server(config).run()
    finally:
        server.engine.stop(timeout=req.shutdown_timeout)
        server.runtime.close()
