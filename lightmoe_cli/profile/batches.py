"""Calibration text -> padded token batches with an attention mask, capped at a task's token budget.

Why per-document windows with padding (not packing): routing is measured on text as a user sends it, without
attention across unrelated documents; the padding this needs is masked out of every statistic.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # (B, S)
    attention_mask: torch.Tensor  # (B, S) 1 = real token, 0 = padding

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def token_windows(tokenizer, texts: Iterable[str], seq_len: int, max_tokens: int) -> Iterator[list[int]]:
    """Each document tokenised and cut into windows of at most seq_len; stops after max_tokens tokens."""
    total = 0
    for text in texts:
        if not text.strip():
            continue
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), seq_len):
            window = ids[start:start + seq_len][: max_tokens - total]
            if window:
                total += len(window)
                yield window
            if total >= max_tokens:
                return


def batches(windows: Iterable[list[int]], batch_size: int, pad_id: int) -> Iterator[TokenBatch]:
    """Group windows into right-padded batches."""
    buf: list[list[int]] = []

    def flush() -> TokenBatch:
        width = max(len(w) for w in buf)
        ids = torch.full((len(buf), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(buf), width), dtype=torch.long)
        for i, w in enumerate(buf):
            ids[i, : len(w)] = torch.tensor(w, dtype=torch.long)
            mask[i, : len(w)] = 1
        return TokenBatch(ids, mask)

    for w in windows:
        buf.append(w)
        if len(buf) == batch_size:
            yield flush()
            buf = []
    if buf:
        yield flush()
