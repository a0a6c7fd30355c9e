"""Requests join and leave a running batch between decode steps: their KV caches are merged and split.

Mechanism: each request is prefilled alone (its own cache, no padding), then its cache is left-padded to the
batch's width and concatenated along the batch axis; padding columns are masked out by the attention mask and
positions are kept per row, as in left-padded batched generation. A finished row is dropped with an index
select, and columns that are padding in every remaining row are trimmed. Only full-attention dynamic caches
can be merged this way; other cache kinds (sliding windows, recurrent states) serve one request at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


class NotMergeable(Exception):
    """The model's cache has layers this module cannot pad and concatenate."""


@dataclass
class BatchState:
    cache: object  # transformers DynamicCache over B rows
    mask: torch.Tensor  # (B, W) 1 = real token, 0 = padding
    positions: torch.Tensor  # (B, 1) position of each row's next input token
    next_tokens: torch.Tensor  # (B, 1)
    padded: bool = False  # some row has padding columns (the mask and positions must be passed)

    @property
    def size(self) -> int:
        return int(self.mask.shape[0])


def _kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise NotMergeable("cache without layers")
    out = []
    for layer in layers:
        if type(layer).__name__ != "DynamicLayer" or getattr(layer, "keys", None) is None:
            raise NotMergeable(f"cache layer {type(layer).__name__}")
        out.append((layer.keys, layer.values))
    return out


def _left_pad(t: torch.Tensor, width: int, axis: int) -> torch.Tensor:
    """Zeros before `t`'s entries along `axis` (counted from the end) up to `width`."""
    pad = [0, 0] * (-axis - 1) + [max(width - t.shape[axis], 0), 0]
    return torch.nn.functional.pad(t, pad)


def _cache(kv: list[tuple[torch.Tensor, torch.Tensor]]):
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=kv)


def check_mergeable(cache) -> None:
    _kv(cache)


def join(state: BatchState | None, cache, length: int, next_token: int) -> BatchState:
    """Add a request prefilled alone (`cache` over `length` tokens) to the batch."""
    device = next(iter(_kv(cache)))[0].device
    mask = torch.ones(1, length, dtype=torch.long, device=device)
    pos = torch.tensor([[length]], device=device)
    nxt = torch.tensor([[next_token]], device=device)
    if state is None:
        return BatchState(_cache(_kv(cache)), mask, pos, nxt, False)
    width = max(state.mask.shape[1], length)
    kv = [(torch.cat([_left_pad(k0, width, -2), _left_pad(k1, width, -2)]),
           torch.cat([_left_pad(v0, width, -2), _left_pad(v1, width, -2)]))
          for (k0, v0), (k1, v1) in zip(_kv(state.cache), _kv(cache), strict=True)]
    masks = torch.cat([_left_pad(state.mask, width, -1), _left_pad(mask, width, -1)])
    return BatchState(_cache(kv), masks, torch.cat([state.positions, pos]), torch.cat([state.next_tokens, nxt]),
                      state.padded or state.mask.shape[1] != length)


def keep_rows(state: BatchState, rows: list[int]) -> BatchState | None:
    """The batch with only `rows` (in that order); None when empty. Leading all-padding columns are trimmed."""
    if not rows:
        return None
    if rows == list(range(state.size)):
        return state
    idx = torch.tensor(rows, device=state.mask.device)
    mask = state.mask.index_select(0, idx)
    start = int((mask.cumsum(-1) == 0).sum(-1).min())  # columns that are padding in every kept row
    kv = [(k.index_select(0, idx)[..., start:, :], v.index_select(0, idx)[..., start:, :])
          for k, v in _kv(state.cache)]
    mask = mask[:, start:]
    return BatchState(_cache(kv), mask, state.positions.index_select(0, idx), state.next_tokens.index_select(0, idx),
                      not bool(mask.all()))
