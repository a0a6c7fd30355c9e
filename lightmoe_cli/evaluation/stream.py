"""Task-shift streams: requests of held-out text whose domain changes every `block` requests, served in order
by one runtime, each scored by its NLL per token. This is where task-aware residency must pay off — and where
a manager that chases the last request's task can do worse than static pruning, so it is measured at several
block lengths, with the oracle (task given) as the ceiling and full / prune as the ends of the gap.

Scored with our own forward loop: lm-eval reorders requests by length, which would destroy the order."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.analysis.paired import gap_closed, paired_bootstrap


@dataclass(frozen=True)
class StreamRequest:
    domain: str
    text: str
    block: int  # which block of the stream
    position: int  # requests since the domain last changed (0 = first after a shift)


@dataclass
class RequestScore:
    nll: float  # summed over the request's scored tokens
    tokens: int
    swaps: int  # layer swaps right after this request (its boundary)
    bytes_loaded: int
    seconds: float


@dataclass
class StreamResult:
    name: str
    block: int
    requests: list[StreamRequest]
    scores: list[RequestScore] = field(default_factory=list)

    @property
    def nll_per_token(self) -> float:
        return sum(s.nll for s in self.scores) / max(1, sum(s.tokens for s in self.scores))

    @property
    def swaps(self) -> int:
        return sum(s.swaps for s in self.scores)

    @property
    def bytes_loaded(self) -> int:
        return sum(s.bytes_loaded for s in self.scores)

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.scores)

    def curve(self) -> list[float]:
        """NLL per token by position after a shift (0 = first request of a block), over all blocks."""
        by_pos: dict[int, list[RequestScore]] = {}
        for r, s in zip(self.requests, self.scores, strict=True):
            by_pos.setdefault(r.position, []).append(s)
        return [sum(s.nll for s in v) / max(1, sum(s.tokens for s in v)) for _, v in sorted(by_pos.items())]


def build_stream(ppl_dir: Path, block: int, n_requests: int, seed: int = 0) -> list[StreamRequest]:
    """`n_requests` documents in blocks of `block` of one domain; the next domain is drawn at random among the
    others (mixed order, seeded); each domain's documents are taken in order (cycling when exhausted)."""
    docs = {p.stem: [json.loads(x)["text"] for x in p.read_text().splitlines() if x.strip()]
            for p in sorted(Path(ppl_dir).glob("*.jsonl"))}
    if len(docs) < 2:
        raise ValueError(f"a task-shift stream needs held-out text of two domains or more in {ppl_dir}")
    rng = random.Random(f"stream:{block}:{seed}")
    taken = dict.fromkeys(docs, 0)
    out: list[StreamRequest] = []
    domain, b = None, 0
    while len(out) < n_requests:
        domain = rng.choice([d for d in sorted(docs) if d != domain])
        for pos in range(min(block, n_requests - len(out))):
            text = docs[domain][taken[domain] % len(docs[domain])]
            taken[domain] += 1
            out.append(StreamRequest(domain, text, b, pos))
        b += 1
    return out


@torch.no_grad()
def score_text(rt, text: str) -> tuple[float, int]:
    """Summed NLL (nats) of every token of `text` after the first, and their count (one forward)."""
    ids = rt.tokenizer(text, return_tensors="pt").input_ids.to(rt.device)
    logp = rt.model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
    target = ids[0, 1:]
    return float(-logp.gather(-1, target[:, None]).sum()), int(target.numel())


def run_stream(rt, name: str, stream: list[StreamRequest], block: int, task_given: bool = False) -> StreamResult:
    """Serve the stream in order; every request ends at a boundary where the manager may swap. With
    `task_given`, the runtime is told each request's domain first (the oracle)."""
    result = StreamResult(name, block, stream)
    for req in stream:
        swaps0 = sum(len(m.swaps) for m in rt.layers)
        bytes0 = sum(m.stats.bytes_loaded for m in rt.layers)
        t0 = time.perf_counter()
        if task_given:
            rt.use_task(req.domain)
        nll, tokens = score_text(rt, req.text)
        rt.checkpoint()
        result.scores.append(RequestScore(nll, tokens, sum(len(m.swaps) for m in rt.layers) - swaps0,
                                          sum(m.stats.bytes_loaded for m in rt.layers) - bytes0,
                                          time.perf_counter() - t0))
    return result


def summarise_streams(results: list[StreamResult], seed: int = 0) -> list[dict]:
    """Per block length and config: NLL per token, difference to prune (paired over requests, 95% interval),
    share of prune's gap to full closed, share of the oracle's gain over prune reached, swaps, bytes, time."""
    rows = []
    for block in sorted({r.block for r in results}):
        mine = {r.name: r for r in results if r.block == block}
        prune, full, oracle = mine.get("prune"), mine.get("full"), mine.get("oracle")
        tokens = {"s": np.array([s.tokens for s in next(iter(mine.values())).scores], dtype=np.float64)}
        for name, r in mine.items():
            row = {"block": block, "config": name, "nll_per_token": r.nll_per_token, "swaps": r.swaps,
                   "bytes_loaded": r.bytes_loaded, "seconds": r.seconds, "curve": r.curve()}
            if prune is not None and r is not prune:
                iv = paired_bootstrap({"s": np.array([s.nll for s in r.scores])},
                                      {"s": np.array([s.nll for s in prune.scores])}, tokens, seed=seed)
                row["vs_prune"] = iv.to_json()
                if full is not None:
                    row["gap_closed"] = gap_closed(r.nll_per_token, prune.nll_per_token, full.nll_per_token)
                if oracle is not None:
                    row["oracle_share"] = gap_closed(r.nll_per_token, prune.nll_per_token, oracle.nll_per_token)
            rows.append(row)
    return rows
