"""Calibration shards: a task's token stream cut into a fixed number of contiguous pieces, each profiled on its
own (in this process, in local processes or as Ray tasks) and merged in shard order.

Why a fixed count, whatever the number of workers: the statistics are sums, and float sums depend on their order.
Every run of the same shards merges the same partial sums in the same order, so a profile made by 2 workers is
byte-identical in its statistics to one made by 1 (counts and co-activation are integers; gate mass float64 sums).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from lightmoe_cli.profile.accumulator import TaskStats


@dataclass(frozen=True)
class Shard:
    task: str
    index: int
    count: int

    @property
    def seed_offset(self) -> int:
        return zlib.crc32(f"{self.task}:{self.index}".encode())


@dataclass
class ShardResult:
    shard: Shard
    stats: dict[str, torch.Tensor]  # TaskStats.to_tensors()
    samples: dict[str, torch.Tensor]  # HiddenSampler.tensors()
    tokens: int
    seconds: float
    worker: str = ""
    extra: dict = field(default_factory=dict)


def task_windows(tokenizer, recipe, task, seq_len: int) -> list[list[int]]:
    """The task's token windows, tokenised once (the caller cuts them into shards with `split_windows`)."""
    from lightmoe_cli.profile.batches import token_windows
    from lightmoe_cli.recipes import iter_task_texts

    return list(token_windows(tokenizer, iter_task_texts(recipe, task), seq_len, task.max_tokens))


def split_windows(windows: Iterable[list[int]], count: int, max_tokens: int) -> list[list[list[int]]]:
    """`count` contiguous shards of the windows: shard j covers tokens [j, j + 1) x max_tokens / count of the
    stream, and each window goes to the shard whose range holds its first token."""
    out: list[list[list[int]]] = [[] for _ in range(count)]
    seen = 0
    for w in windows:
        out[next(j for j in range(count) if seen < (j + 1) * max_tokens // count)].append(w)
        seen += len(w)
    return out


def profile_shard(model, layers, windows: list[list[int]], shard: Shard, settings, quota: int, max_tokens: int,
                  pad_id: int, traces=None, on_batch=None, worker: str = "") -> ShardResult:
    """Trace one shard's windows: its statistics and its share of the hidden-state sample (seeded by task and
    shard)."""
    from lightmoe_cli.profile.batches import batches
    from lightmoe_cli.profile.tracer import HiddenSampler, trace_task

    per_shard = -(-quota // shard.count)
    sampler = HiddenSampler(layers, per_shard, seed=settings.seed + shard.seed_offset)
    t0 = time.perf_counter()
    stats = trace_task(model, layers, shard.task, batches(windows, settings.batch_size, pad_id),
                       sampler=sampler, sample_share=min(1.0, 2.0 * quota / max_tokens), traces=traces,
                       on_batch=on_batch)
    return ShardResult(shard, stats.to_tensors(), sampler.tensors(), stats.tokens, time.perf_counter() - t0, worker)


def merge_shards(name: str, results: list[ShardResult], quota: int) -> tuple[TaskStats, dict[str, torch.Tensor]]:
    """One task's statistics and hidden-state sample from its shards, added in shard order."""
    results = sorted(results, key=lambda r: r.shard.index)
    total = TaskStats.from_tensors(name, {k: v.clone() for k, v in results[0].stats.items()})
    for r in results[1:]:
        part = TaskStats.from_tensors(name, r.stats)
        for li, s in total.layers.items():
            s.merge(part.layers[li])
    samples: dict[str, torch.Tensor] = {}
    for key in sorted({k for r in results for k in r.samples}):
        parts = [r.samples[key] for r in results if key in r.samples and r.samples[key].numel()]
        samples[key] = torch.cat(parts)[:quota] if parts else torch.zeros(0)
    return total, samples
