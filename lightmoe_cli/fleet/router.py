"""Which replica serves a request (pure: no clock, no I/O; the ingress and the simulator drive the same objects).

Why affinity: a replica serves a request with that request's task set either way (its task scheduler moves the
set), but every task it sees splits its batches and costs moves. So tasks are assigned to replicas by load
(`assign`): a hot task gets several replicas, cold tasks share one, and a request goes to the least-busy
replica of its task. Two things keep that from hurting: past `queue_bound` requests in flight on every replica
of its task, a request goes to the least-busy replica instead when that one has at least half a bound fewer (no
replica overflows while another idles); and every `rebalance_every` requests the assignment is recomputed from
a decayed count of recent requests, but only when the current one has drifted past `slack` of an even load,
and keeping each task where it was where the load allows. Every (task, replica) pair added after the
first assignment is a reassignment, and is counted.

`RoundRobinRouter` is the baseline a plain load balancer gives: every replica sees every task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.registry import Registry


@dataclass(frozen=True)
class Assignment:
    """task -> the replicas (indices) that serve it."""

    replicas_of: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def tasks_of(self, replica: int) -> list[str]:
        return sorted(t for t, rs in self.replicas_of.items() if replica in rs)

    def pairs(self) -> set[tuple[str, int]]:
        return {(t, r) for t, rs in self.replicas_of.items() for r in rs}


def moves(old: Assignment, new: Assignment) -> int:
    """(task, replica) pairs the new assignment adds: each is a replica that starts serving a task."""
    return len(new.pairs() - old.pairs())


def imbalance(assignment: Assignment, load: Mapping[str, float], live: Sequence[int]) -> float:
    """The busiest live replica's share of the load over an even share (1.0: even; inf: a task has no live
    replica). A task's load is split evenly over its replicas."""
    live = set(live)
    total = sum(load.values())
    if not live or total <= 0:
        return 1.0
    held = dict.fromkeys(live, 0.0)
    for t, v in load.items():
        rs = [r for r in assignment.replicas_of.get(t, ()) if r in live]
        if not rs:
            return math.inf
        for r in rs:
            held[r] += v / len(rs)
    return max(held.values()) / (total / len(live))


def assign(load: Mapping[str, float], live: Sequence[int], previous: Assignment | None = None,
           slack: float = 0.25) -> Assignment:
    """Tasks onto live replicas by load.

    Each task is cut into units (a hot task into several: about load / (total / replicas), and while a replica
    would stay empty the task with the largest load per unit gets one more), then the units are placed heaviest
    first on the least-loaded replica that does not hold the task yet. A replica that held the task before keeps
    it while its load stays within `slack` of an even share, so a small change of mix moves nothing."""
    live = sorted(live)
    tasks = sorted(load, key=lambda t: (-load[t], t))
    if not live or not tasks:
        return Assignment({})
    k = len(live)
    total = sum(max(v, 0.0) for v in load.values())
    if total <= 0:
        load, total = {t: 1.0 for t in tasks}, float(len(tasks))
    target = total / k
    units = {t: min(k, max(1, round(load[t] / target))) for t in tasks}
    while sum(units.values()) < k:
        t = max(tasks, key=lambda t: (load[t] / units[t] if units[t] < k else -1.0, -tasks.index(t)))
        if units[t] >= k:
            break
        units[t] += 1
    pieces = sorted(((load[t] / units[t], t) for t in tasks for _ in range(units[t])), key=lambda p: (-p[0], p[1]))
    held: dict[int, float] = {r: 0.0 for r in live}
    out: dict[str, list[int]] = {t: [] for t in tasks}
    before = previous.replicas_of if previous else {}
    for size, t in pieces:
        free = [r for r in live if r not in out[t]]
        least = min(free, key=lambda r: (held[r], r))
        sticky = [r for r in before.get(t, ()) if r in free
                  and held[r] + size <= max(target * (1 + slack), held[least] + size)]
        r = min(sticky, key=lambda r: (held[r], r)) if sticky else least
        out[t].append(r)
        held[r] += size
    return Assignment({t: tuple(sorted(rs)) for t, rs in out.items()})


@dataclass(frozen=True)
class Decision:
    replica: int | None  # None: no replica is live (the ingress answers 503)
    reason: str  # "affinity" | "overflow" | "any" (unknown task) | "round-robin" | "none"


class Router:
    """The bookkeeping both routers share: requests in flight per replica, which replicas are live, counts."""

    name = "base"
    task_aware = False

    def __init__(self, replicas: int, tasks: Sequence[str] = (), queue_bound: int = 16):
        if replicas < 1:
            raise LightMoEError(f"a fleet needs at least 1 replica, not {replicas}")
        self.replicas, self.queue_bound = replicas, queue_bound
        self.tasks = list(tasks)
        self.inflight = [0] * replicas
        self.live = set(range(replicas))
        self.routed = [0] * replicas
        self.reasons: dict[str, int] = {}
        self.reassignments = 0

    def route(self, task: str | None) -> Decision:
        d = self._choose(task)
        self.reasons[d.reason] = self.reasons.get(d.reason, 0) + 1
        if d.replica is not None:
            self.inflight[d.replica] += 1
            self.routed[d.replica] += 1
        return d

    def _choose(self, task: str | None) -> Decision:
        raise NotImplementedError

    def done(self, replica: int) -> None:
        """A request routed to `replica` finished (answered, failed or moved elsewhere)."""
        self.inflight[replica] = max(self.inflight[replica] - 1, 0)

    def least_busy(self, among: Sequence[int] | None = None) -> int | None:
        cands = [r for r in (self.live if among is None else among) if r in self.live]
        return min(cands, key=lambda r: (self.inflight[r], self.routed[r], r)) if cands else None

    def down(self, replica: int) -> None:
        self.live.discard(replica)

    def up(self, replica: int) -> None:
        self.live.add(replica)

    def state(self) -> dict:
        return {"router": self.name, "live": sorted(self.live), "inflight": list(self.inflight),
                "routed": list(self.routed), "reasons": dict(self.reasons), "reassignments": self.reassignments}


class RoundRobinRouter(Router):
    """Every live replica in turn, whatever the task (a plain load balancer)."""

    name = "round-robin"

    def __init__(self, replicas: int, tasks: Sequence[str] = (), queue_bound: int = 16, **_: object):
        super().__init__(replicas, tasks, queue_bound)
        self._next = 0

    def _choose(self, task: str | None) -> Decision:
        for i in range(self.replicas):
            r = (self._next + i) % self.replicas
            if r in self.live:
                self._next = r + 1
                return Decision(r, "round-robin")
        return Decision(None, "none")


class AffinityRouter(Router):
    """Each task to the least-busy replica of the ones assigned to it; see the module docstring."""

    name = "affinity"
    task_aware = True

    def __init__(self, replicas: int, tasks: Sequence[str] = (), queue_bound: int = 16,
                 rebalance_every: int | None = None, half_life: float | None = None, slack: float = 0.25):
        super().__init__(replicas, tasks, queue_bound)
        # the load estimate needs a few requests per replica to be more than noise: both scale with the fleet
        self.rebalance_every = rebalance_every or max(32, 4 * replicas)
        half_life = half_life or max(64.0, 16.0 * replicas)
        self.slack = slack
        self.decay = 0.5 ** (1.0 / half_life)  # per request: a request `half_life` requests ago counts half
        self.load: dict[str, float] = {t: 1.0 for t in self.tasks}  # a uniform prior until traffic says more
        self.assignment = assign(self.load, sorted(self.live))
        self._since = 0

    def _choose(self, task: str | None) -> Decision:
        if not self.live:
            return Decision(None, "none")
        if task is None:
            return Decision(self.least_busy(), "any")
        self._observe(task)
        mine = [r for r in self.assignment.replicas_of.get(task, ()) if r in self.live]
        best = self.least_busy(mine)
        if best is None:  # a task never seen: place it now
            self._rebalance()
            best = self.least_busy(self.assignment.replicas_of.get(task, ()))
            best = self.least_busy() if best is None else best
        alt = self.least_busy()
        if self.inflight[best] >= self.queue_bound and self.inflight[alt] <= self.inflight[best] - max(
                1, self.queue_bound // 2):
            return Decision(alt, "overflow")
        return Decision(best, "affinity")

    def _observe(self, task: str) -> None:
        for t in self.load:
            self.load[t] *= self.decay
        self.load[task] = self.load.get(task, 0.0) + 1.0
        self._since += 1
        if self._since >= self.rebalance_every:
            self._rebalance()

    def _rebalance(self, force: bool = False) -> None:
        """Recompute the assignment, but keep the current one while it is within `slack` of even and every
        live replica has work (so the decayed counts' noise moves nothing)."""
        self._since = 0
        live = sorted(self.live)
        idle = [r for r in live if not self.assignment.tasks_of(r)]
        units = sum(len(rs) for rs in self.assignment.replicas_of.values())
        if not force and imbalance(self.assignment, self.load, live) <= 1 + self.slack and not (
                idle and units >= len(live)):
            return
        new = assign(self.load, sorted(self.live), self.assignment, self.slack)
        self.reassignments += moves(self.assignment, new)
        self.assignment = new

    def down(self, replica: int) -> None:
        if replica in self.live:
            super().down(replica)
            self._rebalance(force=True)

    def up(self, replica: int) -> None:
        """A replica back (restarted: its set is whatever it loads first); the router gives it tasks again."""
        if replica not in self.live:
            super().up(replica)
            self._rebalance(force=True)

    def state(self) -> dict:
        return super().state() | {"assignment": {t: list(rs) for t, rs in self.assignment.replicas_of.items()}}


ROUTERS: Registry[type[Router]] = Registry("router", base=Router)
ROUTERS.register("affinity", AffinityRouter)
ROUTERS.register("round-robin", RoundRobinRouter)
