"""The data side of a managed MoE layer: a fixed pool of expert slots, the expert -> slot table, one stats record.

Why apart from the strategies (as mixtral-offloading separates its cache from the kernels): every strategy needs
the same three things — which expert sits in which slot, a way to copy an expert's weights into a slot, and
counts of what happened — and only these objects move data or hold counts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from lightmoe_cli.bundle.artifact import ExpertLayout, ExpertStore


@dataclass
class LayerStats:
    picks: int = 0  # token x top-k selections the router made
    hits: int = 0  # picks whose expert was resident
    redirects: int = 0  # picks sent to another resident expert
    drops: int = 0  # picks of missing experts with no similar resident: dropped, or the token re-routed
    misses: int = 0  # picks whose expert had to be loaded first (on-demand)
    stalls: int = 0  # forward steps that waited for a load (on-demand); background loading never stalls
    evictions: int = 0  # experts a load replaced
    rejected: int = 0  # background reads finished but not installed (their expert was not wanted enough)
    loads: int = 0  # experts copied into a slot (on-demand misses, manager swaps)
    bytes_loaded: int = 0
    load_seconds: float = 0.0
    flips: int = 0  # double buffering: experts swapped in by index from the spare row (no copy on the main thread)
    prefetch_reads: int = 0  # prefetch reads finished (installed or not): the bytes prefetch moved
    prefetch_hits: int = 0  # picks served by an expert that was resident only because a prefetch brought it

    def rates(self) -> dict[str, float]:
        picks = max(1, self.picks)
        return {"hit_rate": self.hits / picks, "redirect_rate": self.redirects / picks,
                "drop_rate": self.drops / picks, "miss_rate": self.misses / picks}


@dataclass
class SwapRecord:
    layer_index: int
    token: int
    evicted: list[int]
    loaded: list[int]
    bytes: int
    seconds: float


class SlotWriter:
    """Copies one expert's weights from the store into one slot of the layer's expert pool (the only data mover).

    Through the adapter (`write_slot`), because only it knows where a family keeps the pool: fused parameters
    of the experts module for most, views of 2D parameters (DBRX), or projection submodules (JetMoE)."""

    def __init__(self, adapter, layer, layout: ExpertLayout, store: ExpertStore):
        self.adapter, self.layer, self.layout, self.store = adapter, layer, layout, store
        self.layer_index = layer.layer_index
        self.bytes_per_expert = layout.bytes

    @property
    def experts(self) -> torch.nn.Module:
        return self.layer.experts

    def pool(self) -> dict[str, torch.Tensor]:
        """Name -> the pool tensor [slots, ...] (a view where the family stores it otherwise), for checks."""
        return self.adapter.expert_tensors(self.layer)

    @torch.no_grad()
    def load(self, expert: int, slot: int) -> float:
        t0 = time.perf_counter()
        self.write(self.store.read(self.layer_index, expert), slot)
        return time.perf_counter() - t0

    @torch.no_grad()
    def write(self, flat: torch.Tensor, slot: int) -> None:
        """One expert's flat stored weights into one slot."""
        self.adapter.write_slot(self.layer, slot, self.layout.split(flat))


class SlotPool:
    """Which expert lives in which slot (`slot_of`, on the model's device) and the loads that change it.

    `extra` router ids past the experts (E .. E+extra-1: zero-compute / skip experts, no weights) are fixed:
    id E+j always runs as slot `slots + j`, the row the experts module keeps for it past the pool."""

    def __init__(self, num_experts: int, slots: int, writer: SlotWriter, device: torch.device | str,
                 extra: int = 0):
        self.num_experts, self.slots, self.writer, self.extra = num_experts, slots, writer, extra
        self.slot_of = torch.full((num_experts,), -1, dtype=torch.long, device=device)  # (E,) slot or -1
        self.extra_slots = torch.arange(slots, slots + extra, dtype=torch.long, device=device)  # (extra,)
        self.stats = LayerStats()

    def with_extra(self, table: torch.Tensor) -> torch.Tensor:
        """An (E,) expert -> slot table extended to every router id (E + extra,); the table itself if none."""
        return torch.cat([table, self.extra_slots]) if self.extra else table

    @property
    def resident(self) -> list[int]:
        return sorted(int(e) for e in torch.nonzero(self.slot_of >= 0).flatten())

    def fill(self, resident: list[int]) -> None:
        """Initial fill: the j-th resident into slot j (not counted as run-time loading)."""
        for slot, expert in enumerate(resident):
            self.writer.load(expert, slot)
            self.slot_of[expert] = slot

    def load(self, expert: int, slot: int) -> None:
        """Copy `expert` into `slot` (whoever was there is no longer resident) and count it."""
        seconds = self.writer.load(expert, slot)
        self.slot_of[self.slot_of == slot] = -1
        self.slot_of[expert] = slot
        self.stats.loads += 1
        self.stats.bytes_loaded += self.writer.bytes_per_expert
        self.stats.load_seconds += seconds

    def install(self, expert: int, slot: int, flat: torch.Tensor, read_seconds: float) -> None:
        """Write an expert already read (by the background loader) into `slot` and count it."""
        self.writer.write(flat, slot)
        self.slot_of[self.slot_of == slot] = -1
        self.slot_of[expert] = slot
        self.stats.loads += 1
        self.stats.bytes_loaded += self.writer.bytes_per_expert
        self.stats.load_seconds += read_seconds

    def flip(self, expert: int, row: int, read_seconds: float, count: bool = True) -> None:
        """Double buffering: `expert`, already written into the free `row` by the loader thread, becomes resident
        there by a table entry (no copy); `count`: a run-time load (False: a rejected read kept as the standby)."""
        self.slot_of[expert] = row
        if count:
            self.stats.loads += 1
            self.stats.flips += 1
            self.stats.bytes_loaded += self.writer.bytes_per_expert
            self.stats.load_seconds += read_seconds

    def evict(self, expert: int) -> int:
        """Mark `expert` not resident; returns the slot it freed."""
        slot = int(self.slot_of[expert])
        self.slot_of[expert] = -1
        self.stats.evictions += 1
        return slot
