"""Non-blocking swapping (`swap`): misses re-routed without a stall, experts installed by a background loader,
and no data race -- logits under random loader delays equal a serial replay of the same residency decisions."""

import random

import pytest
import torch

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.runtime.background import BackgroundLoader
from lightmoe_cli.runtime.loader import build_runtime

TEXTS = ["12 + 7 = 19\n45 - 3 = 42", "reverse lamp -> pmal\nupper dog -> DOG", "88 * 2 = 176\n", "reverse tigon -> "]


@pytest.fixture(scope="module")
def bundles(tiny_moe, tiny_profile, tmp_path_factory):
    root, model, tok = tiny_moe
    work = tmp_path_factory.mktemp("bg")
    return {p: build_bundle(tiny_profile, model, tok, str(root / "model"), work / p,
                            BuildOptions(policy=p, fraction=0.25))
            for p in ("swap", "prune", "lru", "lightmoe")}


def _forward(rt, text):
    with torch.no_grad():
        return rt.model(input_ids=rt.tokenizer(text, return_tensors="pt").input_ids).logits


def test_swap_serves_misses_at_once_then_installs_the_loaded_experts(bundles):
    rt, prune = build_runtime(bundles["swap"]), build_runtime(bundles["prune"])
    assert torch.allclose(_forward(rt, TEXTS[0]), _forward(prune, TEXTS[0]), atol=1e-5)  # first: prune's answer
    rt.loader.wait_idle()
    before = [m.resident for m in rt.layers]
    _forward(rt, TEXTS[0])  # installs what the first forward queued
    rt.finish()
    assert any(m.resident != b for m, b in zip(rt.layers, before, strict=True))
    assert all(len(m.resident) == m.slots for m in rt.layers)  # a load replaces a resident, slots stay fixed
    loads = sum(m.stats.loads for m in rt.layers)
    assert loads > 0 and sum(m.stats.drops for m in rt.layers) > 0
    assert sum(m.stats.bytes_loaded for m in rt.layers) == loads * rt.layers[0].writer.bytes_per_expert
    assert sum(m.stats.evictions for m in rt.layers) == loads and sum(m.stats.stalls for m in rt.layers) == 0
    rt.close()
    # the blocking cache waits for its loads: stalls are counted, and --io-bandwidth slows each read for real
    per_expert = rt.layers[0].writer.bytes_per_expert
    blocking = build_runtime(bundles["lru"], io_bandwidth=per_expert / 0.02)  # 20 ms per expert
    _forward(blocking, TEXTS[0])
    blocking.finish()
    loads = sum(m.stats.loads for m in blocking.layers)
    assert sum(m.stats.stalls for m in blocking.layers) > 0 and loads > 0
    assert sum(m.stats.load_seconds for m in blocking.layers) >= 0.019 * loads


def test_no_data_race_logits_equal_a_serial_replay_of_the_same_residency(bundles):
    rng = random.Random(0)
    rt = build_runtime(bundles["swap"])
    rt.loader._delay = lambda: rng.uniform(0.0, 0.004)  # reads finish at random points between forwards
    for m in rt.layers:
        m.log = []
    outputs = []
    for i in range(16):
        outputs.append(_forward(rt, TEXTS[i % len(TEXTS)]))
        if i % 3 == 0:
            rt.loader.wait_idle()
    assert sum(m.stats.loads for m in rt.layers) + sum(len(m.swaps) for m in rt.layers) > 0
    logs = {m.layer_index: m.log for m in rt.layers}
    rt.close()

    class NoLoads:  # the replay decides nothing: it is told the residency of every forward
        def request(self, *a):
            return True

        def take(self, layer_index):
            return []

    replay = build_runtime(bundles["swap"])
    replay.close()
    for m in replay.layers:
        m.loader = NoLoads()
    changed = 0
    for i in range(16):
        for m in replay.layers:
            want = logs[m.layer_index][i]
            evict, load = sorted(set(m.resident) - set(want)), sorted(set(want) - set(m.resident))
            changed += bool(load)
            m.move(evict, load)
            assert m.resident == want
        assert torch.allclose(_forward(replay, TEXTS[i % len(TEXTS)]), outputs[i], atol=1e-6), f"forward {i}"
    assert changed > 0  # the residency did change during the run


def test_loader_throttles_refuses_when_full_and_reports_errors():
    import time

    loader = BackgroundLoader(lambda li, e: torch.zeros(250_000, dtype=torch.float32), max_pending=1,
                              io_bandwidth=100e6)  # 1 MB per read at 100 MB/s: >= 10 ms each
    t0 = time.perf_counter()
    assert loader.request(0, 1)
    loader.wait_idle()
    assert time.perf_counter() - t0 >= 0.009
    ready = loader.take(0)
    assert [r.expert for r in ready] == [1] and ready[0].seconds >= 0.009
    loader._delay = lambda: 0.05
    accepted = [loader.request(0, e) for e in range(2, 6)]
    assert not all(accepted) and loader.refused >= 1
    loader.close()

    def broken(li, e):
        raise OSError("disk gone")

    bad = BackgroundLoader(broken)
    bad.request(0, 0)
    time.sleep(0.05)
    with pytest.raises(RuntimeError, match="disk gone"):
        bad.take(0)


def test_predict_bundle_prefetches_the_next_layers_experts(tiny_moe, tmp_path):
    """A predictor trained on the tiny model's traces is copied into a `predict` bundle; while layer 0 runs it
    queues reads for layer 2's predicted experts. A predictor for other layers is refused by name."""
    from lightmoe_cli.errors import LightMoEError
    from lightmoe_cli.predict.data import examples_from_traces, load_profile_traces
    from lightmoe_cli.predict.model import save_predictor
    from lightmoe_cli.predict.train import TrainSettings, train_predictor
    from lightmoe_cli.profile.artifact import load_profile

    root, model, tok = tiny_moe
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), tmp_path / "p",
                       ProfileSettings(batch_size=4, seq_len=32, sample_tokens=64, save_traces=True,
                                       save_router_inputs=True))
    data = examples_from_traces(load_profile_traces(load_profile(prof.path)), [0, 2])
    pm = train_predictor(data, 8, 2, TrainSettings(epochs=2, d_model=16, layers=1))
    save_predictor(pm, tmp_path / "pred", prof.model, {})
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b",
                     BuildOptions(policy="predict", fraction=0.25, params={"predictor": str(tmp_path / "pred")}))
    assert (b.path / "predictor" / "predictor.safetensors").exists() and b.manifest.runtime.prefetch_width == 2
    rt = build_runtime(b)
    assert rt.prefetcher is not None
    _forward(rt, TEXTS[0])
    assert rt.prefetcher.requested > 0
    rt.loader.wait_idle()
    _forward(rt, TEXTS[1])
    assert sum(m.stats.loads for m in rt.layers) > 0
    rt.close()

    pm.cfg.pairs = [(0, 1)]  # a predictor of another layer pair
    save_predictor(pm, tmp_path / "other", prof.model, {})
    with pytest.raises(LightMoEError, match="train one on its profile"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b2",
                     BuildOptions(policy="predict", fraction=0.25, params={"predictor": str(tmp_path / "other")}))
    with pytest.raises(LightMoEError, match="needs --predictor"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b3", BuildOptions(policy="predict",
                                                                                          fraction=0.25))


def test_demand_admission_rejects_an_expert_wanted_less_than_every_resident(bundles):
    from lightmoe_cli.runtime.background import ReadyExpert

    rt = build_runtime(bundles["swap"])
    rt.close()
    m = rt.layers[0]
    m.cache.admission = "demand"
    missing = next(e for e in range(m.num_experts) if e not in m.resident)
    m.cache.demand[:] = 5.0
    m.cache.demand[missing] = 1.0  # wanted less than every resident
    flat = rt.store.read(m.layer_index, missing)

    class OneRead:
        def take(self, layer_index):
            return [ReadyExpert(layer_index, missing, flat, 0.0)]

    m.loader = OneRead()
    assert m.install_ready() is None and m.stats.rejected == 1 and missing not in m.resident
    m.cache.demand[missing] = 9.0  # now wanted more than the weakest resident: installed
    assert m.install_ready() is not None and missing in m.resident and m.stats.evictions == 1


def test_manager_swaps_read_in_the_background_land_later_with_the_same_residents(bundles):
    """--manager-loads background: a task change queues the reads and returns at once; the old experts serve
    until the reads land, then the resident sets (and logits) are those of the blocking swap."""
    bundle = bundles["lightmoe"]
    blocking, bg = build_runtime(bundle), build_runtime(bundle, manager_loads="background")
    task = sorted(blocking.bundle.manifest.task_resident)[-1]
    start = [m.resident for m in bg.layers]
    assert blocking.use_task(task) > 0
    target = [m.resident for m in blocking.layers]
    assert target != start
    assert bg.use_task(task) == 0  # nothing moved yet: the reads are queued
    assert [m.resident for m in bg.layers] == start
    bg.loader.wait_idle()
    out_bg, out_blocking = _forward(bg, TEXTS[1]), _forward(blocking, TEXTS[1])  # the forward installs them
    assert [m.resident for m in bg.layers] == target
    assert torch.allclose(out_bg, out_blocking, atol=1e-5)
    assert sum(m.stats.loads for m in bg.layers) == sum(m.stats.loads for m in blocking.layers)
    assert sum(len(m.swaps) for m in bg.layers) > 0
    with pytest.raises(Exception, match="blocking or background"):
        build_runtime(bundle, manager_loads="later")
    bg.close()
    # a full queue refuses a move: it is counted as rejected and the layer keeps a full, consistent resident set
    small = build_runtime(bundle, manager_loads="background")
    small.loader.close()
    small.loader = BackgroundLoader(small.store.read, max_pending=1, delay=lambda: 0.01)
    for m in small.layers:
        m.move_loader = small.loader
    small.use_task(task)
    small.loader.wait_idle()
    _forward(small, TEXTS[1])
    assert sum(m.stats.rejected for m in small.layers) > 0
    assert sum(m.stats.loads for m in small.layers) < sum(m.stats.loads for m in blocking.layers)
    assert all(len(m.resident) == m.slots for m in small.layers)
    small.close()


def test_read_buffers_are_reused_after_their_install_and_slots_hold_exact_experts(bundles):
    """A read waits for its install in a buffer the loader hands out again once the main thread has copied it into
    a slot: the next reads reuse it, and every slot still holds exactly its expert's stored weights."""
    rt = build_runtime(bundles["swap"])
    seen_buffers = []
    real = rt.loader._buffer

    def spy():
        buf = real()
        seen_buffers.append(buf)  # held, so an id seen twice is the same buffer handed out again
        return buf

    rt.loader._buffer = spy
    for text in TEXTS * 2:
        _forward(rt, text)
        rt.loader.wait_idle()
    _forward(rt, TEXTS[0])  # installs the last reads
    assert sum(m.stats.loads for m in rt.layers) > 1
    assert len({id(b) for b in seen_buffers}) < len(seen_buffers)  # a buffer came back and was handed out again
    for m in rt.layers:
        store = m.writer.store
        for e in m.resident:
            slot = int(m.slot_of[e])
            before = {k: t[slot].clone() for k, t in m.writer.pool().items()}
            m.writer.write(store.read(m.layer_index, e), slot)  # a fresh read of the same expert, no buffer
            assert all(torch.equal(before[k], t[slot]) for k, t in m.writer.pool().items())
    rt.close()
