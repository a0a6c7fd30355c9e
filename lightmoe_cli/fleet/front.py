"""The fleet's front door: name each request's task, pick a replica with the router, relay that replica's answer,
and move a request elsewhere when its replica dies under it.

Transport-free on purpose: how a replica is reached is given as `call(replica, method, path, headers, body)`
(an async iterator of `Start` then body chunks: Ray Serve handles in ray_app.py, in-process apps in the tests)
and `probe(replica)` (its state, or an exception while it is down), so the fault handling is tested without Ray.

What a client sees, by case:
- a replica dies before the answer's first byte left the ingress (every non-streamed request, and a stream
  before its first chunk): the request is tried on another live replica (`retried`); when none is live, 503
  with Retry-After (`refused`);
- a replica dies in the middle of a stream: the stream ends with an error event (`broken`), as the single
  server ends a stream whose decoding failed;
- the dead replica is probed every `probe_every_s`; when Ray has restarted it, the router gives it tasks again
  (`relearned`) and its state (which task's set it holds) is read afresh.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field

from lightmoe_cli.fleet.asgi import Start
from lightmoe_cli.fleet.router import Router
from lightmoe_cli.serve.protocol import error_body, plain_chat_prompt

ReplicaCall = Callable[[int, str, str, list[tuple[str, str]], bytes], AsyncIterator[Start | bytes]]
RETRY_AFTER_S = 2
SCORED_PATHS = ("/v1/completions", "/v1/chat/completions")


@dataclass
class FleetCounts:
    """Every request the ingress took ends in exactly one of answered / refused / broken / cancelled."""

    sent: int = 0  # requests taken (the OpenAI POST paths)
    answered: int = 0  # relayed whole with the replica's own status (200, 400, 429, ...)
    retried: int = 0  # tries moved to another replica because the one serving it died
    refused: int = 0  # 503: no replica was live
    broken: int = 0  # a stream cut after its first chunk had gone out (it ended with an error event)
    cancelled: int = 0  # the client left in the middle of a stream (the replica is told, its jobs freed)
    relearned: int = 0  # replicas that came back and were given tasks again


@dataclass
class Relayed:
    """An answer for the HTTP layer: status, headers, and the body (bytes, or chunks as they come)."""

    status: int
    headers: dict[str, str]
    body: bytes | AsyncIterator[bytes]


def _json(status: int, obj: dict, headers: dict[str, str] | None = None) -> Relayed:
    return Relayed(status, {"content-type": "application/json", **(headers or {})}, json.dumps(obj).encode())


def prompt_text(path: str, obj: dict) -> str:
    """The text a request's task is detected from (what the single server's text detector reads)."""
    if path.endswith("/chat/completions"):
        msgs = obj.get("messages")
        if not isinstance(msgs, list):
            return ""
        pairs = []
        for m in msgs:
            if isinstance(m, dict):
                c = m.get("content")
                c = "".join(p.get("text", "") for p in c if isinstance(p, dict)) if isinstance(c, list) else c
                pairs.append((str(m.get("role", "")), c if isinstance(c, str) else ""))
        return plain_chat_prompt(pairs)
    p = obj.get("prompt")
    if isinstance(p, list):  # a list of prompts is one request: routed by its first prompt
        p = next((x for x in p if isinstance(x, str)), "")
    return p if isinstance(p, str) else ""


@dataclass
class FleetFront:
    router: Router
    call: ReplicaCall
    probe: Callable[[int], Awaitable[dict]]
    is_gone: Callable[[BaseException], bool]  # "this exception means the replica died"
    model_name: str
    detector: Callable[[str], str | None] | None = None  # text -> task (the bundle's classifier)
    detector_name: str = "text"
    api_key: str | None = None
    probe_every_s: float = 1.0
    counts: FleetCounts = field(default_factory=FleetCounts)
    replica_state: dict[int, dict] = field(default_factory=dict)

    # ---- naming the task ----------------------------------------------------------------------------------------
    def name_task(self, path: str, body: bytes) -> tuple[bytes, str | None, str | None]:
        """(the body to forward, its task, how the task was named). The detected task is written into the body's
        `task` field, so the replica serves it as that task without detecting again. A body that is not a JSON
        object goes as it is: the replica answers its 400."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return body, None, None
        if not isinstance(obj, dict):
            return body, None, None
        if isinstance(obj.get("task"), str):
            return body, obj["task"], "named"
        text = prompt_text(path, obj)
        task = self.detector(text) if self.detector is not None and text else None
        if task is None:
            return body, None, None
        return json.dumps(obj | {"task": task}).encode(), task, self.detector_name

    # ---- the HTTP entry -----------------------------------------------------------------------------------------
    async def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Relayed:
        if self.api_key and path != "/health":
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):  # constant time
                return _json(401, error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                             "authentication_error", code="invalid_api_key"))
        if method == "GET" and path == "/v1/models":
            return _json(200, {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                                           "owned_by": "lightmoe"}]})
        if method == "GET" and path == "/health":
            state = await self.state()
            ok = bool(self.router.live)
            return _json(200 if ok else 503, {"status": "ok" if ok else "no replica live", "model": self.model_name,
                                              **state})
        if method == "GET" and path == "/metrics":
            await self.refresh()
            return Relayed(200, {"content-type": "text/plain; version=0.0.4"}, self.metrics_text().encode())
        if method != "POST":
            return _json(404, error_body(f"no route {method} {path}", "not_found_error"))
        stream = False
        task = source = None
        if path in SCORED_PATHS:
            body, task, source = self.name_task(path, body)
            try:
                stream = bool(json.loads(body).get("stream"))
            except (ValueError, AttributeError):
                stream = False
        return await self.forward(path, headers, body, task, source, stream)

    async def forward(self, path: str, headers: dict[str, str], body: bytes, task: str | None, source: str | None,
                      stream: bool) -> Relayed:
        self.counts.sent += 1
        fwd = [(k, v) for k, v in headers.items() if k.lower() in ("content-type", "accept")]
        tries = 0
        while True:
            d = self.router.route(task)
            if d.replica is None:
                self.counts.refused += 1
                return _json(503, error_body(f"no replica is live ({self.router.replicas} restarting): retry in a "
                                             "few seconds", "server_error"), {"Retry-After": str(RETRY_AFTER_S)})
            i, tries = d.replica, tries + 1
            chunks = self.call(i, "POST", path, fwd, body)
            try:
                start = await anext(chunks)
                first = b"" if not stream else await anext(chunks, b"")
                if not stream:
                    rest = [c async for c in chunks]
            except BaseException as e:
                self.router.done(i)
                if isinstance(e, Exception) and self.is_gone(e):
                    self.router.down(i)
                    self.counts.retried += 1
                    continue
                if isinstance(e, Exception):
                    self.counts.answered += 1
                    return _json(500, error_body(f"replica {i} failed: {type(e).__name__}: {e}", "server_error"))
                raise
            assert isinstance(start, Start)
            hdrs = {k: v for k, v in start.headers if k.lower() in ("content-type", "retry-after")}
            if not stream:
                self.router.done(i)
                self.counts.answered += 1
                return Relayed(start.status, hdrs, self.annotate(b"".join(rest), i, d.reason, tries, source))
            return Relayed(start.status, hdrs, self._relay(i, first, chunks))

    async def _relay(self, i: int, first: bytes, chunks: AsyncIterator) -> AsyncIterator[bytes]:
        """A stream already started: pass its chunks on; a replica dying now ends it with an error event; a
        client leaving closes the replica's stream (so its jobs stop at the next decode step)."""
        ended = False
        try:
            if first:
                yield first
            async for c in chunks:
                yield c
            ended = True
            self.counts.answered += 1
        except Exception as e:  # noqa: BLE001 - the status line is out: all that is left is an error event
            ended = True
            if self.is_gone(e):
                self.router.down(i)
            self.counts.broken += 1
            msg = f"replica {i} died mid-stream: retry the request" if self.is_gone(e) else f"replica {i}: {e}"
            yield f"data: {json.dumps(error_body(msg, 'server_error'))}\n\n".encode()
        finally:
            self.router.done(i)
            if not ended:  # the client went away
                self.counts.cancelled += 1
                cancel = getattr(chunks, "cancel", None)  # a Ray Serve streaming response
                if cancel is not None:
                    cancel()
                elif hasattr(chunks, "aclose"):
                    await chunks.aclose()

    def annotate(self, body: bytes, replica: int, reason: str, tries: int, source: str | None) -> bytes:
        """A whole JSON answer gets where it was served: `lightmoe.fleet` = replica, route, tries; a task the
        ingress detected keeps its detector as `task_source` (the replica was told it as named)."""
        try:
            obj = json.loads(body)
        except ValueError:
            return body
        meter = obj.get("lightmoe") if isinstance(obj, dict) else None
        if not isinstance(meter, dict):
            return body
        if source and source != "named":
            meter["task_source"] = source
        meter["fleet"] = {"replica": replica, "route": reason, "tries": tries}
        return json.dumps(obj).encode()

    # ---- replicas' state ----------------------------------------------------------------------------------------
    async def _probe(self, i: int, timeout: float) -> dict | BaseException:
        try:
            return await asyncio.wait_for(self.probe(i), timeout)
        except Exception as e:  # noqa: BLE001 - down, restarting or busy: asked again next round
            return e

    def _back(self, i: int, info: dict) -> None:
        self.replica_state[i] = info
        if i not in self.router.live:
            self.router.up(i)
            self.counts.relearned += 1

    async def refresh(self, timeout: float = 5.0) -> None:
        """Read every replica's state: one that died is marked down (a slow answer is not a death), one that
        was down and answers is given tasks again."""
        got = await asyncio.gather(*(self._probe(i, timeout) for i in range(self.router.replicas)))
        for i, info in enumerate(got):
            if isinstance(info, dict):
                self._back(i, info)
            elif self.is_gone(info) and i in self.router.live:
                self.router.down(i)

    async def watch(self) -> None:
        """Forever: every `probe_every_s`, ask the down replicas whether they are back."""
        while True:
            await asyncio.sleep(self.probe_every_s)
            for i in [i for i in range(self.router.replicas) if i not in self.router.live]:
                info = await self._probe(i, max(self.probe_every_s, 1.0))
                if isinstance(info, dict):
                    self._back(i, info)

    async def state(self) -> dict:
        await self.refresh()
        return {"replicas": [{"index": i, "live": i in self.router.live, **self.replica_state.get(i, {})}
                             for i in range(self.router.replicas)],
                "router": self.router.state(), "counts": asdict(self.counts), "time": time.time()}

    def metrics_text(self) -> str:
        """Prometheus text: the fleet's counts, and the replicas' set moves summed under the single server's
        names (so a client reading `lightmoe_swaps` reads the fleet's)."""
        lines = ["# TYPE lightmoe_fleet_requests counter"]
        lines += [f'lightmoe_fleet_requests{{outcome="{k}"}} {v}' for k, v in asdict(self.counts).items()]
        lines += ["# TYPE lightmoe_fleet_routed counter"]
        lines += [f'lightmoe_fleet_routed{{replica="{i}"}} {n}' for i, n in enumerate(self.router.routed)]
        lines += ["# TYPE lightmoe_fleet_reassignments counter",
                  f"lightmoe_fleet_reassignments {self.router.reassignments}",
                  "# TYPE lightmoe_fleet_live_replicas gauge", f"lightmoe_fleet_live_replicas {len(self.router.live)}"]
        for name, key in (("lightmoe_swaps", "layer_swaps"), ("lightmoe_expert_bytes_loaded", "bytes_read"),
                          ("lightmoe_fleet_set_moves", "set_moves")):
            total = sum(s.get(key, 0) for s in self.replica_state.values())
            lines += [f"# TYPE {name} gauge", f"{name} {total}"]
        return "\n".join(lines) + "\n"
