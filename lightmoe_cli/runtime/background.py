"""A background expert loader: reads experts from the store on its own thread while the model computes.

Why: a demand-loading cache that stops every missing token until a whole expert is read (mixtral-offloading's
blocking path, our `lru`) pays the full I/O time on the critical path. Here a miss is served at once from the
residents (re-routed, as prune would) and its expert is queued; the read happens on this thread, overlapped with
compute, and the main thread installs the finished expert into a slot at the layer's next forward -- between
kernels, so no kernel ever sees a half-written slot.

Only this thread touches the store's files for these layers (positioned reads, no shared file position), and
only the main thread touches the model's tensors: the thread hands over plain host tensors under a lock.
`io_bandwidth` throttles each read for real (a sleep per byte), so a slow link can be reproduced on any machine.

Double buffering: a layer may register a `stage` function; the thread then writes each finished read of that
layer itself, into the layer's free spare row (no route points at it), and hands over only the row, so the main
thread installs the expert by flipping one table entry and never copies it.

On CUDA the thread also does the host-to-device copy: the read lands in pinned host memory, is copied on the
loader's own CUDA stream (non-blocking, overlapping the model's kernels) and an event is recorded; the main
thread makes its stream wait on that event before writing the slot, so the copy is never read half done.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from lightmoe_cli.files import throttle


@dataclass
class ReadyExpert:
    layer_index: int
    expert: int
    flat: torch.Tensor  # the expert's flat weights as stored (host memory, or the device's on CUDA)
    seconds: float  # read (and throttle) time on the loader thread
    copied: object | None = None  # CUDA: the event recorded after the copy on the loader's stream
    row: int | None = None  # double buffering: the spare row the loader thread already wrote it into
    buffer: bytearray | None = None  # the loader's reused buffer `flat` lies in, handed back by `recycle`

    def wait(self) -> torch.Tensor:
        """The weights, safe to read on the current stream."""
        if self.copied is not None:
            torch.cuda.current_stream(self.flat.device).wait_event(self.copied)
        return self.flat


class BackgroundLoader:
    def __init__(self, read: Callable[..., torch.Tensor], max_pending: int = 8,
                 io_bandwidth: float | None = None, delay: Callable[[], float] | None = None,
                 device: torch.device | str = "cpu", reuse_buffer: bool = False):
        """read(layer, expert[, scratch]) -> flat tensor; max_pending: queued reads per loader (beyond it a
        request is refused and counted); io_bandwidth: bytes/s to throttle to; delay: extra seconds per read
        (tests); device: where the model runs (cuda: pinned buffers and a copy stream); reuse_buffer: `read`
        takes a scratch bytearray, and a staged (double-buffered) layer's reads go through one reused buffer."""
        self._read, self.io_bandwidth, self._delay = read, io_bandwidth, delay
        self._reuse, self._scratch = reuse_buffer, bytearray()
        self._buffers: list[bytearray] = []  # read buffers handed back after their install (see `recycle`)
        self._size_hint = 0  # bytes of the largest read so far: a new buffer is made that size at once
        self.device = torch.device(device)
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._lock = threading.Lock()
        self._pending: set[tuple[int, int]] = set()  # queued or being read
        self._ready: dict[int, list[ReadyExpert]] = {}
        self.refused = 0  # requests refused because the queue was full
        self.error: BaseException | None = None
        self._stages: dict[int, Callable[[int, torch.Tensor], int]] = {}  # layer -> writes a read into its spare row
        self._thread = threading.Thread(target=self._run, name="lightmoe-expert-loader", daemon=True)
        self._thread.start()

    def request(self, layer_index: int, expert: int) -> bool:
        """Queue a read unless it is already queued, being read or waiting to be installed; False if refused."""
        key = (layer_index, expert)
        with self._lock:
            if key in self._pending:
                return True
            self._pending.add(key)
        try:
            self._queue.put_nowait(key)
        except queue.Full:
            with self._lock:
                self._pending.discard(key)
                self.refused += 1
            return False
        return True

    def stage(self, layer_index: int, write: Callable[[int, torch.Tensor], int]) -> None:
        """Double buffering: `write(expert, flat) -> row` is called on this thread for each read of the layer."""
        self._stages[layer_index] = write

    def take(self, layer_index: int) -> list[ReadyExpert]:
        """The experts of this layer read since the last call (main thread)."""
        if self.error is not None:
            raise RuntimeError(f"expert loader failed: {self.error}") from self.error
        with self._lock:
            ready = self._ready.pop(layer_index, [])
            for r in ready:
                self._pending.discard((r.layer_index, r.expert))
        return ready

    POOLED_BUFFERS = 2  # read buffers kept for reuse; a read budget keeps reads in flight at once to one or two

    def recycle(self, ready: ReadyExpert) -> None:
        """Hand back the buffer of a read the main thread has installed (copied into a slot) or dropped, so the
        next read reuses it. Why: a fresh buffer per read is fresh memory, zeroed and faulted in page by page and
        unmapped afterwards while the decode threads run (25 MB per expert read on the 1B benchmark model)."""
        buf, ready.buffer = ready.buffer, None
        if buf is None:
            return
        ready.flat = ready.flat.new_empty(0)  # no view of the buffer survives it
        with self._lock:
            if len(self._buffers) < self.POOLED_BUFFERS:
                self._buffers.append(buf)

    def _buffer(self) -> bytearray | None:
        """A buffer for a read the main thread will install from (reused ones first); None without reuse."""
        if not self._reuse or self._stream is not None:  # CUDA copies the read into pinned memory at once
            return None
        with self._lock:
            return self._buffers.pop() if self._buffers else bytearray(self._size_hint)

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Block until every queued read has finished (tests and the end of a run)."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            with self._lock:
                ready = {(r.layer_index, r.expert) for rs in self._ready.values() for r in rs}
                busy = any(k not in ready for k in self._pending)
            if not busy:
                return
            time.sleep(0.001)
        raise TimeoutError("expert loader did not finish its queue")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            key = self._queue.get()
            if key is None:
                return
            layer_index, expert = key
            t0 = time.perf_counter()
            try:
                write = self._stages.get(layer_index)
                # a staged read is copied into the spare row at once, so it may land in the one scratch buffer;
                # any other read waits for the main thread in a pooled buffer, handed back after its install
                buffer = None if write is not None else self._buffer()
                if write is not None and self._reuse:
                    flat = self._read(layer_index, expert, self._scratch)
                elif buffer is not None:
                    flat = self._read(layer_index, expert, buffer)
                    self._size_hint = max(self._size_hint, len(buffer))
                else:
                    flat = self._read(layer_index, expert)
                if self._delay is not None:
                    time.sleep(self._delay())
                throttle(t0, flat.numel() * flat.element_size(), self.io_bandwidth)
                if write is not None:  # written into the spare row here, off the main thread
                    row, copied = write(expert, flat), None
                    flat = flat.new_empty(0) if self._reuse else flat  # the buffer is reused: keep no view
                else:
                    row, (flat, copied) = None, self._to_device(flat)
            except BaseException as e:  # reported to the main thread at its next take()
                self.error = e
                return
            with self._lock:
                self._ready.setdefault(layer_index, []).append(
                    ReadyExpert(layer_index, expert, flat, time.perf_counter() - t0, copied, row,
                                buffer if row is None else None))

    def _to_device(self, flat: torch.Tensor):
        """CUDA: pinned host buffer -> device copy on the loader's stream, with the event that marks its end."""
        if self._stream is None:
            return flat, None
        pinned = flat.pin_memory()
        with torch.cuda.stream(self._stream):
            dev = pinned.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return dev, event
