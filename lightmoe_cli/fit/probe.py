"""Short bandwidth probes of this machine: what a decode step can stream from RAM, and from disk.

The memory probe (an fp32 matvec over a matrix far above the caches, median of a few reps) lives here, and
benchmarks/harness.py uses it: the package never imports benchmarks/, the benchmarks import the package. The
disk probe reads the model's own weight files after asking the kernel to drop them from its page cache, so it
measures the disk, not RAM.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path


def matvec_rates(mib: int, threads: int, reps: int) -> list[float]:
    """Bytes/s of `reps` fp32 matvecs over a `mib` MiB matrix (far above the caches) after a warm-up, with
    `threads` torch threads (set explicitly, then restored): what a decode step can stream through those cores.
    benchmarks/harness.py's probe is this one, summarised its way."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        cols = 4096
        a = torch.ones(max(1, mib * 2**20 // (4 * cols)), cols, dtype=torch.float32)
        x = torch.ones(cols, dtype=torch.float32)
        torch.mv(a, x)  # warm-up: pages touched, threads up
        rates = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mv(a, x)
            rates.append(a.numel() * 4 / (time.perf_counter() - t0))
        return rates
    finally:
        torch.set_num_threads(previous)


def probe_memory_bandwidth(mib: int = 256, threads: int | None = None, reps: int = 5) -> float:
    """Bytes/s an fp32 matvec streams through RAM with `threads` torch threads (default: all cores), median."""
    return statistics.median(matvec_rates(mib, threads or os.cpu_count() or 1, reps))


def probe_disk_bandwidth(files: list[Path], limit: int = 256 * 2**20, block: int = 8 * 2**20) -> float | None:
    """Bytes/s reading up to `limit` bytes of `files` (the model's weights) with their cached pages dropped
    first; None without files or when too little was read to time."""
    done, seconds = 0, 0.0
    for path in files:
        if done >= limit:
            break
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            while done < limit and (chunk := os.read(fd, block)):
                done += len(chunk)
            seconds += time.perf_counter() - t0
        finally:
            os.close(fd)
    return done / seconds if done >= 16 * 2**20 and seconds > 0 else None
