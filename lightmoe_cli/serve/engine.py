"""The engine thread: the only code that touches the model and the runtime.

HTTP handlers `submit()` a `Job` and read its events from a thread-safe sink; the engine drains its inbox,
names each new job's task, lets the scheduler pick which jobs join the batch (moving the resident set between
task groups), prefills joiners one by one, and decodes the batch one token per step. Jobs join and leave
between steps; a cancelled job (its client went away) leaves at the next step; a job whose decoding raises
fails alone.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.runtime.generate import cache_kwarg_name, cache_of, last_logits_only
from lightmoe_cli.runtime.session import Runtime
from lightmoe_cli.serve import batch as kv
from lightmoe_cli.serve.sampling import Choice, Sampling, choose, prompt_logprobs
from lightmoe_cli.serve.scheduler import Waiting

_ids = itertools.count(1)


class QueueFull(LightMoEError):
    """Every queue slot is taken: the client should retry later (HTTP 429)."""


class ShuttingDown(LightMoEError):
    """The server stopped taking requests (HTTP 503)."""


@dataclass
class Job:
    prompt_ids: list[int]
    max_tokens: int
    sampling: Sampling
    emit: Callable[[dict], None]  # thread-safe sink of this job's events
    stop: list[str] = field(default_factory=list)
    echo: bool = False
    task_hint: str | None = None  # the task the client named (the oracle)
    prompt_text: str = ""
    id: int = field(default_factory=lambda: next(_ids))
    arrival: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    # filled by the engine
    task: str | None = None
    task_source: str | None = None  # "named" | "routing" | "text" | None
    swaps_waited: int = 0
    bytes_waited: int = 0
    started: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None  # handed back to the HTTP side (its last token decoded, its meter folded)
    generated: list[int] = field(default_factory=list)
    choices: list[Choice] = field(default_factory=list)
    prompt_choices: list[Choice | None] = field(default_factory=list)
    text: str = ""
    pending: str = ""  # text decoded but not yet sent (deltas are coalesced, see Engine.stream_interval_s)
    last_sent: float | None = None
    decoded: int = 0  # generated tokens already decoded into `text` (without stop strings decoding waits)
    mass_served: float | torch.Tensor = 0.0
    mass_tokens: int = 0
    mass_known: bool = True
    meter_backlog: list = field(default_factory=list)  # single-job forwards not folded yet (Engine._meter)
    gen: torch.Generator | None = None

    @property
    def served_mass(self) -> float | None:
        return float(self.mass_served) / self.mass_tokens if self.mass_known and self.mass_tokens else None

    def cancel(self) -> None:
        self.cancelled = True


class _ProbeDone(Exception):
    pass


METER_EVERY = 32  # single-job forwards kept before the meter folds them (one gather for all of them)


def _served_per_token(tables: tuple, forwards: list[list]) -> torch.Tensor | None:
    """(T,) each token's share of gate mass served by its own expert, averaged over layers, for the tokens of
    `forwards` (each a list of (strategy, (T_i, K) index, (T_i, K) weights) per MoE layer, in layer order) run
    under `tables` (each layer's served table); None when a layer cannot tell or the layers' picks differ in
    shape (a per-layer top-k)."""
    if any(t is None for t in tables):
        return None
    if any(len(seen) != len(tables) or len({tuple(i.shape) for _, i, _ in seen}) > 1 for seen in forwards):
        return None
    k = forwards[0][0][1].shape[-1]
    if any(seen[0][1].shape[-1] != k for seen in forwards):
        return None
    index = torch.stack([torch.cat([seen[layer][1].reshape(-1, k) for seen in forwards])
                         for layer in range(len(tables))]).long()  # (L, T, K)
    w = torch.stack([torch.cat([seen[layer][2].reshape(-1, k) for seen in forwards])
                     for layer in range(len(tables))]).float()
    own = torch.stack(tables).gather(1, index.flatten(1)).view_as(w)
    return ((w * own).sum(-1) / w.sum(-1).clamp_min(1e-12)).mean(0)


class Engine:
    """Owns the runtime; one thread decodes every request."""

    def __init__(self, rt: Runtime, scheduler, detector=None, max_queue: int = 256, metrics=None,
                 jump_at_boundaries: bool = False, stream_interval_s: float = 0.02, threads: int | None = None,
                 group_of: dict[str, str] | None = None):
        self.rt, self.scheduler, self.detector = rt, scheduler, detector
        self.max_queue, self.metrics = max_queue, metrics
        self.jump_at_boundaries = jump_at_boundaries  # FIFO + the bundle's task-jump manager
        self.stream_interval_s = stream_interval_s
        self.threads = threads  # torch threads of the engine thread (None: the count the process set)
        self.group_of = group_of or {}  # task -> the shared set serving it (--task-groups); else its own
        self.inbox: queue.Queue[Job] = queue.Queue()
        self.waiting: dict[int, Job] = {}
        self.rows: list[Job] = []
        self.state: kv.BatchState | None = None
        self.current_task: str | None = None
        self.accepting = True
        self._stop = False
        self._layout: list[tuple[Job, int]] | None = None
        self._seen: list = []  # (strategy, index, weights) of every MoE layer in the current forward
        self._probe: list | None = None
        self._since_check = 0
        self._cache_name = cache_kwarg_name(rt.model)
        self._last_only = last_logits_only(rt.model)
        self._eos = rt.tokenizer.eos_token_id  # a property that converts a token each time it is read
        self.can_batch = True
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, name="lightmoe-engine", daemon=True)
        for m in rt.layers:
            m.observers.append(self._observe)

    # ---- the handlers' side ------------------------------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def pending(self) -> int:
        return self.inbox.qsize() + len(self.waiting)

    def submit(self, job: Job) -> None:
        if not self.accepting:
            raise ShuttingDown("the server is shutting down")
        if self.pending() >= self.max_queue:
            raise QueueFull(f"queue full ({self.max_queue} waiting)")
        self.inbox.put(job)

    def stop(self, timeout: float = 30.0) -> None:
        """Take no new requests; finish the queued and running ones within `timeout`, then stop the thread."""
        self.accepting = False
        deadline = time.monotonic() + timeout
        while (self.pending() or self.rows) and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        self._stop = True
        self.inbox.put(None)  # wake the loop
        self.thread.join(timeout=max(deadline - time.monotonic(), 1.0))

    # ---- routing observers ---------------------------------------------------------------------------------------
    def _observe(self, strategy, index: torch.Tensor, weights: torch.Tensor) -> None:
        if self._probe is not None:
            if strategy is self.rt.layers[0]:
                self._probe.append((index.detach().cpu().numpy(), weights.detach().float().cpu().numpy()))
                raise _ProbeDone
            return
        if self._layout:  # kept, not computed: the meter reads every layer at once after the forward
            self._seen.append((strategy, index, weights))

    def _meter(self, layout: list[tuple[Job, int]]) -> None:
        """Fold this forward's routing into each job's served mass: the share of the router's gate mass whose
        pick ran on its own expert, averaged over layers. A forward of one job alone is kept (its routing and
        the layers' served tables as they were) and folded `METER_EVERY` forwards at a time with one gather over
        all of them: per decode step the gather was 1.8% of a single request's engine time on the demo model."""
        seen, self._seen = self._seen, []
        if not seen:
            return
        tables = tuple(s.served_table() for s, _, _ in seen)  # replaced, never changed in place, on a swap
        if len(layout) == 1:
            job, n = layout[0]
            job.meter_backlog.append((tables, seen, n))
            if len(job.meter_backlog) >= METER_EVERY:
                self._fold_backlog(job)
            return
        for job, _ in layout:
            self._fold_backlog(job)
        per_token = _served_per_token(tables, [seen])
        if per_token is None:
            for job, _ in layout:
                job.mass_known = False
            return
        values = per_token.tolist()
        offset = 0
        for job, n in layout:
            job.mass_served += sum(values[offset:offset + n])
            job.mass_tokens += n
            offset += n

    def _fold_backlog(self, job: Job) -> None:
        """Fold a job's kept single-job forwards into its served mass (one gather per run of equal tables)."""
        backlog, job.meter_backlog = job.meter_backlog, []
        start = 0
        while start < len(backlog):
            tables = backlog[start][0]
            end = start + 1
            while end < len(backlog) and all(a is b for a, b in zip(backlog[end][0], tables, strict=True)):
                end += 1
            per_token = _served_per_token(tables, [seen for _, seen, _ in backlog[start:end]])
            if per_token is None:
                job.mass_known = False
            else:  # summed as a tensor: no sync with the device
                job.mass_served = job.mass_served + per_token.sum()
                job.mass_tokens += sum(n for _, _, n in backlog[start:end])
            start = end

    @torch.inference_mode()
    def probe(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """The first MoE layer's routing of `ids` (the model runs only up to that router)."""
        self._probe = []
        try:
            self.rt.model(input_ids=torch.tensor([ids], device=self.rt.device), use_cache=False)
        except _ProbeDone:
            pass
        finally:
            got, self._probe = self._probe, None
        if not got:
            raise LightMoEError("the routing probe saw no MoE layer")
        return got[0]

    # ---- the loop ------------------------------------------------------------------------------------------------
    def _run(self) -> None:
        # a new thread's OpenMP team starts at the library's default, not at the count the process set with
        # torch.set_num_threads: set it here (measured on the demo model at 1 thread: a 342-token prefill took
        # 71 ms on a fresh thread, 60 ms on the main thread and on a thread that set it)
        torch.set_num_threads(self.threads or torch.get_num_threads())
        while not self._stop:
            try:
                self._tick()
            except Exception as e:  # a bug here must not kill the server silently: fail what is running
                for job in self.rows + list(self.waiting.values()):
                    self._fail(job, 500, f"engine error: {e}")
                self.rows, self.state, self.waiting = [], None, {}

    def _tick(self) -> None:
        idle = not self.rows and not self.waiting
        self._drain(block=idle)
        if self._stop:
            return
        now = time.monotonic()
        # the scheduler groups by the set that serves a request: its task's own, or its task group's
        waiting = [Waiting(j.id, self.group_of.get(j.task, j.task), j.arrival) for j in self.waiting.values()]
        max_batch = self.scheduler.max_batch if self.can_batch else 1
        plan = self.scheduler.plan(waiting, self.current_task, len(self.rows), now)
        if plan.switch_to is not None and not self.rows:
            self._switch(plan.switch_to, [self.waiting[i] for i in plan.admit])
        for jid in plan.admit:
            if len(self.rows) >= max_batch:
                break
            self._start(self.waiting.pop(jid))
        if self.metrics:
            self.metrics.queue_depth.set(self.pending())
        if self.rows:
            self._step()
        elif self.waiting and not plan.admit:
            self._drain(block=True, timeout=0.005)

    def _drain(self, block: bool, timeout: float = 0.5) -> None:
        try:
            job = self.inbox.get(timeout=timeout) if block else self.inbox.get_nowait()
        except queue.Empty:
            return
        while job is not None:
            self._admit_to_pool(job)
            try:
                job = self.inbox.get_nowait()
            except queue.Empty:
                return

    def _admit_to_pool(self, job: Job) -> None:
        if job.cancelled:
            return
        try:
            if job.task_hint is not None:
                job.task, job.task_source = job.task_hint, "named"
            elif self.detector is not None and self.scheduler.task_aware:
                job.task, _ = self.detector.detect(job.prompt_ids, job.prompt_text)
                job.task_source = self.detector.name if job.task is not None else None
        except Exception as e:
            self._fail(job, 500, f"task detection failed: {e}")
            return
        self.waiting[job.id] = job

    def _switch(self, task: str, jobs: list[Job]) -> None:
        before = self.rt.store.bytes_read
        moved = self.rt.use_task(task)
        self.current_task = task
        loaded = self.rt.store.bytes_read - before
        self.swaps += moved
        for job in jobs:
            job.swaps_waited += moved
            job.bytes_waited += loaded

    def _forward(self, layout: list[tuple[Job, int]], **kw):
        self._layout = layout
        try:
            out = self.rt.model(use_cache=True, **kw)
            self._meter(layout)
            return out
        finally:
            self._layout, self._seen = None, []

    @torch.inference_mode()
    def _start(self, job: Job) -> None:
        """Prefill one job alone; it joins the batch unless it is already done."""
        if job.cancelled:
            return
        job.started = time.monotonic()
        try:
            ids = torch.tensor([job.prompt_ids], device=self.rt.device)
            echo_logprobs = job.echo and job.sampling.logprobs is not None  # needs every position's logits
            out = self._forward([(job, len(job.prompt_ids))], input_ids=ids,
                                **({} if echo_logprobs else self._last_only))
            logits = out.logits[0]
            if echo_logprobs:
                job.prompt_choices = prompt_logprobs(logits, ids[0], job.sampling.logprobs)
            if job.max_tokens == 0:
                self._finish(job, "length")
                return
            job.gen = job.sampling.generator()
            choice = choose(logits[-1], job.sampling, job.gen)
            if self._accept(job, choice):
                return
            cache = cache_of(out)
            if self.can_batch:
                try:
                    kv.check_mergeable(cache)
                except kv.NotMergeable:
                    self.can_batch = False
            if not self.can_batch and self.rows:
                raise LightMoEError("internal: a second row on an unbatchable model")
            self.state = kv.join(self.state, cache, len(job.prompt_ids), choice.token)
            self.rows.append(job)
        except Exception as e:
            self._fail(job, 500, f"{type(e).__name__}: {e}")

    def _accept(self, job: Job, choice: Choice) -> bool:
        """Record a sampled token; True when the job is finished (eos, stop string, max_tokens)."""
        if job.first_token_at is None:
            job.first_token_at = time.monotonic()
        if choice.token == self._eos:
            self._finish(job, "stop")
            return True
        job.generated.append(choice.token)
        job.choices.append(choice)
        if job.stop:  # a stop string may end the text at any token: decode every one
            text = self._decode(job)
            for s in job.stop:
                cut = text.find(s, max(len(job.text) - len(s), 0))
                if cut >= 0:
                    self._emit_text(job, text[:cut])
                    self._finish(job, "stop")
                    return True
            if not text.endswith("\ufffd"):  # hold back a partial UTF-8 character
                self._emit_text(job, text)
        elif job.last_sent is None or time.monotonic() - job.last_sent >= self.stream_interval_s:
            # without stop strings the text is decoded only when a delta goes out (and at the end): decoding
            # the whole answer at every token was 2% of a single request's decode time on the demo model
            self._catch_up(job)
        if len(job.generated) >= job.max_tokens:
            self._finish(job, "length")
            return True
        return False

    def _emit_text(self, job: Job, text: str) -> None:
        job.pending += text[len(job.text):] if text.startswith(job.text) else text
        job.text = text
        now = time.monotonic()
        if job.last_sent is None or now - job.last_sent >= self.stream_interval_s:
            self._flush(job, now)

    def _decode(self, job: Job) -> str:
        """The whole answer's text so far (every generated token decoded, so `job.decoded` catches up)."""
        job.decoded = len(job.generated)
        return self.rt.tokenizer.decode(job.generated, skip_special_tokens=True)

    def _catch_up(self, job: Job) -> None:
        """Decode the tokens generated since the last decode into `job.text` (holding back a partial UTF-8
        character) and send what is pending."""
        if job.decoded < len(job.generated):
            text = self._decode(job)
            if not text.endswith("\ufffd"):
                self._emit_text(job, text)
        self._flush(job, time.monotonic())

    def _flush(self, job: Job, now: float) -> None:
        """Send the text decoded since the last delta: the first token at once, then at most one delta per
        `stream_interval_s`, because every delta wakes the HTTP loop, which shares the interpreter with this
        thread (one delta per token cost ~30% of single-request decode speed on the demo model)."""
        if job.pending:
            job.emit({"type": "delta", "text": job.pending})
            job.pending, job.last_sent = "", now

    @torch.inference_mode()
    def _step(self) -> None:
        st = self.state
        mask = torch.cat([st.mask, st.mask.new_ones(st.size, 1)], dim=1)
        # without padding (one row, or rows of equal length) the model's own causal mask and positions are the
        # same, and its fast path skips building a 4-D mask every step
        padded = {"attention_mask": mask, "position_ids": st.positions} if st.padded else {}
        out = self._forward([(j, 1) for j in self.rows], input_ids=st.next_tokens,
                            **padded, **{self._cache_name: st.cache})
        st = kv.BatchState(cache_of(out), mask, st.positions + 1, st.next_tokens.clone(), st.padded)
        keep: list[int] = []
        finished_any = False
        for i, job in enumerate(self.rows):
            if job.cancelled:
                self._finish(job, "cancelled", emit=False)
                finished_any = True
                continue
            try:
                choice = choose(out.logits[i, -1], job.sampling, job.gen)
                done = self._accept(job, choice)
            except Exception as e:  # this request alone fails
                self._fail(job, 500, f"{type(e).__name__}: {e}")
                done = True
            if done:
                finished_any = True
            else:
                st.next_tokens[i, 0] = choice.token
                keep.append(i)
        self.rows = [self.rows[i] for i in keep]
        self.state = kv.keep_rows(st, keep)
        if self.metrics:
            self.metrics.batch_size.observe(st.size)
        self._since_check += st.size
        if finished_any and self.jump_at_boundaries:
            self.swaps += self.rt.checkpoint(boundary=True)  # a request boundary: the task-jump manager decides
            self._since_check = 0
        elif self._since_check >= self.rt.check_every:
            # fold the routing counts (a per-layer manager may swap here; the jump manager only counts)
            self.swaps += self.rt.checkpoint(boundary=False)
            self._since_check = 0

    def _finish(self, job: Job, reason: str, emit: bool = True) -> None:
        self._fold_backlog(job)
        if emit:
            self._catch_up(job)
            job.finished_at = time.monotonic()
            job.emit({"type": "done", "finish_reason": reason, "job": job})
        if self.metrics:
            self.metrics.finished(job, reason)

    def _fail(self, job: Job, status: int, message: str) -> None:
        job.emit({"type": "error", "status": status, "message": message})
        if self.metrics:
            self.metrics.failed(job)
