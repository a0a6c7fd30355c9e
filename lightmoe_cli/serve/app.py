"""The HTTP side: FastAPI routes in the OpenAI shape. Handlers validate, tokenize and wait for the engine's
events; they never touch the model or the runtime."""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lightmoe_cli.serve.engine import Engine, Job, QueueFull, ShuttingDown
from lightmoe_cli.serve.metrics import ServerMetrics
from lightmoe_cli.serve.protocol import ChatBody, CompletionBody, error_body, plain_chat_prompt
from lightmoe_cli.serve.sampling import Choice, Sampling

RETRY_AFTER_S = 1


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.headers = status, message, kind, param, headers


@dataclass
class ServerContext:
    engine: Engine
    tokenizer: object
    model_name: str
    max_context: int
    metrics: ServerMetrics
    tasks: list[str]
    api_key: str | None = None
    info: dict | None = None  # bundle facts for /health


def _json_error(e: HTTPError) -> JSONResponse:
    return JSONResponse(error_body(e.message, e.kind, e.param), status_code=e.status, headers=e.headers)


class BearerAuth:
    """401 for a request without `Authorization: Bearer <key>` (every path but /health), compared in constant
    time. A plain ASGI middleware, not `@app.middleware("http")`: Starlette's BaseHTTPMiddleware passes every
    streamed chunk through a memory stream between two tasks, and the HTTP thread shares the interpreter with
    the engine (measured, one streamed 64-token request on the demo model: the HTTP thread's CPU fell from 6.3 to
    5.6 ms per request). Without a key no middleware runs at all."""

    def __init__(self, app, api_key: str):
        self.app, self.expected = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope.get("path") != "/health":
            given = next((v for k, v in scope.get("headers", ()) if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self.expected):
                response = JSONResponse(error_body("missing or wrong API key: send 'Authorization: Bearer <key>'",
                                                   "authentication_error", code="invalid_api_key"), status_code=401)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(ctx: ServerContext) -> FastAPI:
    app = FastAPI(title="lightmoe", docs_url=None, redoc_url=None)
    tok_lock = threading.Lock()  # the fast tokenizer is not safe to share across threads

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError):
        if e.status in (429, 503):
            ctx.metrics.rejected(e.status)
        return _json_error(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "invalid request")
        if first.get("type") == "json_invalid":
            msg = "request body is not valid JSON"
        return JSONResponse(error_body(f"{loc}: {msg}" if loc else msg, param=loc or None), status_code=400)

    if ctx.api_key:
        app.add_middleware(BearerAuth, api_key=ctx.api_key)

    @app.get("/health")
    async def health():
        eng = ctx.engine
        status = "ok" if eng.accepting and eng.thread.is_alive() else "stopping"
        return JSONResponse({"status": status, "model": ctx.model_name, "queue": eng.pending(),
                             "running": len(eng.rows), **(ctx.info or {})}, status_code=200 if status == "ok"
                            else 503)

    @app.get("/metrics")
    async def metrics():
        return PlainTextResponse(generate_latest(ctx.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": ctx.model_name, "object": "model", "created": 0,
                                            "owned_by": "lightmoe"}]}

    def check_common(body) -> None:
        if body.model is not None and body.model != ctx.model_name:
            raise HTTPError(404, f"model {body.model!r} not found: this server serves {ctx.model_name!r}",
                            param="model", kind="not_found_error")
        if body.task is not None and body.task not in ctx.tasks:
            raise HTTPError(400, f"task {body.task!r} unknown: this bundle's tasks are "
                            f"{', '.join(ctx.tasks) or 'none'}", param="task")

    def encode(text: str) -> list[int]:
        with tok_lock:
            return ctx.tokenizer(text, add_special_tokens=False).input_ids

    def check_length(n_prompt: int, max_tokens: int) -> None:
        if n_prompt + max_tokens > ctx.max_context:
            raise HTTPError(400, f"the prompt is {n_prompt} tokens and max_tokens {max_tokens}: together more than "
                            f"the model's context of {ctx.max_context} tokens; shorten the prompt or lower "
                            "max_tokens", param="max_tokens" if n_prompt < ctx.max_context else "prompt")

    def submit_all(jobs: list[Job]) -> None:
        for j in jobs:
            try:
                ctx.engine.submit(j)
            except QueueFull as e:
                for k in jobs:
                    k.cancel()
                raise HTTPError(429, f"{e}: retry after {RETRY_AFTER_S} s", "rate_limit_error",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from e
            except ShuttingDown as e:
                for k in jobs:
                    k.cancel()
                raise HTTPError(503, str(e), "server_error") from e

    def make_jobs(prompts: list[list[int]], texts: list[str], body, max_tokens: int, logprobs: int | None,
                  echo: bool, sink) -> list[Job]:
        jobs = []
        for i, (ids, text) in enumerate(zip(prompts, texts, strict=True)):
            for c in range(body.n):
                seed = None if body.seed is None else body.seed + c
                index = i * body.n + c
                jobs.append(Job(ids, max_tokens, Sampling(body.temperature, body.top_p, seed, logprobs),
                                emit=lambda ev, index=index: sink(index, ev), stop=body.stops(), echo=echo,
                                task_hint=body.task, prompt_text=text))
        return jobs

    def event_sink():
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()

        def sink(index: int, ev: dict) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, (index, ev))
            except RuntimeError:  # the loop is gone (shutdown): nobody is listening
                pass

        return q, sink

    async def collect(q: asyncio.Queue, jobs: list[Job]) -> dict[int, dict]:
        done: dict[int, dict] = {}
        try:
            while len(done) < len(jobs):
                index, ev = await q.get()
                if ev["type"] == "error":
                    for j in jobs:
                        j.cancel()
                    raise HTTPError(ev["status"], ev["message"], "server_error")
                if ev["type"] == "done":
                    done[index] = ev
        except asyncio.CancelledError:
            for j in jobs:
                j.cancel()
            raise
        return done

    @app.post("/v1/completions")
    async def completions(body: CompletionBody):
        check_common(body)
        texts = body.prompts()
        if not texts:
            raise HTTPError(400, "prompt is empty", param="prompt")
        prompts = [encode(t) for t in texts]
        for ids in prompts:
            if not ids:
                raise HTTPError(400, "a prompt encodes to no tokens", param="prompt")
            check_length(len(ids), body.max_tokens)
        if body.max_tokens == 0 and not body.echo:
            raise HTTPError(400, "max_tokens 0 needs echo=true (to score the prompt)", param="max_tokens")
        q, sink = event_sink()
        jobs = make_jobs(prompts, texts, body, body.max_tokens, body.logprobs, body.echo, sink)
        submit_all(jobs)
        rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(stream_completion(q, jobs, rid, created, body),
                                     media_type="text/event-stream")
        done = await collect(q, jobs)
        choices = [completion_choice(jobs[i], done[i]["finish_reason"], i, body) for i in range(len(jobs))]
        return {"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name,
                "choices": choices, "usage": usage(jobs), "lightmoe": meter(jobs)}

    def completion_choice(job: Job, reason: str, index: int, body: CompletionBody) -> dict:
        text = (job.prompt_text if body.echo else "") + job.text
        lp = completion_logprobs(job, body) if body.logprobs is not None else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": reason}

    token_texts: dict[int, str] = {}  # id -> its text; a scored document asks for hundreds per response

    def token_text(t: int) -> str:
        s = token_texts.get(t)
        if s is None:
            with tok_lock:
                s = token_texts[t] = ctx.tokenizer.decode([t])
        return s

    def completion_logprobs(job: Job, body: CompletionBody) -> dict:
        items: list[tuple[int, Choice | None]] = []
        if body.echo:
            items += [(t, c) for t, c in zip(job.prompt_ids, job.prompt_choices or [None] * len(job.prompt_ids),
                                             strict=True)]
        items += [(c.token, c) for c in job.choices]
        tokens, lps, tops, offsets, pos = [], [], [], [], 0
        for t, c in items:
            s = token_text(t)
            tokens.append(s)
            offsets.append(pos)
            pos += len(s)
            lps.append(None if c is None else c.logprob)
            tops.append(None if c is None else {token_text(a): b for a, b in c.top})
        return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}

    async def stream_completion(q, jobs, rid, created, body):
        finished = 0
        try:
            if body.echo:
                for i, j in enumerate(jobs):
                    yield sse({"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name,
                               "choices": [{"index": i, "text": j.prompt_text, "logprobs": None,
                                            "finish_reason": None}]})
            while finished < len(jobs):
                index, ev = await q.get()
                chunk = {"id": rid, "object": "text_completion", "created": created, "model": ctx.model_name}
                if ev["type"] == "error":
                    yield sse(error_body(ev["message"], "server_error"))
                    return
                if ev["type"] == "delta":
                    chunk["choices"] = [{"index": index, "text": ev["text"], "logprobs": None, "finish_reason": None}]
                else:
                    finished += 1
                    chunk["choices"] = [{"index": index, "text": "", "logprobs": None,
                                         "finish_reason": ev["finish_reason"]}]
                    if finished == len(jobs):
                        chunk["usage"], chunk["lightmoe"] = usage(jobs), meter(jobs)
                yield sse(chunk)
            yield "data: [DONE]\n\n"
        finally:
            for j in jobs:  # a client gone mid-stream frees its batch slots at the next step
                j.cancel()

    def chat_prompt(body: ChatBody) -> str:
        msgs = [(m.role, m.text()) for m in body.messages]
        if getattr(ctx.tokenizer, "chat_template", None):
            with tok_lock:
                return ctx.tokenizer.apply_chat_template([{"role": r, "content": c} for r, c in msgs],
                                                         tokenize=False, add_generation_prompt=True)
        return plain_chat_prompt(msgs)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody):
        check_common(body)
        text = chat_prompt(body)
        ids = encode(text)
        # without a limit, a reply may fill the rest of the context
        max_tokens = body.max_completion_tokens or body.max_tokens or max(ctx.max_context - len(ids), 1)
        check_length(len(ids), max_tokens)
        q, sink = event_sink()
        n_top = (body.top_logprobs or 0) if body.logprobs else None
        jobs = make_jobs([ids], [text], body, max_tokens, n_top, False, sink)
        submit_all(jobs)
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(stream_chat(q, jobs, rid, created), media_type="text/event-stream")
        done = await collect(q, jobs)
        choices = [{"index": i, "message": {"role": "assistant", "content": jobs[i].text},
                    "logprobs": chat_logprobs(jobs[i]) if body.logprobs else None,
                    "finish_reason": done[i]["finish_reason"]} for i in range(len(jobs))]
        return {"id": rid, "object": "chat.completion", "created": created, "model": ctx.model_name,
                "choices": choices, "usage": usage(jobs), "lightmoe": meter(jobs)}

    def chat_logprobs(job: Job) -> dict:
        content = []
        for c in job.choices:
            s = token_text(c.token)
            content.append({"token": s, "logprob": c.logprob, "bytes": list(s.encode()),
                            "top_logprobs": [{"token": token_text(a), "logprob": b, "bytes": list(token_text(a)
                                                                                                     .encode())}
                                             for a, b in c.top]})
        return {"content": content}

    async def stream_chat(q, jobs, rid, created):
        finished = 0
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": ctx.model_name}
        try:
            for i in range(len(jobs)):
                yield sse(base | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                               "finish_reason": None}]})
            while finished < len(jobs):
                index, ev = await q.get()
                if ev["type"] == "error":
                    yield sse(error_body(ev["message"], "server_error"))
                    return
                if ev["type"] == "delta":
                    yield sse(base | {"choices": [{"index": index, "delta": {"content": ev["text"]},
                                                   "finish_reason": None}]})
                    continue
                finished += 1
                chunk = base | {"choices": [{"index": index, "delta": {}, "finish_reason": ev["finish_reason"]}]}
                if finished == len(jobs):
                    chunk |= {"usage": usage(jobs), "lightmoe": meter(jobs)}
                yield sse(chunk)
            yield "data: [DONE]\n\n"
        finally:
            for j in jobs:
                j.cancel()

    return app


def sse(obj: dict) -> str:
    return f"data: {json.dumps(obj)}\n\n"


def usage(jobs: list[Job]) -> dict:
    prompt = sum(len(j.prompt_ids) for j in {id(j.prompt_ids): j for j in jobs}.values())
    completion = sum(len(j.generated) for j in jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def meter(jobs: list[Job]) -> dict:
    """The quality meter: per response, what its experts were (lightmoe's extension beside `usage`), and where
    its time went, from its arrival at the engine (after tokenizing): waiting (`queue_seconds`), to its first
    token, to the engine handing it back (`done_seconds`), and from there to this answer built (`answer_seconds`:
    the HTTP side waking up and building the choices and logprobs; the JSON encoding that follows is not in it)."""
    now = time.monotonic()

    def since(t: float | None, t0: float) -> float | None:
        return None if t is None else round(t - t0, 6)

    def one(j: Job) -> dict:
        return {"served_mass": None if j.served_mass is None else round(j.served_mass, 6), "task": j.task,
                "task_source": j.task_source, "swaps_waited": j.swaps_waited,
                "expert_bytes_waited": j.bytes_waited, "queue_seconds": since(j.started, j.arrival),
                "first_token_seconds": since(j.first_token_at, j.arrival),
                "done_seconds": since(j.finished_at, j.arrival),
                "answer_seconds": None if j.finished_at is None else round(now - j.finished_at, 6)}

    first = one(jobs[0])
    return first if len(jobs) == 1 else first | {"choices": [one(j) for j in jobs]}
