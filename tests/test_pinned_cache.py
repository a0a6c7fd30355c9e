"""The pinned-core cache in the runtime: plans and budgets, double-buffered installs off the main thread, the
simulator's hit rate equal to the runtime's on the same trace, the task-aware manager moving the core around a
region, and prefetch bounded by its byte budget. On the tiny model (2 MoE layers, 8 experts, top-2)."""

import threading

import numpy as np
import pytest
import torch

from lightmoe_cli.analysis.cache_sim import simulate_region
from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.runtime.loader import build_runtime

TEXTS = ["12 + 7 = 19\n45 - 3 = 42", "reverse lamp -> pmal\nupper dog -> DOG", "88 * 2 = 176\n", "reverse tigon -> ",
         "upper cat -> CAT\nreverse dog -> god", "31 - 9 = 22\n7 * 7 = 49"]


@pytest.fixture(scope="module")
def bundles(tiny_moe, tiny_profile, tmp_path_factory):
    root, model, tok = tiny_moe
    work = tmp_path_factory.mktemp("pinned")
    specs = {"swap": ("swap", {}),
             "pinned": ("swap", {"pinned": 0.5, "admission": "demand", "double_buffer": True}),
             "core-only": ("swap", {"pinned": 0.5}),
             "budgeted": ("swap", {"pinned": 0.5, "admission": "demand", "double_buffer": True, "read_budget": 0.02}),
             "region": ("task-aware", {"region": 0.5})}
    return {name: build_bundle(tiny_profile, model, tok, str(root / "model"), work / name,
                               BuildOptions(policy=p, fraction=0.5, params=params))
            for name, (p, params) in specs.items()}


def _forward(rt, text):
    with torch.no_grad():
        return rt.model(input_ids=rt.tokenizer(text, return_tensors="pt").input_ids).logits


def test_the_plan_pins_the_highest_mass_residents_and_charges_the_spare_row(bundles, tiny_profile):
    total = tiny_profile.total_stats()
    for lp in bundles["core-only"].layers:
        mass = total[lp.layer_index].gate_mass.numpy()
        assert len(lp.pinned) == round(0.5 * lp.slots) and set(lp.pinned) <= set(lp.resident)
        assert min(mass[lp.pinned]) >= max(mass[sorted(set(lp.resident) - set(lp.pinned))])
    swap, pinned = bundles["swap"].manifest, bundles["pinned"].manifest
    assert pinned.runtime.spare_slots == 1 and swap.runtime.spare_slots == 0
    # equal memory: one resident fewer per layer, the spare row counted in the budget
    assert [lp.slots for lp in pinned.layers] == [lp.slots - 1 for lp in swap.layers]
    assert pinned.budget.resident_expert_bytes == swap.budget.resident_expert_bytes
    rt = build_runtime(bundles["pinned"])
    assert rt.resident_expert_bytes() == pinned.budget.resident_expert_bytes
    assert all(m.pool.slots == len(m.resident) + 1 for m in rt.layers)
    rt.close()


def test_double_buffered_installs_never_copy_on_the_main_thread_and_never_evict_the_core(bundles):
    rt = build_runtime(bundles["pinned"])
    writers: list[str] = []
    for m in rt.layers:
        write = m.writer.write

        def spy(flat, slot, write=write, m=m):
            writers.append(threading.current_thread().name)
            assert slot not in m.slot_of.tolist()  # no route points at the row being written
            write(flat, slot)
        m.writer.write = spy
    core = {m.layer_index: set(m.cache.pinned) for m in rt.layers}
    full = 0
    for i in range(12):
        _forward(rt, TEXTS[i % len(TEXTS)])
        rt.loader.wait_idle()
        for m in rt.layers:
            assert core[m.layer_index] <= set(m.resident)
            routed = [e for e, row in enumerate(m.slot_of.tolist()) if row == m.spare[0]]
            assert routed == ([m.cache.standby] if m.cache.standby is not None else [])  # only the standby
            full += len(m.resident) == m.pool.slots  # between reads the spare row serves: the whole budget
    assert full > 0
    rt.finish()
    loads = sum(m.stats.loads for m in rt.layers)
    assert loads > 0 and sum(m.stats.flips for m in rt.layers) == loads
    assert writers and set(writers) == {"lightmoe-expert-loader"}
    rt.close()


def test_the_simulator_replays_the_runtimes_hit_rate_on_its_own_trace(bundles):
    """Record each layer's router picks per forward while serving; replaying them through `simulate_region` with
    reads landing one forward later (the runtime waits for its loader between forwards here) gives the
    runtime's own hit rate, for the old swap and the pinned cache."""
    for name in ("swap", "pinned", "core-only", "budgeted", "region"):
        rt = build_runtime(bundles[name])
        if name == "region":  # the manager moves the core: the simulator replays its moves
            rt.use_task(sorted(rt.bundle.manifest.task_resident)[-1])
        trace = {m.layer_index: [] for m in rt.layers}
        for m in rt.layers:
            m.observers.append(lambda s, index, weights, trace=trace:
                               trace[s.layer_index].append(index.reshape(-1, index.shape[-1]).tolist()))
        for i in range(10):
            _forward(rt, TEXTS[i % len(TEXTS)])
            rt.loader.wait_idle()
            rt.checkpoint()
        rt.finish()
        rt.close()
        assert name != "region" or any(m.core_moves for m in rt.layers)
        plans = {lp.layer_index: lp for lp in rt.bundle.layers}
        spec = rt.bundle.runtime_spec
        sim_hits = sim_picks = 0
        for m in rt.layers:
            lp = plans[m.layer_index]
            moves: dict[int, list] = {}
            for clock, evict, load in m.core_moves:
                moves.setdefault(clock, []).append((evict, load))
            r = simulate_region([np.asarray(s) for s in trace[m.layer_index]], lp.num_experts, lp.resident,
                                lp.pinned, spec.eviction, spec.admission, spec.decay, spare=bool(spec.spare_slots),
                                max_pending=spec.max_pending, read_budget=spec.read_budget, core_moves=moves)
            sim_hits, sim_picks = sim_hits + r.hits, sim_picks + r.accesses
            assert name == "region" or r.loads == m.stats.loads, name  # (the manager's reads are not the cache's)
        hits, picks = sum(m.stats.hits for m in rt.layers), sum(m.stats.picks for m in rt.layers)
        assert picks == sim_picks and hits == sim_hits, name
        assert hits < picks  # some picks did miss: the check is not vacuous


def test_task_aware_with_a_region_moves_the_core_with_the_task_and_the_region_loads_the_rest(bundles):
    b = bundles["region"]
    assert b.manifest.runtime.serving.value == "background" and b.manifest.runtime.manager is not None
    task = sorted(b.manifest.task_resident)[0]
    assert all(len(v) == len(lp.pinned) for lp in b.layers for li, v in b.manifest.task_resident[task].items()
               if li == lp.layer_index)
    rt = build_runtime(b)
    rt.use_task(task)
    for m in rt.layers:
        assert m.managed() == set(b.manifest.task_resident[task][m.layer_index])  # the core is the task's set
        assert len(m.resident) == len(plan_slots := [lp for lp in b.layers if lp.layer_index == m.layer_index][0]
                                      .resident) and len(plan_slots) > len(m.managed())
    for i in range(6):
        _forward(rt, TEXTS[i])
        rt.loader.wait_idle()
    rt.finish()
    assert sum(m.stats.loads for m in rt.layers) > 0
    assert all(m.managed() <= set(m.resident) for m in rt.layers)
    rt.close()
    # with the manager off it is the pinned cache: the frequency core, never moved
    off = build_runtime(b, manager=False)
    assert off.jump is None and all(m.managed() == set(lp.pinned) for m, lp in zip(off.layers, b.layers, strict=True))
    off.close()


def test_region_needs_reroute(tiny_moe, tiny_profile, tmp_path):
    from lightmoe_cli.errors import LightMoEError

    root, model, tok = tiny_moe
    with pytest.raises(LightMoEError, match="--missing reroute"):
        build_bundle(tiny_profile, model, tok, str(root / "model"), tmp_path / "b",
                     BuildOptions(policy="task-aware", fraction=0.5, params={"region": 0.5, "missing": "drop"}))


def test_prefetch_reads_stay_within_the_byte_budget_and_count_what_they_bought(tiny_moe, tmp_path):
    from lightmoe_cli.predict.data import examples_from_traces, load_profile_traces
    from lightmoe_cli.predict.model import save_predictor
    from lightmoe_cli.predict.train import TrainSettings, train_predictor
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root, model, tok = tiny_moe
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), tmp_path / "p",
                       ProfileSettings(batch_size=4, seq_len=32, sample_tokens=64, save_traces=True,
                                       save_router_inputs=True))
    data = examples_from_traces(load_profile_traces(load_profile(prof.path)), [0, 2])
    save_predictor(train_predictor(data, 8, 2, TrainSettings(epochs=2, d_model=16, layers=1)), tmp_path / "pred",
                   prof.model, {})
    per_expert = None
    served = {}
    for name, params in {"free": {}, "bounded": {"prefetch_mib": 1e-9}}.items():  # ~0.001 bytes per token
        b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / name,
                         BuildOptions(policy="predict", fraction=0.5,
                                      params={"predictor": str(tmp_path / "pred"), **params}))
        rt = build_runtime(b)
        per_expert = rt.layers[0].writer.bytes_per_expert
        tokens = 0
        for i in range(6):
            ids = rt.tokenizer(TEXTS[i], return_tensors="pt").input_ids
            tokens += ids.shape[1]
            with torch.no_grad():
                rt.model(input_ids=ids)
            rt.loader.wait_idle()
        rt.finish()
        served[name] = (rt.prefetcher.requested, rt.prefetcher.budget.spent, sum(m.stats.prefetch_reads
                                                                                 for m in rt.layers))
        rt.close()
        if name == "bounded":
            cap = rt.prefetcher.budget.cost + rt.prefetcher.budget.bytes_per_token
            assert rt.prefetcher.budget.spent <= tokens * rt.prefetcher.budget.bytes_per_token + cap
    assert served["free"][0] > 0 and served["free"][2] > 0
    assert served["bounded"][0] == 0  # 1e-9 MiB per token never buys one expert in a few hundred tokens
    assert per_expert > 0
