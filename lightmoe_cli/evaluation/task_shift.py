"""Task-shift scenario: a stream of requests whose domain changes in blocks (e.g. code -> arithmetic -> Spanish
-> code), served in order, one multiple-choice item per request. This is where task-aware expert replacement
must pay off: the manager sees the demand move and swaps experts between requests; `prune` cannot adapt and
`lru` pays a load per miss. Scored here with our own loglikelihood loop (lm-eval reorders requests by length,
which would destroy the stream's order)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lightmoe_cli.evaluation.tasks import MCItem, read_items
from lightmoe_cli.runtime.loader import Runtime

DEFAULT_BLOCKS = ["python_code", "arithmetic", "bible_es", "python_code"]


@dataclass
class BlockResult:
    domain: str
    items: int
    correct: int
    swaps: int
    bytes_loaded: int
    seconds: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.items if self.items else 0.0


@dataclass
class StreamResult:
    name: str
    blocks: list[BlockResult] = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        return sum(b.correct for b in self.blocks) / max(1, sum(b.items for b in self.blocks))


@torch.no_grad()
def choose(rt: Runtime, item: MCItem) -> int:
    """Index of the choice with the highest summed log-probability given the context (one batched forward)."""
    tok = rt.tokenizer
    ctx = tok(item.context, add_special_tokens=False)["input_ids"]
    seqs = [ctx + tok(c, add_special_tokens=False)["input_ids"] for c in item.choices]
    width = max(map(len, seqs))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    logp = rt.model(input_ids=ids.to(rt.device), attention_mask=mask.to(rt.device)).logits.float().log_softmax(-1)
    logp = logp.cpu()
    scores = []
    for i, s in enumerate(seqs):
        cont = torch.tensor(s[len(ctx):])
        pos = torch.arange(len(ctx) - 1, len(s) - 1)
        scores.append(float(logp[i, pos, cont].sum()))
    return max(range(len(scores)), key=scores.__getitem__)


def stream_items(items_dir: Path, blocks: list[str], per_block: int) -> list[tuple[str, MCItem]]:
    """The request stream; a domain repeated later takes the next items (no item is asked twice)."""
    taken: dict[str, int] = {}
    stream = []
    for domain in blocks:
        items = read_items(items_dir / f"{domain}.jsonl")
        start = taken.get(domain, 0)
        stream += [(domain, it) for it in items[start:start + per_block]]
        taken[domain] = start + per_block
    return stream


def run_stream(rt: Runtime, name: str, stream: list[tuple[str, MCItem]]) -> StreamResult:
    result = StreamResult(name)
    current: BlockResult | None = None
    for domain, item in stream:
        if current is None or current.domain != domain:
            current = BlockResult(domain, 0, 0, 0, 0, 0.0)
            result.blocks.append(current)
        swaps_before = sum(len(m.swaps) for m in rt.layers)
        bytes_before = sum(m.stats.bytes_loaded for m in rt.layers)
        t0 = time.perf_counter()
        current.correct += int(choose(rt, item) == item.gold)
        rt.checkpoint()  # request boundary
        current.seconds += time.perf_counter() - t0
        current.items += 1
        current.swaps += sum(len(m.swaps) for m in rt.layers) - swaps_before
        current.bytes_loaded += sum(m.stats.bytes_loaded for m in rt.layers) - bytes_before
    return result
