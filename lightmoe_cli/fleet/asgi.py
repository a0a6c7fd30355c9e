"""Call an ASGI app in-process and stream its answer: how a replica runs the single server's own HTTP app.

Why: a replica must answer exactly as `lightmoe serve` does (validation, tokenizing, the OpenAI shapes, the
quality meter, streaming), so it runs that app unchanged; the ingress hands it the raw request and relays the
raw answer. Closing the stream early tells the app the client went away (its jobs are cancelled, as with a
client that disconnects from the single server).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Start:
    """The answer's status line and headers (the first item a call yields; body chunks, as bytes, follow)."""

    status: int
    headers: list[tuple[str, str]]


async def call_asgi(app, method: str, path: str, headers: list[tuple[str, str]], body: bytes,
                    query: str = "") -> AsyncIterator[Start | bytes]:
    """Yield `Start`, then the body's chunks as the app sends them."""
    sent_body = False
    gone = asyncio.Event()
    out: asyncio.Queue = asyncio.Queue()

    async def receive() -> dict:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await out.put(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method.upper(),
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
             "root_path": "", "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
             "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 80)}

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            await out.put(None)  # the app returned (or raised): no more messages

    task = asyncio.create_task(run())
    try:
        while True:
            message = await out.get()
            if message is None:
                break
            if message["type"] == "http.response.start":
                yield Start(message["status"], [(k.decode(), v.decode()) for k, v in message.get("headers", [])])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    break
        if task.done() and task.exception() is not None:
            raise task.exception()
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=5)
            except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - the answer is already out
                task.cancel()
