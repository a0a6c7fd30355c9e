"""Managed MoE layers: a fixed pool of expert slots, a lookup table expert -> slot, and the statistics.

The experts module keeps its own class and kernel (grouped_mm by default); only its fused parameters shrink to
[slots, ...]. The router stays whole, so every forward tells us which experts the tokens wanted (demand), and a
pre-hook on the experts module turns expert ids into slot ids:
- static (full / lightmoe): a resident pick runs in its slot; a missing one is redirected to the slot of its
  redirect target (router weight kept), or dropped (weight 0) with the token's weights renormalised;
- lru: missing experts are loaded from the expert store before the tokens continue, evicting by the cache rule;
  tokens are processed in groups whose experts fit the slots.
Which expert lives in which slot is plain bookkeeping (`slot_of`); copying weights is `SlotWriter`'s job.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from lightmoe_cli.bundle.artifact import ExpertLayout, ExpertStore
from lightmoe_cli.policies.cache import ExpertCache
from lightmoe_cli.policies.manager import LayerManager, Swap
from lightmoe_cli.policies.redirect import DROP, redirect_table


@dataclass
class LayerStats:
    picks: int = 0  # token x top-k selections the router made
    hits: int = 0  # picks whose expert was resident
    redirects: int = 0  # picks sent to another resident expert
    drops: int = 0  # picks of missing experts with no similar resident: dropped, or the token re-routed
    misses: int = 0  # picks whose expert had to be loaded first (lru)
    loads: int = 0  # experts copied into a slot (lru misses, lightmoe swaps)
    bytes_loaded: int = 0
    load_seconds: float = 0.0


@dataclass
class SwapRecord:
    layer_index: int
    token: int
    evicted: list[int]
    loaded: list[int]
    bytes: int
    seconds: float


class SlotWriter:
    """Copies one expert's weights from the store into one slot of the experts module (the only data mover)."""

    def __init__(self, experts: torch.nn.Module, layout: ExpertLayout, store: ExpertStore, layer_index: int):
        self.experts, self.layout, self.store, self.layer_index = experts, layout, store, layer_index
        self.bytes_per_expert = layout.numel * torch.empty(0, dtype=getattr(torch, layout.dtype)).element_size()

    @torch.no_grad()
    def load(self, expert: int, slot: int) -> float:
        t0 = time.perf_counter()
        parts = self.layout.split(self.store.read(self.layer_index, expert))
        for name, tensor in parts.items():
            getattr(self.experts, name)[slot].copy_(tensor)
        return time.perf_counter() - t0


@dataclass
class ManagedLayer:
    """Bookkeeping of one MoE layer at run time."""

    layer_index: int
    num_experts: int
    slots: int
    mode: str  # "static", "lru" or "prune"
    slot_of: torch.Tensor  # (E,) slot of each resident expert, -1 otherwise
    redirect: torch.Tensor  # (E,) expert -> target expert or DROP
    writer: SlotWriter | None = None
    cache: ExpertCache | None = None
    manager: LayerManager | None = None
    similarity: np.ndarray | None = None
    min_similarity: float = 0.5
    stats: LayerStats = field(default_factory=LayerStats)
    swaps: list[SwapRecord] = field(default_factory=list)
    reroute: bool = False  # tokens with a dropped pick take top-k among resident experts (prune-equivalent)
    renormalise: bool = True  # the router renormalises its top-k weights (norm_topk_prob)
    _logits: torch.Tensor | None = None  # (T, E) the router's logits of the current forward (reroute only)

    _pending: list = field(default_factory=list)  # (index, weights) of forwards since the last check point
    _route: torch.Tensor | None = None  # (E,) expert -> slot after redirect, -1 = dropped
    _any_drop: bool = False
    _no_redirect: bool = True  # every missing expert is dropped/re-routed (none redirected)
    _bias: torch.Tensor | None = None  # (E,) 0 for residents, -inf otherwise: re-routing by a masked top-k

    def __post_init__(self) -> None:
        self._rebuild_route()

    @property
    def resident(self) -> list[int]:
        return sorted(int(e) for e in torch.nonzero(self.slot_of >= 0).flatten())

    def _rebuild_route(self) -> None:
        target = self.redirect
        self._route = torch.where(target >= 0, self.slot_of[target.clamp_min(0)], torch.full_like(target, -1))
        self._any_drop = bool((self._route < 0).any())
        resident = self.slot_of >= 0
        self._no_redirect = bool(((target == torch.arange(self.num_experts)) | (target < 0)).all())
        self._bias = torch.where(resident, 0.0, float("-inf"))

    # ---- static: table lookup (the hot path: a few tensor ops per layer and forward) -------------------------
    def route(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, K) expert ids + router weights -> slot ids + weights (dropped picks: weight 0, renormalised)."""
        idx = index.long()
        self._pending.append((idx, weights))  # counted at the next check point, off the per-token path
        if not self._any_drop:
            return self._route[idx], weights
        if self.reroute and self.renormalise and self._no_redirect and self._logits is not None:
            # every missing expert is re-routed: top-k among residents from the router's logits; softmax over
            # the k kept logits = renormalised top-k probabilities (tokens with no missing pick are unchanged)
            vals, experts = (self._logits.reshape(-1, self.num_experts).float() + self._bias).topk(idx.shape[-1])
            return self.slot_of[experts], vals.softmax(-1).to(weights.dtype)
        slot = self._route[idx]
        dropped = slot < 0
        if not bool(dropped.any()):
            return slot, weights
        if self.reroute and self._logits is not None:
            return self._reroute(slot, weights, dropped)
        w = weights.masked_fill(dropped, 0.0)
        total, kept = weights.sum(-1, keepdim=True), w.sum(-1, keepdim=True)
        w = torch.where(kept > 0, w * (total / kept.clamp_min(1e-12)), w)
        # a dropped pick points at the token's first kept slot (weight 0), so kernels never see a sentinel
        first = torch.argmax((~dropped).int(), dim=-1, keepdim=True)
        fill = torch.gather(slot, -1, first)
        slot = torch.where(dropped, fill, slot).clamp_min(0)
        return slot, w.to(weights.dtype)

    def _reroute(self, slot: torch.Tensor, weights: torch.Tensor, dropped: torch.Tensor):
        """Tokens with a dropped pick choose top-k among the resident experts from the router's own logits,
        as the router-sliced (pruned) model would: with renormalised top-k (norm_topk_prob) this equals the
        pruned router exactly, so a missing expert never costs more than pruning. Softmax-top-k routers only."""
        rows = dropped.any(-1)
        probs = self._logits.reshape(-1, self.num_experts)[rows].float().softmax(-1)
        probs = probs.masked_fill(self.slot_of < 0, 0.0)
        w, e = probs.topk(slot.shape[-1], dim=-1)
        if self.renormalise:
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        slot, weights = slot.clone(), weights.clone()
        slot[rows] = self.slot_of[e]
        weights[rows] = w.to(weights.dtype)
        return slot, weights

    def keep_logits(self, module, args, output) -> None:
        """Forward hook on the router: remember its logits for re-routing."""
        self._logits = output[0].detach()

    def _drain(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Picks (E,) and router weight (E,) per expert, and tokens, of the forwards since the last call."""
        if not self._pending:
            return torch.zeros(self.num_experts, dtype=torch.long), torch.zeros(self.num_experts), 0
        idx = torch.cat([p[0].reshape(-1, p[0].shape[-1]) for p in self._pending])
        w = torch.cat([p[1].reshape(-1, p[1].shape[-1]) for p in self._pending])
        self._pending = []
        flat = idx.reshape(-1)
        picks = torch.bincount(flat, minlength=self.num_experts)
        mass = torch.bincount(flat, weights=w.reshape(-1).double(), minlength=self.num_experts)
        return picks, mass, idx.shape[0]

    def flush_stats(self) -> tuple[torch.Tensor, int]:
        """Fold the pending picks into hit / redirect / drop totals for the current tables; returns the
        demanded router weight per expert (E,) and the token count, for the manager."""
        picks, mass, tokens = self._drain()
        resident = self.slot_of >= 0
        redirected = ~resident & (self._route >= 0)
        self.stats.picks += int(picks.sum())
        self.stats.hits += int(picks[resident].sum())
        self.stats.redirects += int(picks[redirected].sum())
        self.stats.drops += int(picks[~resident & ~redirected].sum())
        return mass, tokens

    def count_pruned(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        """prune: the sliced router only picks resident experts; count them (every pick is a hit)."""
        self.stats.picks += index.numel()
        self.stats.hits += index.numel()

    # ---- lru: load on demand ----------------------------------------------------------------------------
    def ensure_loaded(self, experts: list[int]) -> None:
        """Make `experts` resident (one step's demand), loading misses through the cache's eviction rule."""
        for load in self.cache.request(experts):
            if load.evicted is not None:
                self.slot_of[load.evicted] = -1
            self._load(load.expert, load.slot)

    def _load(self, expert: int, slot: int) -> None:
        seconds = self.writer.load(expert, slot)
        self.slot_of[expert] = slot
        self.stats.loads += 1
        self.stats.bytes_loaded += self.writer.bytes_per_expert
        self.stats.load_seconds += seconds

    # ---- lightmoe: coarse swaps ---------------------------------------------------------------------------
    def checkpoint(self) -> Swap | None:
        """At a request boundary or every N tokens: let the manager swap experts if the task has shifted."""
        if self.mode != "static":
            return None
        mass, tokens = self.flush_stats()
        if self.manager is None:
            return None
        if tokens:
            self.manager.observe(mass.numpy(), tokens)
        swap = self.manager.decide()
        if swap is None:
            return None
        t0, loaded_bytes = time.perf_counter(), 0
        for old, new in zip(swap.evict, swap.load, strict=True):
            slot = int(self.slot_of[old])
            self.slot_of[old] = -1
            self._load(new, slot)
            loaded_bytes += self.writer.bytes_per_expert
        self.set_redirect_for_residents()
        self.swaps.append(SwapRecord(self.layer_index, swap.token, swap.evict, swap.load, loaded_bytes,
                                     time.perf_counter() - t0))
        return swap

    def set_redirect_for_residents(self) -> None:
        if self.similarity is None:
            table = np.where(self.slot_of.numpy() >= 0, np.arange(self.num_experts), DROP)
        else:
            table = redirect_table(self.similarity, self.resident, self.min_similarity)
        self.redirect = torch.as_tensor(table, dtype=torch.long)
        self._rebuild_route()


def lru_forward(layer: ManagedLayer, experts: torch.nn.Module):
    """A forward for an lru-managed experts module: tokens in order, grouped so each group's experts fit the
    slots; misses are loaded before the group runs (the token waits for the load)."""
    base = type(experts).forward

    def forward(hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor):
        idx = top_k_index.long()
        layer.stats.picks += idx.numel()
        out = torch.zeros_like(hidden_states)
        start, group = 0, set()
        rows = idx.tolist()
        for t, row in enumerate(rows + [None]):
            if row is not None and len(group | set(row)) <= layer.slots:
                group |= set(row)
                continue
            if t > start:
                ensure = sorted(group)
                resident_before = {e for e in ensure if int(layer.slot_of[e]) >= 0}
                layer.ensure_loaded(ensure)
                block = idx[start:t]
                hits = int(sum(int(e) in resident_before for e in block.reshape(-1).tolist()))
                layer.stats.hits += hits
                layer.stats.misses += block.numel() - hits
                out[start:t] = base(experts, hidden_states[start:t], layer.slot_of[block],
                                    top_k_weights[start:t])
            start, group = t, set(row) if row is not None else set()
        return out

    return forward
