"""Every decode step, prefill and set move of an engine, timed where its thread calls them (a diagnostic).

Why: the fleet model prices a decode step, a prefill and a set move from calibration bursts and the 1-replica
load; what a replica's engine really spends on each, under a fleet's load, is otherwise only inferred from
per-request records (benchmarks/fleet_hops.py). This records each call's wall-clock start (seconds since the
epoch, so logs of several processes line up), its duration, and its size (rows for a step, prompt tokens for a
prefill, the requests a set move is made for). Off unless asked for: `lightmoe serve --replicas` turns it on in every
replica when `LIGHTMOE_STEP_LOG_DIR` names a folder, and each replica appends JSON lines to a file of its own
there, flushed at most every `flush_every_s` from the engine thread (a few appends per step otherwise).
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ENV = "LIGHTMOE_STEP_LOG_DIR"


@dataclass
class StepLog:
    """Wraps an engine's `_step`, `_start` and `_switch` on the instance; `records` holds what is not flushed."""

    path: Path | None = None  # where to append JSON lines (None: keep them in `records` only)
    flush_every_s: float = 1.0
    records: list[tuple[float, float, str, int]] = field(default_factory=list)  # (start, seconds, kind, size)
    _last_flush: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # the engine appends, a flush may come from
    # another thread (the replica's `info`)

    def attach(self, engine) -> StepLog:
        step, start, switch = engine._step, engine._start, engine._switch
        wall = time.time() - time.perf_counter()  # perf_counter -> seconds since the epoch

        def timed(kind: str, fn, size):
            def call(*args):
                n, t0 = size(*args), time.perf_counter()
                out = fn(*args)
                with self._lock:
                    self.records.append((wall + t0, time.perf_counter() - t0, kind, n))
                self._maybe_flush()
                return out
            return call

        engine._step = timed("step", step, lambda: len(engine.rows))
        engine._start = timed("prefill", start, lambda job: len(job.prompt_ids))
        engine._switch = timed("move", switch, lambda task, jobs: len(jobs))
        return self

    def _maybe_flush(self) -> None:
        if self.path is not None and time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if self.path is None:
            return
        with self._lock:
            out, self.records = self.records, []
        if not out:
            return
        with open(self.path, "a") as f:
            f.writelines(json.dumps({"t": t, "s": s, "kind": k, "n": n}) + "\n" for t, s, k, n in out)
        self._last_flush = time.monotonic()


def from_env(engine, name: str) -> StepLog | None:
    """A step log for `engine` in `$LIGHTMOE_STEP_LOG_DIR/steps-{name}-{pid}.jsonl` when that variable is set."""
    folder = os.environ.get(ENV)
    if not folder:
        return None
    Path(folder).mkdir(parents=True, exist_ok=True)
    return StepLog(Path(folder) / f"steps-{name}-{os.getpid()}.jsonl").attach(engine)


def read(folder: Path) -> dict[str, list[dict]]:
    """Every step log in `folder`, by file name without its suffix."""
    return {p.stem: [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
            for p in sorted(Path(folder).glob("steps-*.jsonl"))}
