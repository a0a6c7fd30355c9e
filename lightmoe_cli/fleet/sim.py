"""A fleet of replicas past this machine, as a discrete-event model (pure: numbers in, numbers out).

Why a model: this machine has two cores, so a real fleet stops at two replicas; whether affinity routing keeps
paying at 64 replicas and 64 tasks is a question of queues, batches and moves, which a model answers from
per-request costs measured on the real server. The model is built from the real parts, not a re-statement of
them: each replica plans with the server's own `TaskScheduler` (serve/scheduler.py) and requests are placed by
the same router objects the ingress uses (router.py). What it leaves out: requests that end before `new_tokens`
(an end-of-text token: 15.4 of 16 new tokens on average on the demo's load). A replica's own work outside its
engine (parsing and tokenizing a request, building its answer, which share the interpreter lock with the engine
thread) is one cost per request on the engine's timeline (`engine_per_request_s`), not modelled step by step.

The path outside the engines (client, Ray's proxy, the ingress, the hops, a replica's HTTP side) takes
`overhead_s` for a request alone, and `overhead_per_busy_s` more for each replica computing beside it when its
answer leaves (on a shared machine every replica on it, else its own): those processes share the cores, and in
a replica the interpreter, with the engines (measured per request from Ray Serve's logs and the replicas'
meters: benchmarks/fleet_hops.py).

A replica's time: a set move costs `swap_s`; each admitted request is prefilled alone, in `prefill_s` plus
`prefill_per_token_s` per prompt token (its task's prompt length: the demo's domains run 295-495 tokens, and a
prefill's cost follows them); a decode step of b rows costs `step_s + step_per_row_s * b`; a request is done
after `new_tokens` steps. The engine's costs vary (`prefill_cv`, `step_cv`: each prefill and each step is drawn
around its cost, independently: successive prefills' spread is uncorrelated on the real replica), and a measured
load can be replayed request by request (its prompt tokens, the detector's answers). Clients send as in the load
benchmark (bench_serve.load): the same Poisson arrival times for the same seed, through at most `clients`
concurrent requests; latency runs from the send to the answer.
NLL per token: a request served with its own task's set scores that task's measured oracle figure; one whose task
was detected wrong (`accuracy`) scores the prune figure.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass, field

from lightmoe_cli.fleet.router import Router
from lightmoe_cli.serve.scheduler import TaskScheduler, Waiting


@dataclass(frozen=True)
class ServiceModel:
    """A replica's costs in seconds (measured on the real server: benchmarks/bench_fleet.py, calibrate phase)."""

    prefill_s: float  # one request's prefill (and its scoring, with echo): the fixed part
    step_s: float  # a decode step's fixed cost
    step_per_row_s: float  # and what each row of the batch adds
    swap_s: float  # moving the resident set to another task
    overhead_s: float = 0.0  # per request, outside the replica's engine (HTTP, ingress, Ray): latency only
    layers_per_swap: float = 1.0  # layer moves per set move (to compare with the servers' swap counters)
    cpu_outside_s: float = 0.0  # CPU seconds per request outside the replicas (ingress, proxy, client)
    prefill_per_token_s: float = 0.0  # and what each prompt token adds
    overhead_per_busy_s: float = 0.0  # what each replica computing beside it adds to `overhead_s`
    # spread of the engine's costs: each prefill and each decode step takes its cost times a log-normal factor of
    # mean 1 and this coefficient of variation (0: every cost exactly as fitted)
    prefill_cv: float = 0.0
    step_cv: float = 0.0
    # the replica's HTTP side per request, on its engine's timeline: parsing and tokenizing a request and building
    # its answer run in the replica's process and hold the interpreter lock the engine thread needs between its
    # kernels, so a request arriving while its replica's engine computes delays that engine by this much (charged
    # to the engine's next step). A request arriving at an idle engine costs it nothing: that time is then in
    # `overhead_s`. The calibration's bursts cannot show it in their decode (a 1-token and a 16-token burst of
    # the same documents carry the same HTTP work); under load the in-situ decode step was 1.15-1.44x the same
    # session's calibration. Fitted to the 1-replica load's throughput (sim_fleet.fit_engine_per_request).
    engine_per_request_s: float = 0.0

    def step(self, rows: int) -> float:
        return self.step_s + self.step_per_row_s * rows

    def prefill(self, prompt_tokens: float) -> float:
        return self.prefill_s + self.prefill_per_token_s * prompt_tokens


@dataclass(frozen=True)
class Workload:
    tasks: int = 8
    requests: int = 200
    rate: float = 12.0  # Poisson arrivals per second (0: every request at once, the clients decide)
    clients: int = 16
    zipf: float = 0.0  # task popularity ~ 1 / rank**zipf (0: uniform)
    # "random": drawn by popularity; "shift": the task changes at every request, the next one drawn among the
    # others (the load benchmark's interleaved stream); "cyclic": 0, 1, ..., tasks-1, 0, ...
    order: str = "random"
    new_tokens: int = 16
    seed: int = 0
    sequence: tuple[int, ...] = ()  # a measured task order to replay (overrides `order`)
    prompt_tokens: tuple[float, ...] = ()  # prompt tokens per task (a task past them reuses them in turn)
    request_tokens: tuple[float, ...] = ()  # a measured load's prompt tokens per request (overrides the above)
    labels: tuple[int, ...] = ()  # a measured load's detected task per request (overrides drawn detector errors)

    def task_sequence(self) -> list[int]:
        if self.sequence:
            if len(self.sequence) < self.requests or max(self.sequence) >= self.tasks:
                raise ValueError(f"the replayed order has {len(self.sequence)} requests of tasks up to "
                                 f"{max(self.sequence)}: needs {self.requests} of tasks below {self.tasks}")
            return list(self.sequence[: self.requests])
        if self.order == "cyclic":
            return [i % self.tasks for i in range(self.requests)]
        rng = random.Random(self.seed)
        if self.order == "shift" and self.tasks > 1:
            out = [rng.randrange(self.tasks)]
            while len(out) < self.requests:
                out.append(rng.choice([t for t in range(self.tasks) if t != out[-1]]))
            return out[: self.requests]
        weights = [1.0 / (r + 1) ** self.zipf for r in range(self.tasks)]
        return rng.choices(range(self.tasks), weights=weights, k=self.requests)

    def tokens_of(self, task: int, index: int | None = None) -> float:
        """Request `index`'s prompt tokens where they were measured, else its task's."""
        if index is not None and index < len(self.request_tokens):
            return self.request_tokens[index]
        return self.prompt_tokens[task % len(self.prompt_tokens)] if self.prompt_tokens else 0.0

    def arrivals(self) -> list[float]:
        """The load client's rule (bench_serve.load): exponential gaps from `random.Random(seed)`, so seed 0
        gives the measured run's very send times."""
        rng = random.Random(self.seed)
        out, t = [], 0.0
        for _ in range(self.requests):
            out.append(t)
            t += rng.expovariate(self.rate) if self.rate > 0 else 0.0
        return out


@dataclass(frozen=True)
class Quality:
    """NLL per token per task: served with its own set (oracle) and with the wrong one (prune's figure)."""

    own: tuple[float, ...]
    wrong: tuple[float, ...]
    tokens: tuple[float, ...] = ()  # scored tokens per request, per task (default: equal)
    accuracy: float = 1.0  # share of requests whose task the detector names right

    def of(self, task: int, right: bool) -> tuple[float, float]:
        """(NLL summed over the request's tokens, its tokens); a simulated task past the measured ones reuses
        them in turn."""
        table = self.own if right else self.wrong
        n = self.tokens[task % len(self.tokens)] if self.tokens else 1.0
        return table[task % len(table)] * n, n


@dataclass
class SimResult:
    replicas: int
    router: str
    requests: int
    seconds: float
    requests_per_s: float
    latency_p50: float
    latency_p99: float
    set_moves: int
    layer_swaps_per_request: float
    nll_per_token: float | None
    nll_prune_per_token: float | None  # the same requests under prune's set (what FIFO with one set scores)
    reassignments: int
    overflow: int
    mean_batch: float
    replica_s_per_request: float  # the replicas' own work per request, unstretched (vs measured replica CPU)
    ttft_p50: float = math.nan  # arrival at the replica to its first token (the replica's own meter)
    ttft_p99: float = math.nan
    # median seconds per part of a request's latency (they sum to it per request): waiting for its prefill
    # (a set move included), the prefill, the decode, the path outside the engine
    parts_p50: dict[str, float] = field(default_factory=dict)
    # per request, in arrival order: its replica, task, label and latency parts (to set beside a load run's
    # per-request records)
    records: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "records"}


@dataclass
class _Request:
    id: int
    task: int  # the true task
    label: int  # the task the router and the replica are told (the detector's answer)
    arrival: float
    sent: float = 0.0
    start: float = 0.0  # its prefill begins
    first: float = 0.0  # its first token (end of its prefill)
    replica: int = -1
    left: int = 0  # decode steps still to run


@dataclass
class _Replica:
    scheduler: TaskScheduler
    waiting: dict[int, _Request] = field(default_factory=dict)
    rows: list[_Request] = field(default_factory=list)
    current: str | None = None
    busy_until: float = 0.0
    ticking: bool = False
    moves: int = 0
    steps: int = 0
    rows_stepped: int = 0
    work_s: float = 0.0  # its costs, before stretching
    owed_s: float = 0.0  # its HTTP side's work on requests that arrived while its engine computed, not yet paid


def percentile(xs: list[float], q: float) -> float:
    """The same rank rule as the load benchmark's summary (no interpolation)."""
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)] if xs else math.nan


def replica_speed(cores: float, busy: int, outside: float, loss: float = 0.0) -> float:
    """The speed (against one alone) of each of `busy` computing replicas when they share `cores` with `outside`
    cores' worth of other work (the ingress, Ray's proxy and daemons, the client).

    The other work comes in short bursts between sleeps, and the kernel's scheduler runs a process that slept ahead
    of the ones that kept computing: it gets its demand first, the replicas share what is left. Measured on this
    machine (benchmarks/bench_core_share.py): two demo replicas' prefill + decode beside 0.34 cores of bursty
    Python work got 0.82 cores each (this rule: 0.83; sharing in proportion to demand: 0.86), and the 2-replica
    fleet's replicas got 0.80 cores each while both were in flight (benchmarks/fleet_hops.py). The other work never
    takes more than one more computing process would (its fair share), so replicas are never starved.

    A replica that shares a core runs slower than its share says: `loss` is the part of its CPU time lost to being
    switched out and back (the probe: 0.777 of alone's speed on 0.817 cores, 4.8% lost, so the rule with it gives
    0.79; nothing lost while each replica had a core of its own).
    """
    if busy <= 0:
        return 1.0
    left = max(cores - outside, cores * busy / (busy + 1))
    share = min(1.0, left / busy)
    return share if share >= 1.0 else share * (1.0 - loss)


def noise(rng: random.Random, cv: float) -> float:
    """A log-normal factor of mean 1 and coefficient of variation `cv` (1.0 when cv is 0)."""
    if cv <= 0:
        return 1.0
    sigma2 = math.log1p(cv * cv)
    return math.exp(rng.gauss(-sigma2 / 2, math.sqrt(sigma2)))


def simulate(router: Router, service: ServiceModel, workload: Workload, max_batch: int = 8,
             max_wait_s: float = 0.5, quality: Quality | None = None, cores: float | None = None,
             sharing_loss: float = 0.0, noise_seed: int = 0) -> SimResult:
    """Run `workload` through `router.replicas` replicas until every request is answered.

    `cores`: None gives each replica a core of its own (a fleet of machines); a number makes the replicas share
    that many cores with the work outside them (`cpu_outside_s` per request, at the rate requests finish over
    the last second), as `replica_speed` says with `sharing_loss` (this machine: 2 replicas, the ingress, Ray's
    proxy and the client on 2 cores). `noise_seed` draws the costs' spread (`prefill_cv`, `step_cv`) apart from
    the workload, so the same arrivals can be replayed under several draws."""
    rng = random.Random(workload.seed + 2 + 7919 * noise_seed)  # the detector's errors: a draw of their own too
    jitter = random.Random(noise_seed)
    tasks = workload.task_sequence()
    arrivals = workload.arrivals()
    acc = quality.accuracy if quality else 1.0
    reqs = []
    for i, (t, a) in enumerate(zip(tasks, arrivals, strict=True)):
        if i < len(workload.labels):
            label = workload.labels[i]
        else:
            label = t if acc >= 1.0 or rng.random() < acc or workload.tasks == 1 else \
                rng.choice([x for x in range(workload.tasks) if x != t])
        reqs.append(_Request(i, t, label, a))
    reps = [_Replica(TaskScheduler(max_batch, max_wait_s)) for _ in range(router.replicas)]
    events: list[tuple[float, int, str, int]] = []  # (time, order, kind, index)
    order = 0

    def push(time: float, kind: str, index: int) -> None:
        nonlocal order
        heapq.heappush(events, (time, order, kind, index))
        order += 1

    for r in reqs:
        push(r.arrival, "arrive", r.id)
    free_clients, queue_at_client = workload.clients, []
    latencies: list[float] = []
    ttfts: list[float] = []
    parts: list[tuple[float, float, float, float]] = []  # (queue, prefill, decode, outside) per request
    records: dict[int, dict] = {}
    nll_sum = tokens = prune_sum = 0.0
    done_at = 0.0

    def send(r: _Request, now: float) -> None:
        r.sent = now
        d = router.route(f"t{r.label}")
        r.replica = d.replica
        rep = reps[d.replica]
        rep.waiting[r.id] = r
        if rep.ticking:  # its engine computes: the request's HTTP-side work delays it
            rep.owed_s += service.engine_per_request_s
        else:
            rep.ticking = True
            push(max(now, rep.busy_until), "tick", d.replica)

    finished_at: list[float] = []  # completion times (the last second's rate is the outside work's load)

    def stretch(now: float) -> float:
        if cores is None:
            return 1.0
        busy = sum(1 for r in reps if r.rows or r.waiting)
        recent = sum(1 for x in finished_at[-500:] if now - 1.0 <= x <= now)
        return 1.0 / replica_speed(cores, busy, recent * service.cpu_outside_s, sharing_loss)

    def tick(k: int, now: float) -> None:
        nonlocal done_at, nll_sum, tokens, prune_sum, free_clients
        rep = reps[k]
        waiting = [Waiting(r.id, f"t{r.label}", r.sent) for r in rep.waiting.values()]
        plan = rep.scheduler.plan(waiting, rep.current, len(rep.rows), now)
        f = stretch(now)
        work, rep.owed_s = rep.owed_s, 0.0
        if plan.switch_to is not None and not rep.rows:
            work += service.swap_s
            rep.current = plan.switch_to
            rep.moves += 1
        for rid in plan.admit:
            if len(rep.rows) >= max_batch:
                break
            r = rep.waiting.pop(rid)
            r.start = now + work * f
            work += service.prefill(workload.tokens_of(r.task, r.id)) * noise(jitter, service.prefill_cv)
            r.first = now + work * f
            r.left = workload.new_tokens - 1  # the prefill samples the first new token
            rep.rows.append(r)
        if any(r.left > 0 for r in rep.rows):  # a request of one new token is done at its prefill
            work += service.step(len(rep.rows)) * noise(jitter, service.step_cv)
            rep.steps += 1
            rep.rows_stepped += len(rep.rows)
            for r in rep.rows:
                r.left -= 1
        rep.work_s += work
        t = now + work * f
        if rep.rows:
            finished = [r for r in rep.rows if r.left <= 0]
            rep.rows = [r for r in rep.rows if r.left > 0]
            # the replicas computing beside the answer's way out: every one on a shared machine, else its own
            # (each while it has other work)
            computing = sum(1 for x in (reps if cores is not None else [rep]) if x.rows or x.waiting)
            outside = service.overhead_s + service.overhead_per_busy_s * computing
            for r in finished:
                end = t + outside
                finished_at.append(t)
                latencies.append(end - r.sent)
                ttfts.append(r.first - r.sent)
                parts.append((r.start - r.sent, r.first - r.start, t - r.first, outside))
                records[r.id] = {"index": r.id, "task": r.task, "label": r.label, "replica": k, "sent": r.sent,
                                 "latency": end - r.sent, "queue_s": r.start - r.sent,
                                 "prefill_s": r.first - r.start, "decode_s": t - r.first, "outside_s": outside}
                done_at = max(done_at, end)
                router.done(k)
                if quality is not None:
                    s, n = quality.of(r.task, r.label == r.task)
                    nll_sum, tokens = nll_sum + s, tokens + n
                    prune_sum += quality.of(r.task, False)[0]
                push(end, "free", -1)
        rep.busy_until = t
        if rep.rows or rep.waiting:
            # nothing admitted and nothing running (every waiting task held back): look again a little later
            push(t if t > now else now + 0.001, "tick", k)
        else:
            rep.ticking = False

    while events:
        now, _, kind, index = heapq.heappop(events)
        if kind == "arrive":
            queue_at_client.append(reqs[index])
        elif kind == "free":
            free_clients += 1
        else:
            tick(index, now)
        while free_clients > 0 and queue_at_client:
            free_clients -= 1
            send(queue_at_client.pop(0), now)

    n = len(latencies)
    moves = sum(r.moves for r in reps)
    stepped = sum(r.steps for r in reps)
    return SimResult(router.replicas, router.name, n, done_at, n / done_at if done_at > 0 else math.nan,
                     percentile(latencies, 0.5), percentile(latencies, 0.99), moves,
                     moves * service.layers_per_swap / max(n, 1),
                     nll_sum / tokens if tokens else None, prune_sum / tokens if tokens else None,
                     router.reassignments, router.reasons.get("overflow", 0),
                     sum(r.rows_stepped for r in reps) / max(stepped, 1), sum(r.work_s for r in reps) / max(n, 1),
                     percentile(ttfts, 0.5), percentile(ttfts, 0.99),
                     {k: percentile([p[i] for p in parts], 0.5)
                      for i, k in enumerate(("queue_s", "prefill_s", "decode_s", "outside_s"))},
                     [records[i] for i in sorted(records)])
