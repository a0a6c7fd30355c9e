"""The fleet's pure parts: task assignment, routing decisions, reassignment counting, and the fleet simulator."""

import dataclasses
import math
import random

import pytest

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.fleet.router import (
    ROUTERS,
    AffinityRouter,
    Assignment,
    RoundRobinRouter,
    assign,
    imbalance,
    moves,
)
from lightmoe_cli.fleet.sim import Quality, ServiceModel, Workload, noise, percentile, replica_speed, simulate

TASKS = [f"t{i}" for i in range(8)]


def test_assign_spreads_even_tasks_and_gives_a_hot_task_several_replicas():
    even = assign(dict.fromkeys(TASKS, 1.0), [0, 1])
    assert sorted(len(even.tasks_of(r)) for r in (0, 1)) == [4, 4]
    assert all(len(rs) == 1 for rs in even.replicas_of.values())
    # one task with 10 of 13 units of load on 4 replicas: it gets 3, the three cold ones share the fourth
    hot = assign({"a": 10, "b": 1, "c": 1, "d": 1}, [0, 1, 2, 3])
    assert len(hot.replicas_of["a"]) == 3
    shared = {hot.replicas_of[t] for t in "bcd"}
    assert len(shared) == 1 and not set(next(iter(shared))) & set(hot.replicas_of["a"])
    assert imbalance(hot, {"a": 10, "b": 1, "c": 1, "d": 1}, [0, 1, 2, 3]) < 1.1


def test_assign_fills_every_replica_when_replicas_outnumber_tasks_and_only_uses_live_ones():
    a = assign({"a": 1.0, "b": 1.0}, [0, 1, 2, 3, 4])
    used = {r for rs in a.replicas_of.values() for r in rs}
    assert used == {0, 1, 2, 3, 4}
    b = assign(dict.fromkeys(TASKS, 1.0), [1, 3])
    assert {r for rs in b.replicas_of.values() for r in rs} == {1, 3}
    assert assign({}, [0, 1]).replicas_of == {} and assign({"a": 1.0}, []).replicas_of == {}


def test_assign_keeps_tasks_in_place_for_a_small_change_of_mix_and_moves_counts_new_pairs():
    before = assign(dict.fromkeys(TASKS, 1.0), [0, 1])
    after = assign({**dict.fromkeys(TASKS, 1.0), "t0": 1.2}, [0, 1], before)
    assert after == before and moves(before, after) == 0
    lost = assign(dict.fromkeys(TASKS, 1.0), [1], before)  # replica 0 died: its tasks go to 1
    assert moves(before, lost) == len(before.tasks_of(0))
    assert moves(Assignment({"a": (0,)}), Assignment({"a": (0, 1), "b": (1,)})) == 2


def test_affinity_router_sends_each_task_to_its_replicas_round_robin_to_all():
    aff = AffinityRouter(2, TASKS)
    rr = RoundRobinRouter(2, TASKS)
    seen_aff: dict[str, set[int]] = {}
    seen_rr: dict[str, set[int]] = {}
    for t in Workload(tasks=8, requests=160, order="shift").task_sequence():  # interleaved, answered at once
        t = TASKS[t]
        for router, seen in ((aff, seen_aff), (rr, seen_rr)):
            d = router.route(t)
            seen.setdefault(t, set()).add(d.replica)
            router.done(d.replica)
    assert all(len(rs) == 1 for rs in seen_aff.values())
    assert min(aff.routed) > 40 and aff.reassignments == 0
    assert all(rs == {0, 1} for rs in seen_rr.values()) and rr.routed == [80, 80]


def test_overflow_goes_to_the_least_busy_replica_only_past_the_bound():
    r = AffinityRouter(2, ["a", "b"], queue_bound=4)
    home = r.assignment.replicas_of["a"][0]
    got = [r.route("a") for _ in range(6)]  # none finishes
    assert [d.replica for d in got[:4]] == [home] * 4 and all(d.reason == "affinity" for d in got[:4])
    assert got[4].reason == "overflow" and got[4].replica != home
    assert r.reasons["overflow"] >= 1 and r.inflight[home] >= 4


def test_traffic_shift_reassigns_and_counts_and_a_dead_replica_gets_nothing():
    r = AffinityRouter(4, ["a", "b", "c", "d"], rebalance_every=8, half_life=8)
    for _ in range(200):  # all traffic on one task: it takes the fleet
        r.done(r.route("a").replica)
    assert len(r.assignment.replicas_of["a"]) >= 3 and r.reassignments >= 2
    n = r.reassignments
    r.down(0)
    assert all(0 not in rs for rs in r.assignment.replicas_of.values())
    assert all(r.route(t).replica != 0 for t in "abcd" * 5)
    r.up(0)
    assert any(0 in rs for rs in r.assignment.replicas_of.values()) and r.reassignments > n
    for i in (1, 2, 3, 0):
        r.down(i)
    assert r.route("a").replica is None and r.route(None).replica is None


def test_unknown_and_new_tasks_are_routed_never_refused():
    r = AffinityRouter(2, ["a"])
    assert r.route(None).reason == "any"
    d = r.route("zzz")  # a task the bundle's list did not name
    assert d.replica in (0, 1) and "zzz" in r.assignment.replicas_of


def test_registry_and_bad_sizes():
    assert ROUTERS.get("affinity") is AffinityRouter and ROUTERS.get("round-robin") is RoundRobinRouter
    with pytest.raises(LightMoEError, match="at least 1 replica"):
        RoundRobinRouter(0)


SERVICE = ServiceModel(prefill_s=0.02, step_s=0.01, step_per_row_s=0.001, swap_s=0.003, overhead_s=0.01,
                       layers_per_swap=12)


def test_simulator_answers_every_request_and_one_replica_is_the_same_under_either_router():
    w = Workload(tasks=8, requests=120, rate=0, clients=16, order="cyclic")
    a = simulate(RoundRobinRouter(1, TASKS), SERVICE, w)
    b = simulate(AffinityRouter(1, TASKS), SERVICE, w)
    assert a.requests == b.requests == 120
    assert a.requests_per_s == pytest.approx(b.requests_per_s) and a.set_moves == b.set_moves
    # a lower bound from the costs alone: every request is prefilled and decoded for 15 steps of >= 1 row
    assert a.seconds >= 120 * SERVICE.prefill_s
    assert a.latency_p99 >= a.latency_p50 > SERVICE.overhead_s


def test_simulator_affinity_moves_sets_less_and_batches_more_than_round_robin():
    w = Workload(tasks=8, requests=400, rate=0, clients=32, order="shift")
    rr = simulate(RoundRobinRouter(4, TASKS), SERVICE, w)
    aff = simulate(AffinityRouter(4, TASKS), SERVICE, w)
    assert aff.set_moves < rr.set_moves and aff.mean_batch > rr.mean_batch
    assert aff.requests_per_s > rr.requests_per_s


def test_simulator_slower_service_means_lower_throughput_and_swaps_count_layers():
    w = Workload(tasks=4, requests=80, rate=0, clients=8)
    fast = simulate(RoundRobinRouter(2, TASKS[:4]), SERVICE, w)
    slow = simulate(RoundRobinRouter(2, TASKS[:4]),
                    ServiceModel(0.04, 0.02, 0.002, 0.003, 0.01, layers_per_swap=12), w)
    assert slow.requests_per_s < fast.requests_per_s
    assert fast.layer_swaps_per_request == pytest.approx(fast.set_moves * 12 / 80)


def test_simulator_nll_mixes_the_oracle_and_the_wrong_set_by_detection_accuracy():
    w = Workload(tasks=2, requests=200, rate=0, clients=8)
    right = simulate(AffinityRouter(2, ["t0", "t1"]), SERVICE, w, quality=Quality((2.0, 3.0), (4.0, 5.0)))
    assert 2.0 < right.nll_per_token < 3.0  # every request with its own set
    assert 4.0 < right.nll_prune_per_token < 5.0  # the same requests under prune's set
    half = simulate(AffinityRouter(2, ["t0", "t1"]), SERVICE, w,
                    quality=Quality((2.0, 3.0), (4.0, 5.0), accuracy=0.5))
    assert half.nll_per_token > right.nll_per_token + 0.5
    weighted = simulate(AffinityRouter(2, ["t0", "t1"]), SERVICE, Workload(tasks=2, requests=2, rate=0, clients=2,
                        order="cyclic"), quality=Quality((2.0, 3.0), (4.0, 5.0), tokens=(1.0, 3.0)))
    assert weighted.nll_per_token == pytest.approx((2.0 + 9.0) / 4)


def test_workload_zipf_and_cyclic_orders_and_percentile():
    z = Workload(tasks=8, requests=4000, zipf=1.0).task_sequence()
    assert z.count(0) > 2 * z.count(3) > 0
    assert Workload(tasks=3, requests=7, order="cyclic").task_sequence() == [0, 1, 2, 0, 1, 2, 0]
    shift = Workload(tasks=8, requests=400, order="shift").task_sequence()
    assert all(a != b for a, b in zip(shift, shift[1:], strict=False)) and set(shift) == set(range(8))
    arr = Workload(requests=500, rate=10.0).arrivals()
    assert arr == sorted(arr) and 40 < arr[-1] < 60
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0 and math.isnan(percentile([], 0.5))


def test_simulator_shared_cores_stretch_the_replicas_costs():
    w = Workload(tasks=8, requests=200, rate=0, clients=16, order="shift")
    svc = ServiceModel(0.02, 0.01, 0.001, 0.003, 0.01, 12, cpu_outside_s=0.01)
    own = simulate(RoundRobinRouter(2, TASKS), svc, w)
    plenty = simulate(RoundRobinRouter(2, TASKS), svc, w, cores=8)
    one = simulate(RoundRobinRouter(2, TASKS), svc, w, cores=1)
    assert plenty.requests_per_s == pytest.approx(own.requests_per_s)
    # two busy replicas (plus the outside work) on one core: a little under half the throughput
    assert 0.4 * own.requests_per_s < one.requests_per_s < 0.55 * own.requests_per_s


def test_simulator_two_busy_replicas_leave_the_outside_work_its_cores():
    # two replicas always busy on 2 cores, outside work of 0.6 cores at their full speed: each gets (2 - D) / 2
    # with D = throughput x CPU per request, so throughput x = 2 / (2 + 0.6) of a core each's (sharing in
    # proportion to demand would give 0.81)
    w = Workload(tasks=8, requests=600, rate=0, clients=16, order="shift")
    own = simulate(RoundRobinRouter(2, TASKS), SERVICE, w)
    svc = ServiceModel(0.02, 0.01, 0.001, 0.003, 0.01, 12, cpu_outside_s=0.6 / own.requests_per_s)
    shared = simulate(RoundRobinRouter(2, TASKS), svc, w, cores=2)
    assert shared.requests_per_s / own.requests_per_s == pytest.approx(2 / 2.6, abs=0.01)


def test_workload_replays_the_load_clients_send_times_and_a_measured_order():
    # the load client (bench_serve.load) draws its gaps from random.Random(seed): seed 0 is the measured runs'
    rng, t, client = random.Random(0), 0.0, []
    for _ in range(50):
        client.append(t)
        t += rng.expovariate(12.0)
    assert Workload(requests=50, rate=12.0, seed=0).arrivals() == client
    order = (3, 1, 2, 0, 3)
    assert Workload(tasks=4, requests=4, sequence=order).task_sequence() == [3, 1, 2, 0]
    with pytest.raises(ValueError, match="replayed order"):
        Workload(tasks=3, requests=4, sequence=order).task_sequence()


def test_simulator_prefill_follows_the_prompt_and_one_token_requests_need_no_decode_step():
    # one client, two tasks in turn (6 and 5 requests): every request moves the set, is prefilled alone and is
    # answered at its prefill
    svc = ServiceModel(prefill_s=0.01, step_s=1.0, step_per_row_s=1.0, swap_s=0.002, overhead_s=0.005,
                       prefill_per_token_s=0.0001)
    w = Workload(tasks=2, requests=11, rate=0, clients=1, order="cyclic", new_tokens=1, prompt_tokens=(100.0, 500.0))
    r = simulate(RoundRobinRouter(1, ["t0", "t1"]), svc, w)
    assert r.set_moves == 11 and r.mean_batch == 0.0  # no decode step ran (each would cost a second)
    short, long = (0.002 + 0.01 + 0.0001 * n for n in (100.0, 500.0))
    assert r.replica_s_per_request == pytest.approx((6 * short + 5 * long) / 11)
    assert r.seconds == pytest.approx(6 * short + 5 * long + 11 * 0.005)  # one client: each waits for the last
    # the longer prompt's requests are the slower ones
    assert r.latency_p50 == pytest.approx(short + 0.005) and r.latency_p99 == pytest.approx(long + 0.005)
    # the first token comes at the end of the request's prefill: the fixed latency outside the replica is not in it
    assert r.ttft_p50 == pytest.approx(short) and r.ttft_p99 == pytest.approx(long)


def test_replica_speed_serves_the_outside_work_first():
    # the probe on this machine (bench_core_share.py): two replicas beside 0.34 cores of bursty work got 0.82 cores
    # each; the rule gives (2 - 0.34) / 2, below sharing in proportion to demand (2 / 2.34)
    two = replica_speed(2.0, 2, 0.34)
    assert two == pytest.approx(0.83) and two < 2.0 / 2.34
    # one replica, or no other work: a core each (measured: 1.00 and 0.995)
    assert replica_speed(2.0, 1, 0.33) == 1.0 and replica_speed(2.0, 2, 0.0) == 1.0 and replica_speed(2.0, 0, 5) == 1
    # the other work takes no more than one more computing process would: replicas are never starved
    assert replica_speed(2.0, 2, 5.0) == pytest.approx(2.0 / 3) and replica_speed(1.0, 2, 0.1) == pytest.approx(0.45)


def test_simulator_shared_cores_stretch_wall_time_not_the_replicas_work():
    w = Workload(tasks=2, requests=10, rate=0, clients=1, order="cyclic", new_tokens=4)
    own = simulate(RoundRobinRouter(1, ["t0", "t1"]), SERVICE, w)
    half = simulate(RoundRobinRouter(1, ["t0", "t1"]), SERVICE, w, cores=0.5)  # one busy replica on half a core
    assert half.replica_s_per_request == pytest.approx(own.replica_s_per_request)
    outside = 10 * SERVICE.overhead_s  # one client: the requests' fixed latencies follow one another
    assert half.seconds - outside == pytest.approx(2 * (own.seconds - outside))


def test_fit_service_recovers_the_costs_bursts_were_made_of():
    from benchmarks.bench_fleet import fit_service

    tokens = {"a": 300.0, "b": 500.0}

    def t1(n, d):  # overhead + n * fixed prefill + per token
        return 0.02 + n * 0.01 + 0.0002 * n * tokens[d]

    raw = []
    for n in (1, 4, 8):
        for m in (1, 16):
            for d in tokens:
                same = t1(n, d) + (m - 1) * (0.003 + 0.001 * n)
                raw.append({"n": n, "new_tokens": m, "domain": d, "same_set_s": same, "after_move_s": same + 0.012,
                            "set_moves": 1, "layer_swaps": 4})
    fit = fit_service(raw, 16, tokens)
    want = {"prefill_s": 0.01, "prefill_per_token_s": 0.0002, "step_s": 0.003, "step_per_row_s": 0.001,
            "swap_s": 0.012, "overhead_s": 0.02, "layers_per_swap": 4.0}
    assert fit == pytest.approx(want, abs=1e-9)
    # recorded per burst instead: the prompt tokens, and the lone requests' time outside the engine as the overhead
    recorded = [r | {"prompt_tokens": r["n"] * tokens[r["domain"]], "outside_s": 0.05} for r in raw]
    assert fit_service(recorded, 16) == pytest.approx(want | {"overhead_s": 0.05}, abs=1e-9)
    # without token counts the prefill is one figure per request again
    assert fit_service(raw, 16)["prefill_per_token_s"] == 0.0


def test_fit_service_weights_each_burst_size_by_its_spread():
    # a lone request's decode is measured to a few microseconds per step; a burst of 4 is the difference of two long
    # bursts, here off by 2 ms per step at its median and spread over 8 ms: the fit keeps the 1-row step the lone
    # requests measured (unweighted, the noisy size would move it by ~1 ms)
    from benchmarks.bench_fleet import fit_service

    domains = [f"d{i}" for i in range(8)]
    jitter = [-2e-5, -1e-5, 0.0, 0.0, 1e-5, 1e-5, 2e-5, 0.0]
    noise4 = [-0.004, -0.003, -0.0025, -0.002, -0.002, 0.0, 0.003, 0.004]
    raw = []
    for n in (1, 4, 8):
        for i, d in enumerate(domains):
            t1 = 0.02 + 0.07 * n
            step = 0.003 + 0.001 * n + (noise4[i] if n == 4 else jitter[i])
            for m, t in ((1, t1), (16, t1 + 15 * step)):
                raw.append({"n": n, "new_tokens": m, "domain": d, "same_set_s": t, "after_move_s": t + 0.01,
                            "set_moves": 1, "layer_swaps": 4})
    fit = fit_service(raw, 16)
    assert fit["step_s"] + fit["step_per_row_s"] == pytest.approx(0.004, abs=5e-5)
    assert fit["step_s"] + 8 * fit["step_per_row_s"] == pytest.approx(0.011, abs=5e-5)


def test_replica_speed_loses_cpu_only_where_replicas_share_a_core():
    # the probe: two replicas beside the outside work ran at 0.777 of alone's speed on 0.817 cores (4.8% lost)
    assert replica_speed(2.0, 2, 0.34, loss=0.048) == pytest.approx(0.83 * 0.952)
    assert replica_speed(2.0, 2, 0.0, loss=0.048) == 1.0 and replica_speed(2.0, 1, 0.34, loss=0.048) == 1.0


def test_simulator_splits_each_latency_into_queue_prefill_decode_and_outside():
    svc = ServiceModel(prefill_s=0.05, step_s=0.002, step_per_row_s=0.001, swap_s=0.008, overhead_s=0.02)
    r = simulate(RoundRobinRouter(1, ["t0"]), svc, Workload(tasks=1, requests=1, rate=0, clients=1, new_tokens=4))
    p = r.parts_p50
    assert p == pytest.approx({"queue_s": 0.008, "prefill_s": 0.05, "decode_s": 3 * 0.003, "outside_s": 0.02})
    assert sum(p.values()) == pytest.approx(r.latency_p50)


def test_simulator_outside_path_grows_with_the_replicas_computing_beside_it():
    w = Workload(tasks=8, requests=300, rate=0, clients=16, order="shift")
    grows = dataclasses.replace(SERVICE, overhead_per_busy_s=0.01)
    alone = Workload(tasks=1, requests=1, rate=0, clients=1)
    # a request alone leaves with no replica computing: the lone figure
    assert simulate(RoundRobinRouter(2, TASKS), grows, alone, cores=2).parts_p50["outside_s"] == SERVICE.overhead_s
    # two busy replicas on one machine: each answer's way out takes 2 x 0.01 more; the replicas' work stays
    # (clients freed later batch a little differently)
    flat = simulate(RoundRobinRouter(2, TASKS), SERVICE, w, cores=2)
    busy = simulate(RoundRobinRouter(2, TASKS), grows, w, cores=2)
    assert busy.parts_p50["outside_s"] == pytest.approx(SERVICE.overhead_s + 0.02)
    assert busy.replica_s_per_request == pytest.approx(flat.replica_s_per_request, rel=0.02)
    assert busy.latency_p50 > flat.latency_p50
    # a replica on a machine of its own: only its own engine is beside the answer
    apart = simulate(RoundRobinRouter(2, TASKS), grows, w)
    assert apart.parts_p50["outside_s"] <= SERVICE.overhead_s + 0.01 + 1e-12


def _hop_record(replica: str, arrival: float, engine_from: float, engine_to: float, outside: float) -> dict:
    """A load record joined with its hops: the proxy 5 ms either side of the replica call, the replica's HTTP
    side 5 ms either side of the engine (so the engine runs [engine_from, engine_to) on the logs' clock)."""
    done = engine_to - engine_from
    return {"replica": replica, "arrival_s": arrival, "replica_start_s": engine_from - 0.005,
            "replica_s": done + 0.01, "ingress_s": done + 0.012, "proxy_s": engine_to + 0.01 - arrival,
            "queue_seconds": 0.0, "first_token_seconds": done / 2, "done_seconds": done, "answer_seconds": 0.0,
            "latency": done + outside}


def test_fit_overhead_growth_recovers_the_time_each_computing_engine_adds():
    from benchmarks.bench_fleet import fit_overhead_growth
    from benchmarks.fleet_hops import busy_outside, split

    # A on replica-0 computes 0.01-0.99 s, nothing else computing while it is outside; B on replica-1 is outside
    # its engine only while A computes: one engine beside it
    a = _hop_record("replica-0", 0.0, 0.01, 0.99, outside=0.02)
    b = _hop_record("replica-1", 0.4, 0.41, 0.49, outside=0.02 + 0.015)
    assert busy_outside([a, b]) == pytest.approx([0.0, 1.0])
    assert sum(split(b).values()) == pytest.approx(b["latency"])  # the parts add up to the client's latency
    assert fit_overhead_growth([[a, b]], 0.02) == pytest.approx(0.015)
    # each run keeps its own clock: B's run alone has no engine beside it, so nothing to fit
    assert fit_overhead_growth([[a], [b]], 0.02) == 0.0


def test_noise_has_mean_one_and_the_asked_spread_and_none_at_zero():
    rng = random.Random(0)
    assert noise(rng, 0.0) == 1.0
    xs = [noise(rng, 0.2) for _ in range(20000)]
    mean = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / len(xs))
    assert mean == pytest.approx(1.0, abs=0.01) and sd / mean == pytest.approx(0.2, abs=0.01)
    assert min(xs) > 0


def test_simulator_costs_spread_moves_latencies_per_draw_and_a_draw_replays():
    w = Workload(tasks=8, requests=150, rate=12, clients=16, order="shift")
    fixed = [simulate(AffinityRouter(2, TASKS), SERVICE, w, noise_seed=s) for s in (0, 1)]
    assert fixed[0].latency_p99 == fixed[1].latency_p99  # no spread, no detector errors: one answer
    spread = dataclasses.replace(SERVICE, prefill_cv=0.3, step_cv=0.3)
    a, b, again = (simulate(AffinityRouter(2, TASKS), spread, w, noise_seed=s) for s in (1, 2, 1))
    assert a.requests == b.requests == 150
    assert [r["latency"] for r in a.records] != [r["latency"] for r in b.records]
    assert [r["latency"] for r in a.records] == [r["latency"] for r in again.records]
    # the spread has mean 1: the replicas' work per request stays near the fixed costs'
    assert a.replica_s_per_request == pytest.approx(fixed[0].replica_s_per_request, rel=0.1)


def test_simulator_replays_measured_prompt_tokens_and_detected_tasks_per_request():
    svc = ServiceModel(prefill_s=0.0, step_s=0.002, step_per_row_s=0.0, swap_s=0.0, prefill_per_token_s=0.001)
    w = Workload(tasks=2, requests=2, rate=0, clients=1, sequence=(0, 1), prompt_tokens=(100.0, 100.0),
                 request_tokens=(300.0, 50.0), labels=(1, 1), new_tokens=1)
    assert w.tokens_of(0, 0) == 300.0 and w.tokens_of(1) == 100.0 and w.tokens_of(1, 5) == 100.0
    r = simulate(AffinityRouter(2, ["t0", "t1"]), svc, w, quality=Quality((1.0, 1.0), (2.0, 2.0)))
    assert [x["prefill_s"] for x in r.records] == pytest.approx([0.3, 0.05])
    # request 0 (task 0) was told task 1: routed as task 1, scored with the wrong set
    assert [(x["task"], x["label"], x["replica"]) for x in r.records] == [(0, 1, 1), (1, 1, 1)]
    assert r.nll_per_token == pytest.approx(1.5)


def test_simulator_records_each_request_and_its_parts_add_up():
    w = Workload(tasks=8, requests=60, rate=20, clients=8, order="shift")
    r = simulate(AffinityRouter(2, TASKS), dataclasses.replace(SERVICE, prefill_cv=0.2), w, cores=2)
    assert [x["index"] for x in r.records] == list(range(60))
    for x in r.records:
        assert x["queue_s"] + x["prefill_s"] + x["decode_s"] + x["outside_s"] == pytest.approx(x["latency"])
    assert percentile([x["latency"] for x in r.records], 0.99) == r.latency_p99
    assert "records" not in r.to_json()


def test_cost_spread_reads_the_prefills_spread_around_the_model_and_band_ranks():
    from benchmarks.sim_fleet import band, cost_spread

    svc = ServiceModel(prefill_s=0.01, step_s=0.0, step_per_row_s=0.0, swap_s=0.0, prefill_per_token_s=0.0001)
    # a run 1.5x slower all through, half the prefills 20% above the rest: spread only from the halves
    recs = [{"status": 200, "prompt_tokens": n, "queue_seconds": 0.1,
             "first_token_seconds": 0.1 + 1.5 * svc.prefill(n) * (1.2 if i % 2 else 1.0)}
            for i, n in enumerate([300, 400] * 20)]
    expect = 0.15 / 1.65  # ratios 1.5 and 1.8 in equal numbers: sd 0.15 around their mean 1.65
    prefill, step = cost_spread(recs, svc)
    assert prefill == pytest.approx(expect, rel=1e-6)
    assert step is None  # no Ray hops joined: the in-situ decode step cannot be told apart
    assert cost_spread(recs[:5], svc) == (None, None)
    b = band([float(x) for x in range(1, 101)])
    assert b["median"] == 50.5 and b["p5"] == 6.0 and b["p95"] == 96.0 and b["draws"] == 100


def test_detector_errors_match_the_measured_replicas_counts_and_error_rate():
    from benchmarks.sim_fleet import detector_errors

    order = tuple(i % 4 for i in range(100))
    replica_of = {0: 0, 1: 1, 2: 0, 3: 1}  # 50 requests each with right answers
    for seed in range(5):
        labels = detector_errors(order, replica_of, [45, 55], right=0.93, seed=seed)
        assert [sum(replica_of[t] == r for t in labels) for r in (0, 1)] == [45, 55]
        assert sum(a != b for a, b in zip(labels, order, strict=True)) == 7
        # the 5 that moved were replica 0's tasks named as replica 1's; the other 2 stayed on their replica
        moved = [(a, b) for a, b in zip(order, labels, strict=True) if replica_of[a] != replica_of[b]]
        assert len(moved) == 5 and all(replica_of[a] == 0 for a, _ in moved)
    assert detector_errors(order, replica_of, [45, 55], 0.93, 1) == detector_errors(order, replica_of, [45, 55],
                                                                                    0.93, 1)


def test_simulator_charges_the_http_sides_work_to_a_computing_engine_only():
    svc = ServiceModel(prefill_s=0.02, step_s=0.002, step_per_row_s=0.001, swap_s=0.003, overhead_s=0.01)
    taxed = dataclasses.replace(svc, engine_per_request_s=0.005)
    # ten requests at once: the first finds the engine idle (its HTTP work is in `overhead_s`), the other nine
    # arrive while it computes, so the engine pays 9 x 5 ms more and nothing else changes
    burst = Workload(tasks=1, requests=10, rate=0, clients=10)
    a, b = (simulate(RoundRobinRouter(1, ["t0"]), s, burst) for s in (svc, taxed))
    assert b.seconds - a.seconds == pytest.approx(9 * 0.005)
    assert b.replica_s_per_request - a.replica_s_per_request == pytest.approx(9 * 0.005 / 10)
    assert b.requests_per_s == pytest.approx(10 / (a.seconds + 9 * 0.005))
    # one client: every request finds its engine idle, so the cost never reaches the engine
    one = Workload(tasks=1, requests=10, rate=0, clients=1)
    a, b = (simulate(RoundRobinRouter(1, ["t0"]), s, one) for s in (svc, taxed))
    assert b.seconds == pytest.approx(a.seconds) and b.replica_s_per_request == pytest.approx(a.replica_s_per_request)


def test_fit_engine_per_request_recovers_the_cost_a_replica_was_run_with():
    from benchmarks.sim_fleet import fit_engine_per_request

    svc = ServiceModel(prefill_s=0.02, step_s=0.002, step_per_row_s=0.001, swap_s=0.003, overhead_s=0.01)
    w = Workload(tasks=8, requests=200, rate=30.0, clients=16, order="shift")  # saturated, as the 1-replica load
    real = simulate(AffinityRouter(1, TASKS), dataclasses.replace(svc, engine_per_request_s=0.004), w, 8, 0.5)
    fitted = fit_engine_per_request(svc, None, w, real.requests_per_s, 8, 0.5, None, 0.0, seeds=1)
    assert fitted == pytest.approx(0.004, rel=0.05)
    # a replica that served more than the model without the cost: nothing to fit
    plain = simulate(AffinityRouter(1, TASKS), svc, w, 8, 0.5)
    assert fit_engine_per_request(svc, None, w, plain.requests_per_s * 1.05, 8, 0.5, None, 0.0, seeds=1) == 0.0


def test_match_rule_needs_the_band_to_overlap_the_measured_range_and_the_medians_close():
    from benchmarks.sim_fleet import matches

    measured = [1.0, 1.1, 1.3]
    draws = [1.0 + 0.01 * i for i in range(21)]  # median 1.1, band 1.01-1.19
    m = matches(measured, draws)
    assert m["match"] and m["overlap"] and m["ratio"] == pytest.approx(1.0)
    assert m["measured"] == {"median": 1.1, "min": 1.0, "max": 1.3, "values": measured}
    far = matches(measured, [x + 0.5 for x in draws])  # band 1.51-1.69: above the measured range
    assert not far["overlap"] and not far["match"]
    wide = matches(measured, [0.5 + 0.05 * i for i in range(41)])  # band covers it, median 1.5: 1.36x
    assert wide["overlap"] and not wide["match"]


def test_prefill_in_situ_is_the_loads_prefills_over_the_calibrations():
    from benchmarks.sim_fleet import prefill_in_situ

    svc = ServiceModel(prefill_s=0.004, step_s=0.0, step_per_row_s=0.0, swap_s=0.0, prefill_per_token_s=0.0002)
    recs = [{"status": 200, "prompt_tokens": n, "queue_seconds": 0.5,
             "first_token_seconds": 0.5 + 0.75 * svc.prefill(n)} for n in [300, 400, 500] * 10]
    assert prefill_in_situ(recs, svc) == pytest.approx(0.75)
    assert prefill_in_situ(recs[:5], svc) is None  # too few to say


def test_pooled_repeats_join_only_runs_of_the_same_load(tmp_path):
    import json

    from benchmarks.sim_fleet import SAME_LOAD, pooled

    load = {k: 1 for k in SAME_LOAD}
    first = load | {"repeats": [{"n": 1}, {"n": 2}], "date": "a"}
    more = tmp_path / "more.json"
    more.write_text(json.dumps(load | {"repeats": [{"n": 3}]}))
    assert [r["n"] for r in pooled(first, [more])["repeats"]] == [1, 2, 3]
    assert pooled(first, []) is first
    other = tmp_path / "other.json"
    other.write_text(json.dumps(load | {"rate": 12, "repeats": [{"n": 4}]}))
    with pytest.raises(SystemExit, match="its rate differ"):
        pooled(first, [other])
    with pytest.raises(SystemExit, match="not found"):
        pooled(first, [tmp_path / "missing.json"])


def test_cpu_by_role_names_each_replica_and_the_timeline_samples_the_machine():
    import os
    import subprocess
    import time

    from benchmarks.bench_fleet import CpuTimeline, cpu_by_role, machine_cpu

    # a child titled as Ray titles a replica's actor process
    child = subprocess.Popen(["bash", "-c", 'exec -a "ray::ServeReplica:lightmoe:replica-3" sleep 5'])
    try:
        deadline = time.monotonic() + 5
        while "replica-3" not in cpu_by_role(os.getpid(), each_replica=True) and time.monotonic() < deadline:
            time.sleep(0.05)
        split = cpu_by_role(os.getpid(), each_replica=True)
        assert "replica-3" in split and "driver" in split
        assert "replicas" in cpu_by_role(os.getpid()) and "replica-3" not in cpu_by_role(os.getpid())
        with CpuTimeline(os.getpid(), every_s=0.05) as timeline:
            time.sleep(0.2)
    finally:
        child.kill()
        child.wait()
    assert len(timeline.samples) >= 2
    first, last = timeline.samples[0], timeline.samples[-1]
    assert last["t"] > first["t"] and "replica-3" in last["cpu"]
    if machine_cpu():  # /proc/stat: every counter only grows
        assert all(last["machine"][k] >= first["machine"][k] for k in ("busy", "idle", "steal"))


def test_engine_busy_time_is_the_union_of_each_replicas_windows():
    from benchmarks.sim_fleet import engine_busy_s, measured_busy_s

    # replica 0: [0, 2] and [1, 3] overlap (3 s busy), then [5, 6]; replica 1: [0, 2] counts on its own
    windows = [(0, 0.0, 2.0), (0, 1.0, 3.0), (0, 5.0, 6.0), (1, 0.0, 2.0), (0, 1.5, 2.5)]
    assert engine_busy_s(windows) == pytest.approx(6.0)
    assert engine_busy_s([]) == 0.0
    recs = [{"status": 200, "fleet": {"replica": 0}, "replica_start_s": 1.0, "queue_seconds": 0.5,
             "done_seconds": 1.5},
            {"status": 200, "fleet": {"replica": 0}, "replica_start_s": 1.2, "queue_seconds": 0.8,
             "done_seconds": 2.0},
            {"status": 503, "fleet": {"replica": 1}}]
    assert measured_busy_s(recs) == pytest.approx(1.7)  # [1.5, 2.5] and [2.0, 3.2]
    assert measured_busy_s([{"status": 200, "done_seconds": 1.0, "queue_seconds": 0.1}]) is None  # no hops


def test_task_locality_probe_fits_lines():
    from benchmarks.bench_task_locality import line_fit

    assert line_fit([1, 2, 3], [5.0, 7.0, 9.0]) == pytest.approx((3.0, 2.0))
    assert line_fit([2, 2], [1.0, 3.0]) == pytest.approx((2.0, 0.0))  # no spread in x: the mean, no slope


def test_step_log_times_the_engines_own_calls_and_flushes_json_lines(tmp_path, monkeypatch):
    import json
    import time
    from types import SimpleNamespace

    from lightmoe_cli.serve import steplog

    calls = []

    def fake_engine():
        e = SimpleNamespace(rows=[1, 2, 3])
        e._step = lambda: calls.append("step")
        e._start = lambda job: calls.append(("start", len(job.prompt_ids)))
        e._switch = lambda task, jobs: calls.append(("switch", task))
        return e

    monkeypatch.delenv(steplog.ENV, raising=False)
    assert steplog.from_env(fake_engine(), "replica-0") is None  # off unless asked for
    monkeypatch.setenv(steplog.ENV, str(tmp_path / "logs"))
    engine = fake_engine()
    log = steplog.from_env(engine, "replica-0")
    before = time.time()
    engine._step()
    engine._start(SimpleNamespace(prompt_ids=[7] * 5))
    engine._switch("algebra", [1, 2])
    assert calls == ["step", ("start", 5), ("switch", "algebra")]  # the engine's own methods still run
    log.flush()
    log.flush()  # nothing new: nothing written twice
    logs = steplog.read(tmp_path / "logs")
    (name, rows), = logs.items()
    assert name.startswith("steps-replica-0-")
    assert [(r["kind"], r["n"]) for r in rows] == [("step", 3), ("prefill", 5), ("move", 2)]
    assert all(r["s"] >= 0 and r["t"] >= before - 1 for r in rows) and log.records == []
    assert json.loads((tmp_path / "logs" / f"{name}.jsonl").read_text().splitlines()[0])["kind"] == "step"


def test_step_logs_split_steps_by_rows_and_by_the_other_engine():
    from benchmarks.step_logs import busy_share, summarise

    assert busy_share([(0.0, 1.0), (2.0, 3.0)], [0.0, 2.0], 0.5, 2.5) == pytest.approx(0.5)
    assert busy_share([(0.0, 1.0)], [0.0], 1.0, 1.0) == 0.0
    step = lambda t, s, n: {"t": t, "s": s, "kind": "step", "n": n}  # noqa: E731
    a = [step(0.0, 0.004, 1), step(1.0, 0.006, 2), {"t": 2.0, "s": 0.01, "kind": "move", "n": 1},
         {"t": 3.0, "s": 0.03, "kind": "prefill", "n": 300}]
    b = [step(1.0, 0.006, 1)]  # at the very time of replica A's second step
    runs = {f"cfg-{i}": {"steps-replica-0": a, "steps-replica-1": b} for i in (1, 2, 3, 4, 5)}
    s = summarise(runs, least=1)["cfg"]
    assert s["runs"] == 5
    assert s["step"]["1 alone"]["median_s"] == pytest.approx(0.004)  # B idle meanwhile
    assert s["step"]["2 shared"]["median_s"] == pytest.approx(0.006)  # B computing all through
    assert s["step"]["1 shared"]["n"] == 5  # B's own step, A computing throughout
    assert s["prefill_per_token"]["alone"]["median_s"] == pytest.approx(0.0001)
    assert s["move"] == {"median_s": pytest.approx(0.01), "n": 5}
    assert summarise({"lone-1": {"steps-replica-0": a}}) == {}  # one replica: nothing to compare


def test_step_costs_fit_the_models_terms_and_annotate_the_load_results(tmp_path):
    import json

    from benchmarks.step_logs import annotate, fit_costs

    step = lambda n, s: {"t": 0.0, "s": s, "kind": "step", "n": n}  # noqa: E731
    prefill = lambda n, s: {"t": 0.0, "s": s, "kind": "prefill", "n": n}  # noqa: E731
    logs = {"steps-replica-0": [step(1, 0.005), step(3, 0.009), prefill(100, 0.03),
                                {"t": 0.0, "s": 0.012, "kind": "move", "n": 1}],
            "steps-replica-1": [step(2, 0.007), prefill(300, 0.07), {"t": 0.0, "s": 0.014, "kind": "move", "n": 2}]}
    c = fit_costs(logs)
    assert c["step_s"] == pytest.approx(0.003) and c["step_per_row_s"] == pytest.approx(0.002)
    assert c["prefill_s"] == pytest.approx(0.01) and c["prefill_per_token_s"] == pytest.approx(0.0002)
    assert c["swap_s"] == pytest.approx(0.013) and (c["steps"], c["prefills"], c["moves"]) == (3, 2, 2)
    assert fit_costs({"steps-replica-0": [step(1, 0.005)]}) is None  # too little to fit

    run = tmp_path / "logs" / "2-replicas-affinity-50-1"
    run.mkdir(parents=True)
    for name, rows in logs.items():
        (run / f"{name}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    results = tmp_path / "fleet.json"
    results.write_text(json.dumps({"repeats": [{"load": {"2 replicas affinity 50%": {"step_logs": str(run)},
                                                         "prune 50%": {}}}]}))
    assert annotate(results) == 1
    got = json.loads(results.read_text())["repeats"][0]["load"]
    assert got["2 replicas affinity 50%"]["step_costs"]["swap_s"] == pytest.approx(0.013)
    assert "step_costs" not in got["prune 50%"]


def test_in_situ_check_needs_loads_with_their_step_costs():
    from benchmarks.sim_fleet import in_situ_check

    fleet = {"max_batch": 8, "max_wait_ms": 500, "repeats": [{"load": {"2 replicas affinity 50%": {}}}]}
    with pytest.raises(SystemExit, match="--step-logs"):
        in_situ_check(fleet, [], [], (), 1)
    with pytest.raises(SystemExit, match="--step-logs"):
        in_situ_check({"max_batch": 8, "max_wait_ms": 500}, [], [], (), 1)  # no repeats at all
