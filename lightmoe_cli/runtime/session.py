"""The serving session over an assembled model: request boundaries, task switches and both swap managers.

Why one place: a managed bundle moves experts either per layer (the incremental manager inside each `Remap`
strategy, asked at every check point) or across layers at request boundaries (the task-jump manager, which
reads every layer's demand). Both are driven from `Runtime.checkpoint`; `use_task` is the task-given switch.
The model itself is built by runtime/loader.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lightmoe_cli.bundle.artifact import Bundle, ExpertStore
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.runtime.strategies import LayerStrategy, Remap

if TYPE_CHECKING:
    from lightmoe_cli.policies.jump import TaskJump


@dataclass
class Runtime:
    model: nn.Module
    tokenizer: object
    bundle: Bundle
    layers: list[LayerStrategy]
    store: ExpertStore
    check_every: int = 64
    handles: list = field(default_factory=list)
    jump: TaskJump | None = None  # the cross-layer task-jump manager (ManagerParams.mode == "jump")
    max_swap: int | None = None  # experts a jump may move per layer per boundary
    _demand: dict = field(default_factory=dict)  # jump: layer -> (E,) demand since the last boundary
    _tokens: int = 0
    _clock: int = 0
    loader: object | None = None  # the background expert loader (Serving.BACKGROUND, or --manager-loads background)
    prefetcher: object | None = None  # predictor-driven prefetch (the `predict` policy)
    # sets beyond the bundle's own per-task ones (a server's task groups): name -> (layer -> residents,
    # layer -> the mass a move ranks by)
    shared_sets: dict[str, tuple[dict[int, list[int]], dict[int, np.ndarray]]] = field(default_factory=dict)

    def close(self) -> None:
        """Stop the background loader, if any (its thread is a daemon: a forgotten close costs nothing)."""
        if self.loader is not None:
            self.loader.close()

    def checkpoint(self, boundary: bool = True) -> int:
        """A check point (`boundary`: between requests): managers may swap; returns how many layers swapped.
        The task-jump manager decides at request boundaries only, on the demand since the last one."""
        if boundary and self.prefetcher is not None:
            self.prefetcher.reset()
        if self.jump is None:
            return sum(1 for m in self.layers if m.checkpoint() is not None)
        seen = 0
        for m in self.layers:
            mass, tokens = m.demand()
            self._demand[m.layer_index] = self._demand.get(m.layer_index, 0) + mass
            seen = max(seen, tokens)
        self._tokens += seen
        if not boundary:
            return 0
        demand, seen, self._demand, self._tokens = self._demand, self._tokens, {}, 0
        self._clock += seen
        decision = self.jump.decide(demand, seen, {m.layer_index: m.managed() for m in self.layers})
        target = self.jump.target_sets(decision) if decision else None
        return self._move_to(target, decision.task, self.max_swap) if target else 0

    def use_task(self, task: str) -> int:
        """Serve the next requests with `task`'s own resident set (a bundle whose policy is told the task);
        returns how many layers swapped."""
        man = self.bundle.manifest
        sets = {t: (r, man.task_signatures.get(t, {})) for t, r in man.task_resident.items()} | self.shared_sets
        if not all(isinstance(m, Remap) for m in self.layers):
            raise LightMoEError(f"a {self.bundle.policy} bundle cannot switch resident sets by task")
        if task not in sets:
            raise LightMoEError(f"bundle has no resident set for task {task!r}; tasks: {', '.join(sorted(sets))}")
        for m in self.layers:
            m.demand()  # fold the counts under the set they were served with
        return self._move_to(sets[task][0], task, None, sets[task][1])

    def _move_to(self, target: dict[int, list[int]], task: str, max_swap: int | None,
                 signatures: dict | None = None) -> int:
        from lightmoe_cli.policies.jump import moves_toward

        if signatures is None:
            signatures = self.bundle.manifest.task_signatures.get(task, {})
        moved = 0
        for m in self.layers:
            priority = np.asarray(signatures.get(m.layer_index, np.zeros(m.num_experts)))
            evict, load = moves_toward(m.managed(), target[m.layer_index], priority, max_swap)
            moved += m.move(evict, load, self._clock) is not None
        return moved

    def finish(self) -> None:
        """Fold pending per-expert counts into the statistics (without a swap decision)."""
        for m in self.layers:
            m.finish()

    def resident_expert_bytes(self) -> int:
        return sum(m.slots * m.writer.bytes_per_expert + m.lowrank_bytes for m in self.layers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device
