"""How the runtime serves one MoE layer, one small class per `Serving` kind the policies can ask for.

- `PrunedRouter`: the router is sliced to the resident experts (keep_experts on the skeleton); every pick is
  a hit. Static pruning.
- `Remap`: the router stays whole, so every forward tells us which experts the tokens wanted (demand); a
  pre-hook turns expert ids into slot ids — a resident pick runs in its slot, a missing one goes to its
  redirect target's slot (router weight kept), is re-routed among the residents (as the pruned router would),
  or is dropped (weight 0, renormalised). With a `LayerManager` it swaps experts at check points.
- `OnDemand`: the router stays whole; missing experts are loaded from the store before the tokens continue,
  evicting by the cache rule; tokens run in groups whose experts fit the slots (the experts module's class
  becomes a generated subclass, as torch's parametrize does it; no forward is patched from outside).

The experts module keeps its own class and kernel (grouped_mm by default); only its fused parameters shrink to
[slots, ...]. Data movement is `SlotPool`'s; the strategies hold bookkeeping and routing only.
"""

from __future__ import annotations

import functools
import time
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lightmoe_cli.models.routing import serving_class
from lightmoe_cli.policies.activation import LayerActivation
from lightmoe_cli.policies.base import LayerPlan, Missing, RuntimeSpec, Serving
from lightmoe_cli.policies.cache import ExpertCache
from lightmoe_cli.policies.manager import LayerManager
from lightmoe_cli.policies.redirect import DROP, redirect_table
from lightmoe_cli.policies.region import RegionCache
from lightmoe_cli.registry import Registry
from lightmoe_cli.runtime.slots import LayerStats, SlotPool, SlotWriter, SwapRecord


class LayerStrategy:
    """Common part: the layer's slot pool, its stats and swap records; subclasses install their hooks."""

    serving: ClassVar[Serving]
    lowrank_bytes: int = 0  # memory held besides the slots (a replaced expert's low-rank terms)

    def __init__(self, layer_index: int, pool: SlotPool, plan: LayerPlan, spec: RuntimeSpec):
        self.layer_index, self.pool, self.plan, self.spec = layer_index, pool, plan, spec
        self.num_experts = plan.num_experts
        self.swaps: list[SwapRecord] = []
        self.activation: LayerActivation | None = None  # an activation budget (fewer experts per token)
        # called with (strategy, top_k_index, top_k_weights) as the router chose them, before any remap: the
        # server's quality meter and its task probe read the real routing here (never recomputed)
        self.observers: list = []

    def observe(self, index: torch.Tensor, weights: torch.Tensor) -> None:
        for fn in self.observers:
            fn(self, index, weights)

    def served_table(self) -> torch.Tensor | None:
        """(E + extra,) float, 1 where a router id runs on its own expert, 0 where it is re-routed or dropped;
        None when this strategy cannot tell (a sliced router never sees the experts it lost). A table, not a
        per-call mask, so the server's meter reads every layer with one gather per forward."""
        return None

    def activate(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing after the bundle's activation budget (unchanged without one)."""
        return (index, weights) if self.activation is None else self.activation.apply(index, weights)

    def _select(self, index: torch.Tensor, weights: torch.Tensor):
        if self.activation is None:
            return index, weights, None
        return self.activation.select(index, weights)

    @property
    def sentinel(self) -> int:
        """The experts kernel's "no expert" id: one past the pool (skipped once `_is_expert_parallel`)."""
        return self.pool.slots + self.pool.extra
    # views used by reports and tests
    @property
    def stats(self) -> LayerStats:
        return self.pool.stats

    @property
    def slots(self) -> int:
        return self.pool.slots

    @property
    def slot_of(self) -> torch.Tensor:
        return self.pool.slot_of

    @property
    def writer(self) -> SlotWriter:
        return self.pool.writer

    @property
    def resident(self) -> list[int]:
        return self.pool.resident

    def managed(self) -> set[int]:
        """The experts a manager may move (every resident; a cache with a pinned core: the core)."""
        return set(self.resident)

    def install(self, adapter, layer) -> list:
        """Attach to the model's MoE layer; returns removable hook handles."""
        return []

    def checkpoint(self) -> SwapRecord | None:
        """A request boundary or every N tokens: fold counts; a strategy with a manager may swap here."""
        return None

    def finish(self) -> None:
        """Fold pending counts into the statistics (no swap decision)."""


class PrunedRouter(LayerStrategy):
    serving = Serving.PRUNED_ROUTER

    def install(self, adapter, layer) -> list:
        return [adapter.add_routing_hook(layer, self.count)]

    def count(self, index: torch.Tensor, weights: torch.Tensor):
        """The sliced router only picks resident experts: every pick is a hit."""
        if self.observers:
            self.observe(index, weights)
        if self.activation is None:
            self.stats.picks += index.numel()
            self.stats.hits += index.numel()
            return None
        index, weights, dropped = self._select(index, weights)
        runs = index.numel() - (int(dropped.sum()) if dropped is not None else 0)
        self.stats.picks += runs
        self.stats.hits += runs
        if dropped is not None:
            index = index.masked_fill(dropped, self.sentinel)
        return index, weights


class Remap(LayerStrategy):
    """Whole router, table lookup expert -> slot; optional task-aware manager."""

    serving = Serving.REMAP

    def __init__(self, layer_index: int, pool: SlotPool, plan: LayerPlan, spec: RuntimeSpec,
                 similarity: np.ndarray | None = None, manager: LayerManager | None = None,
                 renormalise: bool = True, move_loader=None):
        super().__init__(layer_index, pool, plan, spec)
        # when set: the manager's swaps are read on this background loader and land at a later forward (no
        # stall at the request boundary); until then the evicted expert keeps serving
        self.move_loader = move_loader
        self._moves: dict[int, tuple[int, int]] = {}  # expert being read -> (resident it replaces, token)
        device = pool.slot_of.device
        self.redirect = torch.tensor(plan.redirect, dtype=torch.long, device=device)  # (E,) target or DROP
        self.similarity = similarity
        self.min_similarity = spec.min_similarity if spec.min_similarity is not None else -np.inf
        self.manager = manager
        self.reroute = spec.missing == Missing.REROUTE
        self.renormalise = renormalise  # the router renormalises its top-k weights (norm_topk_prob)
        self._logits: torch.Tensor | None = None  # (T, W) the router's logits of the current forward, W >= E
        self._router_logits = None  # the adapter's reader of the logits from the router's output (install)
        self._pending: list = []  # (ids, weights, tokens) of forwards since the last check point
        self._arange = torch.arange(self.num_experts, device=device)
        self._bought: torch.Tensor | None = None  # (E,) CPU: resident only thanks to a prefetch (Background)
        self._rebuild_route()

    def install(self, adapter, layer) -> list:
        handles = []
        if self.reroute:
            # before the routing hook: families that route in a hook on the router (Llama 4, JetMoE) need this
            # forward's logits, not the previous one's
            self._router_logits = functools.partial(adapter.router_logits, layer)
            handles.append(layer.router.register_forward_hook(self.keep_logits))
        return [*handles, adapter.add_routing_hook(layer, self.route)]

    def served_table(self) -> torch.Tensor:
        return self._served

    def _rebuild_route(self) -> None:
        """Tables of the hot path, over every router id (E experts, then the pool's fixed extra ids)."""
        target, slot_of, pool = self.redirect, self.slot_of, self.pool
        route = torch.where(target >= 0, slot_of[target.clamp_min(0)], torch.full_like(target, -1))  # (E,)
        self._any_drop = bool((route < 0).any())
        self._no_redirect = bool(((target == self._arange) | (target < 0)).all())
        self._route = pool.with_extra(route)  # (E + extra,) router id -> slot, -1 dropped
        self._slot = pool.with_extra(slot_of)  # (E + extra,) router id -> its own slot, -1 missing
        self._served = (self._slot >= 0).float()
        bias = torch.where(slot_of >= 0, 0.0, float("-inf"))  # masked top-k over residents (extras always in)
        self._bias = torch.cat([bias, bias.new_zeros(pool.extra)]) if pool.extra else bias

    # ---- the hot path: a few tensor ops per layer and forward ------------------------------------------------
    def route(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, K) expert ids + router weights -> slot ids + weights (dropped picks: weight 0, renormalised)."""
        if self.observers:
            self.observe(index, weights)
        if self._moves:
            self.install_moves()
        if self.activation is not None:
            index, weights, dropped = self._select(index, weights)
            if dropped is not None:
                slot, w = self._route_all(index, weights)
                ids, ws, tokens = self._pending[-1]  # a dropped pick is no demand and no pick
                self._pending[-1] = (ids[~dropped], ws[~dropped], tokens)
                return slot.masked_fill(dropped, self.sentinel), w.masked_fill(dropped, 0.0)
        return self._route_all(index, weights)

    def _route_all(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = index.long()
        # counted at the next check point, off the per-token path
        self._pending.append((idx, weights, idx.reshape(-1, idx.shape[-1]).shape[0]))
        if not self._any_drop:
            return self._route[idx], weights
        if self.reroute and self.renormalise and self._no_redirect and self._logits is not None:
            # every missing expert is re-routed: top-k among residents from the router's logits; softmax over
            # the k kept logits = renormalised top-k probabilities (tokens with no missing pick are unchanged)
            width = self._logits.shape[-1]  # E, or E + the routable extra ids
            bias = self._bias if width == self._bias.shape[0] else self._bias[:width]
            vals, experts = (self._logits.reshape(-1, width).float() + bias).topk(idx.shape[-1])
            return self._slot[experts], vals.softmax(-1).to(weights.dtype)
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
        width = self._logits.shape[-1]  # E, or E + the routable extra ids
        probs = self._logits.reshape(-1, width)[rows].float().softmax(-1)
        probs = probs.masked_fill(self._slot[:width] < 0, 0.0)
        w, e = probs.topk(slot.shape[-1], dim=-1)
        if self.renormalise:
            w = w / w.sum(-1, keepdim=True).clamp_min(1e-12)
        slot, weights = slot.clone(), weights.clone()
        slot[rows] = self._slot[e]
        weights[rows] = w.to(weights.dtype)
        return slot, weights

    def keep_logits(self, module, args, output) -> None:
        """Forward hook on the router: remember its logits for re-routing."""
        self._logits = self._router_logits(output).detach()

    # ---- counts at check points ------------------------------------------------------------------------------
    def _drain(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Picks and router weight per router id (E,) or (E + extra ids seen,), and tokens, of the forwards since
        the last call (CPU)."""
        if not self._pending:
            return torch.zeros(self.num_experts, dtype=torch.long), torch.zeros(self.num_experts), 0
        idx = torch.cat([p[0].reshape(-1) for p in self._pending])
        w = torch.cat([p[1].reshape(-1) for p in self._pending])
        tokens = sum(p[2] for p in self._pending)
        self._pending = []
        flat = idx.reshape(-1)
        picks = torch.bincount(flat, minlength=self.num_experts)
        mass = torch.bincount(flat, weights=w.reshape(-1).double(), minlength=self.num_experts)
        return picks.cpu(), mass.cpu(), tokens

    def finish(self) -> None:
        self._fold()

    def _fold(self) -> tuple[torch.Tensor, int]:
        """Fold the pending picks into hit / redirect / drop totals for the current tables; returns the
        demanded router weight per expert (E,) and the token count, for the manager."""
        picks, mass, tokens = self._drain()
        n = self.num_experts
        extra = int(picks[n:].sum())  # picks of the weightless extra ids: always served, counted as hits
        picks, mass = picks[:n], mass[:n]
        resident = (self.slot_of >= 0).cpu()
        redirected = ~resident & (self._route[:n] >= 0).cpu()
        self.stats.picks += int(picks.sum()) + extra
        self.stats.hits += int(picks[resident].sum()) + extra
        self.stats.redirects += int(picks[redirected].sum())
        self.stats.drops += int(picks[~resident & ~redirected].sum())
        if self._bought is not None:
            self.stats.prefetch_hits += int(picks[self._bought & resident].sum())
        return mass, tokens

    def checkpoint(self) -> SwapRecord | None:
        """Let the manager swap experts if the task has shifted (never inside a forward)."""
        mass, tokens = self._fold()
        if self.manager is None:
            return None
        if tokens:
            self.manager.observe(mass.numpy(), tokens)
        swap = self.manager.decide()
        return None if swap is None else self.move(swap.evict, swap.load, swap.token)

    def demand(self) -> tuple[np.ndarray, int]:
        """Fold the counts and hand over the demanded router weight per expert (E,) and the tokens, for a
        manager that decides across layers (the task-jump manager)."""
        mass, tokens = self._fold()
        return mass.numpy(), tokens

    def move(self, evict: list[int], load: list[int], token: int = 0) -> SwapRecord | None:
        """Replace residents `evict` by experts `load` (pairwise, same slots) and retarget the tables. With a
        move loader the reads are only queued (see `install_moves`) and None is returned."""
        if not load:
            return None
        if self.move_loader is not None:
            self._queue_moves(evict, load, token)
            return None
        t0 = time.perf_counter()
        for old, new in zip(evict, load, strict=True):
            self.pool.load(new, self.pool.evict(old))
        return self._swapped(token, list(evict), list(load), t0)

    def _swapped(self, token: int, evicted: list[int], loaded: list[int], t0: float) -> SwapRecord | None:
        """After experts `loaded` replaced `evicted` (since `t0`): retarget the tables and record the swap (None
        when nothing moved)."""
        if not loaded:
            return None
        self._retarget()
        record = SwapRecord(self.layer_index, token, evicted, loaded, len(loaded) * self.writer.bytes_per_expert,
                            time.perf_counter() - t0)
        self.swaps.append(record)
        return record

    def _queue_moves(self, evict: list[int], load: list[int], token: int) -> None:
        for old, new in zip(evict, load, strict=True):
            if self.move_loader.request(self.layer_index, new):
                self._moves[new] = (old, token)
            else:  # the loader's queue is full: this move is dropped, the manager's view follows the residents
                self.stats.rejected += 1
                self._resync_manager()

    def _resync_manager(self) -> None:
        if self.manager is not None:
            self.manager.resident = set(self.resident) | set(self._moves)
            self.manager.resident -= {old for old, _ in self._moves.values()}

    def install_moves(self) -> SwapRecord | None:
        """Install the manager's swaps whose reads have finished (main thread, between kernels). A move whose
        victim is no longer resident, or whose expert already is, is counted as rejected."""
        ready = self.move_loader.take(self.layer_index)
        if not ready:
            return None
        self._fold()  # count the forwards so far under the tables they ran with
        t0, evicted, loaded, token, stale = time.perf_counter(), [], [], 0, False
        for r in ready:
            old, token = self._moves.pop(r.expert, (None, 0))
            if old is None or int(self.slot_of[old]) < 0 or int(self.slot_of[r.expert]) >= 0:
                self.stats.rejected += 1
                stale = True
                continue
            self.pool.install(r.expert, self.pool.evict(old), r.wait(), r.seconds)
            evicted.append(old)
            loaded.append(r.expert)
        _recycle(self.move_loader, ready)  # copied into their slots or dropped: the loader may reuse their buffers
        if stale:
            self._resync_manager()
        return self._swapped(token, evicted, loaded, t0)

    def _retarget(self) -> None:
        """After a swap: the redirect table follows the new resident set."""
        if self.similarity is None:
            table = np.where(self.slot_of.cpu().numpy() >= 0, np.arange(self.num_experts), DROP)
        else:
            table = redirect_table(self.similarity, self.resident, self.min_similarity)
        self.redirect = torch.as_tensor(table, dtype=torch.long, device=self.slot_of.device)
        self._rebuild_route()


class OnDemand(LayerStrategy):
    serving = Serving.ON_DEMAND

    def __init__(self, layer_index: int, pool: SlotPool, plan: LayerPlan, spec: RuntimeSpec):
        super().__init__(layer_index, pool, plan, spec)
        self.cache = ExpertCache.warm(pool.slots, spec.eviction or "lru", plan.resident)

    def install(self, adapter, layer) -> list:
        layer.experts.__class__ = serving_class(type(layer.experts), "OnDemand")
        layer.experts._lightmoe_strategy = self
        return []

    def ensure_loaded(self, experts: list[int]) -> None:
        """Make `experts` resident (one step's demand), loading misses through the cache's eviction rule."""
        for load in self.cache.request(experts):
            if load.evicted is not None:
                self.pool.evict(load.evicted)
            self.pool.load(load.expert, load.slot)

    def run(self, experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
            top_k_weights: torch.Tensor) -> torch.Tensor:
        top_k_index, top_k_weights = self.activate(top_k_index, top_k_weights)
        idx = top_k_index.long()
        self.stats.picks += idx.numel()
        out = torch.zeros_like(hidden_states)
        start, group = 0, set()
        n = self.num_experts
        # router ids past the experts (weightless, fixed rows past the pool) are never loaded
        rows = idx.tolist() if not self.pool.extra else [[e for e in r if e < n] for r in idx.tolist()]
        for t, row in enumerate(rows + [None]):
            if row is not None and len(group | set(row)) <= self.slots:
                group |= set(row)
                continue
            if t > start:
                ensure = sorted(group)
                resident_before = {e for e in ensure if int(self.slot_of[e]) >= 0}
                self.stats.stalls += len(resident_before) < len(ensure)  # this step waits for its loads
                self.ensure_loaded(ensure)
                block = idx[start:t]
                hits = int(sum(int(e) in resident_before or e >= n for e in block.reshape(-1).tolist()))
                self.stats.hits += hits
                self.stats.misses += block.numel() - hits
                out[start:t] = experts._lightmoe_base.forward(experts, hidden_states[start:t],
                                                              self.pool.with_extra(self.slot_of)[block],
                                                              top_k_weights[start:t])
            start, group = t, set(row) if row is not None else set()
        return out


def _recycle(loader, ready: list) -> None:
    """Hand a loader back the buffers of a batch of its reads: installed ones are copied into their slots by now,
    rejected ones are dropped (a loader without buffers to reuse has no `recycle`)."""
    recycle = getattr(loader, "recycle", None)
    if recycle is not None:
        for r in ready:
            recycle(r)


class Background(Remap):
    """Non-blocking swapping: a missing pick is re-routed among the residents at once (no stall) and its expert
    is queued on the background loader; a finished read is installed at the layer's next forward, evicting a
    resident of the dynamic region (every resident when nothing is pinned) chosen by the eviction rule. The
    decisions are `RegionCache`'s (policies/region.py, shared with the simulator); this class moves the data.

    With a spare row (`spec.spare_slots`, double buffering) the loader thread writes the expert into the free row
    itself and the main thread only flips the table entry (`SlotPool.flip`): one read in flight per layer, no
    expert copied on the critical path. With a manager (task-aware composed with a region) the manager moves the
    pinned core, the cache keeps the region. Counts: `drops` = picks re-routed while their expert was not
    resident, `loads` = experts installed (`flips` of them by index), `rejected` = reads finished but not
    admitted, `prefetch_reads` / `prefetch_hits` = what prefetch moved and what it bought."""

    serving = Serving.BACKGROUND

    def __init__(self, layer_index: int, pool: SlotPool, plan: LayerPlan, spec: RuntimeSpec, loader,
                 renormalise: bool = True, manager: LayerManager | None = None):
        super().__init__(layer_index, pool, plan, spec, renormalise=renormalise, manager=manager)
        self.loader = loader
        spare = spec.spare_slots or 0
        self.cache = RegionCache(self.num_experts, set(plan.resident), set(plan.pinned), spec.eviction or "lru",
                                 spec.admission or "always", spec.decay if spec.decay is not None else 0.9,
                                 spare=bool(spare), read_budget=spec.read_budget)
        self.spare = list(range(len(plan.resident), len(plan.resident) + spare))  # free rows (double buffering)
        if spare:
            if len(self.spare) != 1 or pool.slots != len(plan.resident) + 1:
                raise ValueError(f"layer {layer_index}: double buffering needs exactly one spare row past the "
                                 f"{len(plan.resident)} residents; the pool has {pool.slots} rows")
            loader.stage(layer_index, self._stage)
        self._prefetching: set[int] = set()  # reads the prefetcher started, not finished yet
        self._bought = torch.zeros(self.num_experts, dtype=torch.bool)  # resident only thanks to a prefetch
        self.log: list[list[int]] | None = None  # when a list: the resident set each forward ran with (tests)
        self.core_moves: list[tuple[int, list[int], list[int]]] = []  # (forwards served, evict, load) per move
        self._deferred: list[int] = []  # reads this forward's demand asks for, started once its experts ran

    def install(self, adapter, layer) -> list:
        """Besides the routing hook: a hook after the experts run, where this forward's reads start, so the spare
        row's standby serves the forward that asked for them and is unmapped only between forwards."""
        from lightmoe_cli.models.adapter import LIGHTMOE_HOOK

        def after(module, args, output) -> None:
            wanted, self._deferred = self._deferred, []
            for e in wanted:
                self.want(e)

        setattr(after, LIGHTMOE_HOOK, True)
        return [*super().install(adapter, layer), layer.experts.register_forward_hook(after)]

    def managed(self) -> set[int]:
        return set(self.cache.pinned) if self.cache.pinned else set(self.resident)

    def route(self, index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.install_ready()
        if self.log is not None:
            self.log.append(self.resident)
        flat = index.reshape(-1).long()
        counts = torch.bincount(flat[flat < self.num_experts], minlength=self.num_experts).cpu().numpy()
        tokens = index.reshape(-1, index.shape[-1]).shape[0]
        self._deferred = self.cache.observe(counts, tokens)  # read once the experts have run (`install`'s hook)
        return super().route(index, weights)

    def want(self, expert: int, prefetch: bool = False) -> bool:
        """Start reading `expert` unless it is resident, already coming, or the layer's reads are at their limit
        (the spare row is taken); False when no read started. With a spare row the standby expert in it is
        unmapped first, so the loader thread never writes a row a route points at."""
        expert = int(expert)
        if expert in self.cache.inflight or expert in self.cache.resident or self.cache.room() == 0:
            return False
        dropped = self.cache.started(expert)
        if dropped is not None:
            self._fold()  # the forwards so far ran with the standby mapped
            self.pool.evict(dropped)
            self._bought[dropped] = False
            self._retarget()
        if not self.loader.request(self.layer_index, expert):
            self.cache.refused(expert, dropped)
            if dropped is not None:  # nothing was written: the standby is still in the spare row
                self.pool.slot_of[dropped] = self.spare[0]
                self._retarget()
            return False
        if prefetch:
            self._prefetching.add(expert)
        return True

    def _stage(self, expert: int, flat: torch.Tensor) -> int:
        """Loader thread: write a finished read into the free row (no route points at it); returns the row."""
        row = self.spare[0]
        self.writer.write(flat, row)
        return row

    def install_ready(self) -> SwapRecord | None:
        """Install the experts the loader finished for this layer (main thread, between kernels)."""
        ready = self.loader.take(self.layer_index)
        if not ready:
            return None
        by_expert = {r.expert: r for r in ready}
        bought = self._prefetching & set(by_expert)
        self._prefetching -= set(by_expert)
        self.stats.prefetch_reads += len(bought)
        rejected = self.cache.rejected
        installs = self.cache.admit([r.expert for r in ready], bought)
        self.stats.rejected += self.cache.rejected - rejected
        kept = by_expert.get(self.cache.standby) if not installs else None  # a rejected read left in the spare row
        if kept is not None and (kept.row is None or int(self.slot_of[kept.expert]) >= 0):
            kept = None
        if not installs and kept is None:
            _recycle(self.loader, ready)
            return None
        self._fold()  # count the forwards so far under the tables they ran with
        t0 = time.perf_counter()
        if kept is not None:  # not installed, but it is in the spare row: it serves as the standby until claimed
            self.pool.flip(kept.expert, kept.row, kept.seconds, count=False)
            self._retarget()
        for e, victim in installs:
            r = by_expert[e]
            if r.row is not None:  # double buffering: in the spare row already, one table entry; the victim
                self.pool.flip(e, r.row, r.seconds)  # stays in its row as the standby, now the spare
                self.spare = [int(self.slot_of[victim])]
            else:
                self.pool.install(e, self.pool.evict(victim), r.wait(), r.seconds)
            self._bought[victim] = False
            self._bought[e] = e in bought
        _recycle(self.loader, ready)
        return self._swapped(self.cache.clock, [v for _, v in installs], [e for e, _ in installs], t0)

    def move(self, evict: list[int], load: list[int], token: int = 0) -> SwapRecord | None:
        """A manager moves the pinned core (blocking reads at a check point); a loaded expert already in the
        region is promoted without I/O (`RegionCache.repin`)."""
        if not load:
            return None
        self._fold()
        t0 = time.perf_counter()
        standby = self.cache.release()  # the spare row is a spare again: the core move may not use it
        if standby is not None:
            self.pool.evict(standby)
            self._bought[standby] = False
        evict = [e for e in evict if e != standby]
        load = load[:len(evict)]
        self.core_moves.append((self.cache.clock, list(evict), list(load)))
        reads = self.cache.repin(list(evict), list(load))
        for new, old in reads:
            self.pool.load(new, self.pool.evict(old))
            self._bought[old] = False
        return self._swapped(token, [o for _, o in reads], [n for n, _ in reads], t0)


class Replaced(LayerStrategy):
    """Expert replacing: kept experts run in their slots through the module's own kernel; a replaced expert keeps
    its router id and runs as its base expert's slot + its own low-rank term (`replace.lowrank`), never as full
    weights. Counts: `hits` = picks of kept experts, `redirects` = picks served by a replacement."""

    serving = Serving.REPLACE

    def __init__(self, layer_index: int, pool: SlotPool, plan: LayerPlan, spec: RuntimeSpec, factors=None):
        super().__init__(layer_index, pool, plan, spec)
        kept = set(plan.resident)
        self.base = {e: t for e, t in enumerate(plan.redirect) if e not in kept}
        self.factors = factors  # replace.lowrank.Factors, or None (naive replacing: the base alone)
        self.lowrank_bytes = 0 if factors is None else \
            sum(p.numel() * p.element_size() for p in factors.parameters())
        device = pool.slot_of.device
        replaced = torch.zeros(self.num_experts, dtype=torch.bool, device=device)
        replaced[list(self.base)] = True
        self._replaced = torch.cat([replaced, replaced.new_zeros(pool.extra)])  # extra ids run in their own rows
        self._slot = pool.with_extra(torch.where(replaced, 0, pool.slot_of))
        self._row_of = {e: int(pool.slot_of[b]) for e, b in self.base.items()}

    def install(self, adapter, layer) -> list:
        from lightmoe_cli.replace.lowrank import check_supported

        check_supported(layer.experts, f"layer {self.layer_index}")
        layer.experts.__class__ = serving_class(type(layer.experts), "Replaced")
        layer.experts._lightmoe_strategy = self
        return []

    def run(self, experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
            top_k_weights: torch.Tensor) -> torch.Tensor:
        from lightmoe_cli.replace.lowrank import replaced_output

        index, weights = self.activate(top_k_index, top_k_weights)
        idx = index.long()
        rep = self._replaced[idx]
        out = experts._lightmoe_base.forward(experts, hidden_states, self._slot[idx], weights.masked_fill(rep, 0))
        n_rep = int(rep.sum())
        self.stats.picks += idx.numel()
        self.stats.hits += idx.numel() - n_rep
        self.stats.redirects += n_rep
        if n_rep:
            out = out + replaced_output(experts, hidden_states, idx, weights, self._row_of, self.factors)
        return out


# keyed by the `Serving` value, and indexed by the member (`STRATEGIES[spec.serving]`). No entry point group: the
# loader builds each strategy with its own arguments, so a strategy from outside could not be constructed.
STRATEGIES: Registry[type[LayerStrategy]] = Registry("strategy", base=LayerStrategy)
for _cls in (PrunedRouter, Remap, OnDemand, Background, Replaced):
    STRATEGIES.register(_cls.serving.value, _cls)
