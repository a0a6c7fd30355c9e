"""build-bundle + runtime on a tiny model: each policy computes exactly what it claims."""

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lightmoe_cli.bundle.artifact import BundleError, load_bundle
from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.cli import app
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.models import get_adapter, record_routing
from lightmoe_cli.policies.cache import replay
from lightmoe_cli.policies.manager import ManagerParams
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.runtime.generate import cache_kwarg_name, cache_of, run_requests
from lightmoe_cli.runtime.loader import build_runtime


@pytest.fixture(scope="module")
def prof(tiny_profile):
    return tiny_profile


def _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5, ranking="gate_mass", **params):
    """A bundle of `policy`; extra keywords are the policy's parameters (as build-bundle options)."""
    root, model, tok = tiny_moe
    return build_bundle(prof, model, tok, str(root / "model"), tmp_path / policy,
                        BuildOptions(policy=policy, fraction=fraction, ranking=ranking, params=params))


def _ids(tok, text="12 + 7 = 19\nreverse lamp -> pmal\n45 - 3 = 42"):
    return tok(text, return_tensors="pt").input_ids


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_full_bundle_equals_the_original_model(prof, tiny_moe, tmp_path):
    _, model, tok = tiny_moe
    rt = build_runtime(_bundle(prof, tiny_moe, tmp_path, policy="full"))
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(model, ids), atol=1e-5)
    rt.finish()
    assert all(m.stats.hits == m.stats.picks > 0 for m in rt.layers)


def test_prune_equals_the_router_sliced_model(prof, tiny_moe, tmp_path):
    _, model, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="prune", fraction=0.5)
    resident = {lp.layer_index: lp.resident for lp in b.layers}
    assert all(len(r) >= 2 for r in resident.values()) and sum(map(len, resident.values())) == 8
    pruned = get_adapter(model).keep_experts(model, resident)
    rt = build_runtime(b)
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(pruned, ids), atol=1e-5)
    # the runtime holds only the resident experts
    experts = rt.model.model.layers[0].mlp.experts
    assert experts.gate_up_proj.shape[0] == len(resident[0])


def test_redirect_equals_copying_the_target_weights(prof, tiny_moe, tmp_path):
    _, model, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5, min_similarity=-1.0)
    rt = build_runtime(b)
    reference = copy.deepcopy(model)
    adapter = get_adapter(reference)
    for layer, lp in zip(adapter.moe_layers(reference), b.layers, strict=True):
        for j, i in enumerate(lp.redirect):
            assert i in lp.resident
            if i != j:
                adapter.write_expert(layer, j, adapter.read_expert(layer, i))
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(reference, ids), atol=1e-5)
    rt.finish()
    s = rt.layers[0].stats
    assert s.redirects > 0 and s.drops == 0 and s.hits + s.redirects == s.picks


def test_drop_gives_zero_weight_and_renormalises(prof, tiny_moe, tmp_path):
    _, model, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5, min_similarity=1.0,  # nothing similar
                missing="drop")
    rt = build_runtime(b)
    reference = copy.deepcopy(model)
    adapter = get_adapter(reference)
    hooks = []
    for layer, lp in zip(adapter.moe_layers(reference), b.layers, strict=True):
        resident = torch.zeros(lp.num_experts, dtype=torch.bool)
        resident[lp.resident] = True

        def fn(idx, w, resident=resident):
            keep = resident[idx]
            w2 = w * keep
            return idx, w2 * (w.sum(-1, keepdim=True) / w2.sum(-1, keepdim=True).clamp_min(1e-12))

        hooks.append(adapter.add_routing_hook(layer, fn))
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(reference, ids), atol=1e-5)
    for h in hooks:
        h.remove()
    rt.finish()
    assert rt.layers[0].stats.drops > 0 and rt.layers[0].stats.redirects == 0


def test_reroute_equals_prune_at_the_same_resident_set(prof, tiny_moe, tmp_path):
    _, _, tok = tiny_moe
    light = build_runtime(_bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5, min_similarity=1.0))
    prune = build_runtime(_bundle(prof, tiny_moe, tmp_path, policy="prune", fraction=0.5))
    assert [m.resident for m in light.layers] == [m.resident for m in prune.layers]
    ids = _ids(tok)
    assert torch.allclose(_logits(light.model, ids), _logits(prune.model, ids), atol=1e-5)
    light.finish()
    assert light.layers[0].stats.drops > 0  # missing picks really happened and were re-routed


def test_lru_counts_equal_a_replay_of_the_same_trace(prof, tiny_moe, tmp_path):
    _, _, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="lru", fraction=0.5)
    rt = build_runtime(b)
    trace = {m.layer_index: [] for m in rt.layers}

    def on_route(li, idx, w):
        trace[li].extend(sorted(set(row)) for row in idx.tolist())

    ids = _ids(tok, "reverse tigon -> nogit\n99 * 3 = 297\nsolve 2x + 1 = 9 ; x = 4")
    with record_routing(rt.model, on_route), torch.no_grad():
        past = None
        for t in range(ids.shape[1]):  # one token per forward (KV cache): each step is one cache request
            past = rt.model(input_ids=ids[:, t : t + 1], use_cache=True, **{cache_kwarg_name(rt.model): past})
            past = cache_of(past)
    for m, lp in zip(rt.layers, b.layers, strict=True):
        expected = replay(trace[m.layer_index], lp.slots, "lru", initial=lp.resident)
        assert (m.cache.hits, m.cache.misses) == (expected.hits, expected.misses)
        assert m.stats.loads == expected.misses > 0
        # each slot really holds the expert the bookkeeping says
        for e, slot in m.cache.slot_of.items():
            flat = rt.store.read(m.layer_index, e)
            parts = b.layout(m.layer_index).split(flat)
            assert torch.equal(m.writer.experts.gate_up_proj[slot], parts["gate_up_proj"])


def test_manager_swaps_on_task_shift_within_cooldown(prof, tiny_moe, tmp_path):
    _, _, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.25, min_similarity=1.0, window=16,
                threshold=0.05, max_swap=2, cooldown=24, check_every=8, swap_rule="incremental")
    params = b.runtime_spec.manager
    assert params == ManagerParams(window_tokens=16, miss_threshold=0.05, max_swap=2, cooldown_tokens=24,
                                   check_every=8, mode="incremental")
    rt = build_runtime(b)
    prompts = ["12 + 7 = 19\n45 - 3 = 42\n"] * 2 + ["reverse lamp -> pmal\nupper dog -> DOG\n"] * 3
    stats = run_requests(rt, prompts, max_new_tokens=16)
    assert stats.swaps and stats.bytes_loaded == sum(s["bytes"] for s in stats.swaps)
    for m in rt.layers:
        tokens = [s.token for s in m.swaps]
        assert all(b2 - a >= params.cooldown_tokens for a, b2 in zip(tokens, tokens[1:], strict=False))
        assert len(m.resident) == m.slots
        for e in m.resident:  # slots hold what the table says, redirect table follows the resident set
            slot = int(m.slot_of[e])
            parts = b.layout(m.layer_index).split(rt.store.read(m.layer_index, e))
            assert torch.equal(m.writer.experts.down_proj[slot], parts["down_proj"])
        assert all(int(m.redirect[e]) == e for e in m.resident)


def test_bundle_round_trip_and_corruption(prof, tiny_moe, tmp_path):
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5)
    again = load_bundle(b.path)
    assert again.manifest == b.manifest and again.runtime_spec.manager is not None
    assert json.loads((b.path / "manifest.json").read_text())["budget"]["resident_fraction"] <= 0.5 + 1e-9
    store = b.path / "experts" / "layer_2.safetensors"
    data = bytearray(store.read_bytes())
    data[-5] ^= 0xFF
    store.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="experts/layer_2.safetensors is corrupt"):
        load_bundle(b.path)
    store.write_bytes(bytes(data[:-100]))
    with pytest.raises(BundleError, match="layer_2.safetensors is truncated"):
        load_bundle(b.path, verify=False)


def test_bundle_refuses_another_model(prof, tiny_moe, tmp_path):
    root, model, tok = tiny_moe
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.gate.weight.add_(0.1)
    with pytest.raises(LightMoEError, match="profile .* was made for"):
        build_bundle(prof, other, tok, "other", tmp_path / "x", BuildOptions())


def test_budget_too_small_names_the_minimum(prof, tiny_moe, tmp_path):
    with pytest.raises(LightMoEError, match="use at least --memory"):
        _bundle(prof, tiny_moe, tmp_path, policy="prune", fraction=0.1)


def test_cli_build_and_run(prof, tiny_moe, tmp_path):
    out = tmp_path / "bundle"
    runner = CliRunner()
    res = runner.invoke(app, ["build-bundle", "--profile", str(prof.path), "--budget", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "bundle written to" in res.output and "redirected" in res.output
    res = runner.invoke(app, ["run", "--bundle", str(out), "--prompt", "12 + 7 = ", "--max-new-tokens", "5",
                              "--stats-json", str(tmp_path / "s.json"), "--io-bandwidth", "1GB/s"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["requests"][0]["new_tokens"] <= 5 and stats["resident_expert_bytes"] > 0
    assert "decode tokens/s" in res.output and "per MoE layer" in res.output
    res = runner.invoke(app, ["run", "--bundle", str(tmp_path / "nope"), "--prompt", "x"])
    assert res.exit_code == 1 and "not a lightmoe bundle" in res.output


def test_plans_resident_sets_follow_gate_mass(prof, tiny_moe, tmp_path):
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5)
    total = prof.total_stats()
    for lp in b.layers:
        mass = total[lp.layer_index].gate_mass.numpy()
        assert set(lp.resident) == set(np.argsort(-mass, kind="stable")[: lp.slots].tolist())
    assert set(b.manifest.task_resident) == {"arithmetic", "strings"}


def test_reap_ranking_keeps_the_most_salient_experts(prof, tiny_moe, tmp_path):
    b = _bundle(prof, tiny_moe, tmp_path, policy="prune", fraction=0.5, ranking="reap")
    for lp in b.layers:
        sal = prof.saliency(lp.layer_index).numpy()
        assert set(lp.resident) == set(np.argsort(-sal, kind="stable")[: lp.slots].tolist())
    with pytest.raises(LightMoEError, match="unknown ranking"):
        _bundle(prof, tiny_moe, tmp_path, policy="prune", fraction=0.5, ranking="magic")


def test_tensor_file_reads_what_safetensors_wrote(tmp_path):
    from safetensors.torch import save_file

    from lightmoe_cli.bundle.safetensors_io import TensorFile

    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64), "c": torch.randn(2).bfloat16()}
    save_file(tensors, str(tmp_path / "t.safetensors"))
    f = TensorFile(tmp_path / "t.safetensors")
    assert sorted(f.keys()) == ["a", "b", "c"]
    for k, v in tensors.items():
        assert torch.equal(f.read(k), v)


# ---- families whose layout breaks a generic rule (tiny random models of the installed transformers) ---------------

_FAMILIES: dict[str, tuple] = {}


def _family(model_type, tmp_path_factory):
    """(model, profile, workspace root, tokenizer) of a tiny `model_type` model, profiled once per test session."""
    from lightmoe_cli.models.architectures import find_architecture
    from lightmoe_cli.models.tiny_configs import tiny_config
    from lightmoe_cli.selftest.pipeline import char_tokenizer, write_recipe
    from lightmoe_cli.selftest.run import quiet

    if model_type not in _FAMILIES:
        root = tmp_path_factory.mktemp(model_type)
        info = find_architecture(model_type)
        torch.manual_seed(0)
        with quiet():
            model = info.load_class()(tiny_config(info)).eval()
        tok = char_tokenizer()
        prof = run_profile(model, tok, model_type, write_recipe(root), root / "profile",
                           ProfileSettings(seq_len=32, batch_size=4, sample_tokens=64))
        _FAMILIES[model_type] = model, prof, root, tok
    return _FAMILIES[model_type]


def _family_bundle(model_type, tmp_path_factory, policy, **params):
    model, prof, root, tok = _family(model_type, tmp_path_factory)
    name = policy + "".join(f"-{k}={v}" for k, v in sorted(params.items()))
    return build_bundle(prof, model, tok, model_type, root / name, BuildOptions(policy=policy, fraction=0.5,
                                                                                   params=params))


def _family_ids():
    from lightmoe_cli.models.tiny_configs import VOCAB

    return torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))


def _copied_redirects(model, bundle):
    """The model with every redirected expert's weights replaced by its target's (what a redirect computes)."""
    reference = copy.deepcopy(model)
    adapter = get_adapter(reference)
    for layer, lp in zip(adapter.moe_layers(reference), bundle.layers, strict=True):
        for j, i in enumerate(lp.redirect):
            if i != j:
                adapter.write_expert(layer, j, adapter.read_expert(layer, i))
    return reference


def test_router_ids_past_the_experts_pass_through_the_slot_pool(tmp_path_factory):
    """LongCat-Flash: router ids E.. are identity experts without weights. A full bundle equals the model; with
    half the experts missing, all redirected, it equals copying the targets' weights; on-demand loading (lru)
    equals the model again: ids >= E run as the rows the pool keeps past its slots and are never loaded."""
    model, *_ = _family("longcat_flash", tmp_path_factory)
    ids = _family_ids()
    picked = []
    with record_routing(model, lambda i, idx, w: picked.append(int(idx.max()))):
        reference = _logits(model, ids)
    num_experts = get_adapter(model).moe_layers(model)[0].num_experts
    assert max(picked) >= num_experts  # the identity experts really are picked
    rt = build_runtime(_family_bundle("longcat_flash", tmp_path_factory, "full"))
    assert torch.equal(_logits(rt.model, ids), reference)
    b = _family_bundle("longcat_flash", tmp_path_factory, "lightmoe", min_similarity=-1.0)
    rt = build_runtime(b)
    layer = rt.layers[0]
    zero = layer.writer.experts.zero_expert_num
    assert layer.writer.pool()["gate_up_proj"].shape[0] == layer.slots + zero < num_experts + zero
    assert torch.allclose(_logits(rt.model, ids), _logits(_copied_redirects(model, b), ids), atol=1e-6)
    rt.finish()
    assert layer.stats.redirects > 0 and layer.stats.hits + layer.stats.redirects == layer.stats.picks
    lru = build_runtime(_family_bundle("longcat_flash", tmp_path_factory, "lru"))  # loads every missing expert
    assert torch.allclose(_logits(lru.model, ids), reference, atol=1e-6)
    assert lru.layers[0].stats.misses > 0


@pytest.mark.parametrize("model_type", ["longcat_flash", "zaya", "inkling_text"])
def test_prune_keeps_the_router_rows_past_the_experts(model_type, tmp_path_factory):
    """Routers with slots past the routed experts (identity, skip, shared): the prune runtime's sliced router
    keeps them, as keep_experts does, so it equals the router-sliced model."""
    model, *_ = _family(model_type, tmp_path_factory)
    b = _family_bundle(model_type, tmp_path_factory, "prune")
    pruned = get_adapter(model).keep_experts(model, {lp.layer_index: lp.resident for lp in b.layers})
    ids = _family_ids()
    assert torch.equal(_logits(build_runtime(b).model, ids), _logits(pruned, ids))


def test_dbrx_experts_are_stored_once_and_only_slots_are_held(tmp_path_factory):
    """DBRX keeps its experts in 2D parameters the adapter views as [E, I, H]: the bundle stores them in the
    expert store only, the runtime holds `slots` experts, and a logits-only router feeds re-routing (which equals
    pruning: softmax top-k, renormalised)."""
    from lightmoe_cli.bundle.safetensors_io import TensorFile

    model, *_ = _family("dbrx", tmp_path_factory)
    ids = _family_ids()
    full = _family_bundle("dbrx", tmp_path_factory, "full")
    keys = TensorFile(full.path / "model" / "non_expert.safetensors").keys()
    assert not [k for k in keys if ".experts." in k]
    assert torch.equal(_logits(build_runtime(full).model, ids), _logits(model, ids))
    light = build_runtime(_family_bundle("dbrx", tmp_path_factory, "lightmoe", min_similarity=1.0))
    prune = build_runtime(_family_bundle("dbrx", tmp_path_factory, "prune"))
    mlp, layer = light.model.transformer.blocks[0].ffn.experts.mlp, light.layers[0]
    assert mlp.w1.shape[0] == layer.slots * mlp.ffn_hidden_size and layer.slots < 8
    assert torch.allclose(_logits(light.model, ids), _logits(prune.model, ids), atol=1e-6)
    light.finish()
    assert layer.stats.drops > 0


def test_jetmoe_pool_lives_in_its_projections(tmp_path_factory):
    """JetMoE's experts are two projection modules inside the block that also holds the router: the pool
    shrinks the projections only (the router still scores every expert), and re-routing reads this forward's
    logits from the grouped router output, so it equals pruning exactly."""
    model, *_ = _family("jetmoe", tmp_path_factory)
    ids = _family_ids()
    assert torch.equal(_logits(build_runtime(_family_bundle("jetmoe", tmp_path_factory, "full")).model, ids),
                       _logits(model, ids))
    light = build_runtime(_family_bundle("jetmoe", tmp_path_factory, "lightmoe", min_similarity=1.0))
    prune = build_runtime(_family_bundle("jetmoe", tmp_path_factory, "prune"))
    block, layer = light.model.model.layers[0].mlp, light.layers[0]
    assert block.input_linear.weight.shape[0] == block.output_linear.num_experts == layer.slots < 8
    assert block.router.num_experts == 8
    assert torch.equal(_logits(light.model, ids), _logits(prune.model, ids))
    light.finish()
    assert layer.stats.drops > 0


def test_gemma4_full_bundle_loads_its_stored_buffers(tmp_path_factory):
    """Gemma 4's scaled embedding cannot be built from a config; its non-persistent buffer is in the bundle,
    so the loader reads it instead of rebuilding the module."""
    model, *_ = _family("gemma4_text", tmp_path_factory)
    ids = _family_ids()
    rt = build_runtime(_family_bundle("gemma4_text", tmp_path_factory, "full"))
    assert torch.equal(_logits(rt.model, ids), _logits(model, ids))


def test_skeleton_class_comes_from_the_manifest():
    """Mistral 4's config has no AutoModelForCausalLM mapping: the bundle's recorded class builds the skeleton;
    a name transformers does not know falls back to the auto class."""
    from transformers import Mistral4Config, Qwen3MoeConfig

    from lightmoe_cli.runtime.loader import _meta_skeleton

    assert type(_meta_skeleton(Mistral4Config(num_hidden_layers=1), "Mistral4ForCausalLM")).__name__ == \
        "Mistral4ForCausalLM"
    fallback = _meta_skeleton(Qwen3MoeConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                             num_key_value_heads=1), "NoSuchForCausalLM")
    assert type(fallback).__name__ == "Qwen3MoeForCausalLM"


def test_oracle_serves_each_task_with_its_own_set_exactly_as_pruning_to_it(prof, tiny_moe, tmp_path):
    _, model, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="oracle", fraction=0.5)
    rt = build_runtime(b)
    ids = _ids(tok)
    for task in ("strings", "arithmetic"):
        rt.use_task(task)
        sets = b.manifest.task_resident[task]
        assert [m.resident for m in rt.layers] == [sets[m.layer_index] for m in rt.layers]
        pruned = get_adapter(model).keep_experts(model, sets)
        assert torch.allclose(_logits(rt.model, ids), _logits(pruned, ids), atol=1e-5)
    with pytest.raises(LightMoEError, match="no resident set for task 'klingon'"):
        rt.use_task("klingon")


def test_jump_manager_moves_to_a_task_set_on_a_long_block_and_not_when_tasks_alternate(prof, tiny_moe, tmp_path):
    _, _, tok = tiny_moe
    b = _bundle(prof, tiny_moe, tmp_path, policy="lightmoe", fraction=0.5, min_similarity=1.0, swap_rule="jump",
                max_swap=8, margin=0.0)
    texts = {"arithmetic": "12 + 7 = 19\n45 - 3 = 42\n99 * 3 = 297\n", "strings": "reverse lamp -> pmal\n"
             "upper dog -> DOG\nreverse tigon -> nogit\n"}
    rt = build_runtime(b)
    for _ in range(16):  # a long block of one task: the stream shows that tasks persist
        with torch.no_grad():
            rt.model(input_ids=_ids(tok, texts["strings"]))
        rt.checkpoint()
    sets = b.manifest.task_resident["strings"]
    assert rt.jump.history[-1].task == "strings"
    assert [m.resident for m in rt.layers] == [sets[m.layer_index] for m in rt.layers]
    rt = build_runtime(b)
    for i in range(12):  # the task changes at every request
        with torch.no_grad():
            rt.model(input_ids=_ids(tok, texts[("arithmetic", "strings")[i % 2]]))
        rt.checkpoint()
    assert rt.jump.history[-1].p_stay < 0.25
    assert [m.resident for m in rt.layers] == [lp.resident for lp in b.layers]  # back on the global set


@pytest.mark.parametrize("policy", ["full", "prune", "lightmoe", "lru"])
def test_activation_topk_equals_the_model_with_a_smaller_top_k(prof, tiny_moe, tmp_path, policy):
    """k = 1 of 2 in every layer: the runtime's truncated routing equals the same model whose routers pick
    top-1 (Qwen3-MoE renormalises its top-k: norm_topk_prob), under every serving strategy."""
    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / policy,
                     BuildOptions(policy=policy, fraction=0.5 if policy in ("prune", "lru") else 1.0, activation="topk",
                                  active=0.5))
    assert b.manifest.activation.k == {0: 1, 2: 1} and b.manifest.activation.budget == 2
    reference = copy.deepcopy(model)
    for layer in get_adapter(reference).moe_layers(reference):
        layer.router.top_k = 1
    if policy == "prune":
        reference = get_adapter(reference).keep_experts(reference, {lp.layer_index: lp.resident for lp in b.layers})
    rt = build_runtime(b)
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(reference, ids), atol=1e-5)
    rt.finish()
    assert rt.layers[0].stats.picks == ids.numel()  # one pick per token, not two


def test_activation_lexi_measures_the_model_and_allocates_the_budget(prof, tiny_moe, tmp_path):
    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "lexi",
                     BuildOptions(policy="full", fraction=1.0, activation="lexi", active=0.75))
    act = b.manifest.activation
    assert sum(act.k.values()) == act.budget == 3 and set(act.k.values()) <= {1, 2}
    assert all(d["2"] == 0 or d[2] == 0 for d in act.measured["delta"].values())
    rt = build_runtime(b)
    assert torch.isfinite(_logits(rt.model, _ids(tok))).all()
    with pytest.raises(LightMoEError, match="at least one expert per token per layer"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "x",
                     BuildOptions(policy="full", fraction=1.0, activation="topk", active=0.1))
    with pytest.raises(LightMoEError, match="unknown --activation"):
        BuildOptions(activation="magic").resolve()


def test_activation_alloc_measures_calibration_sensitivity_and_solves_the_dp(prof, tiny_moe, tmp_path):
    from lightmoe_cli.policies.activation_budget import brute_force

    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "alloc",
                     BuildOptions(policy="full", fraction=1.0, activation="alloc", active=0.75))
    act = b.manifest.activation
    s = {int(li): {int(k): v for k, v in row.items()} for li, row in act.measured["sensitivity"].items()}
    assert set(s) == {0, 2} and all(set(row) == {1, 2} for row in s.values())
    assert s[0][2] == s[2][2]  # k = K everywhere is the unchanged model
    want = brute_force(s, act.budget)
    assert sum(s[li][k] for li, k in act.k.items()) == pytest.approx(sum(s[li][k] for li, k in want.items()))
    assert torch.isfinite(_logits(build_runtime(b).model, _ids(tok))).all()


def _per_token_reference(model, plan, keep_fn):
    """A copy of the model whose routing hook zeroes the picks `keep_fn` drops and renormalises (Qwen3-MoE
    renormalises its top-k): an independent reimplementation of a per-token rule."""
    reference = copy.deepcopy(model)
    adapter = get_adapter(reference)
    for layer in adapter.moe_layers(reference):
        def fn(idx, w, li=layer.layer_index):
            order = w.argsort(-1, descending=True)
            idx, w = idx.gather(-1, order), w.gather(-1, order)
            keep = torch.as_tensor(keep_fn(li, w.double().numpy()))
            w = w * keep
            return idx, w / w.sum(-1, keepdim=True)
        adapter.add_routing_hook(layer, fn)
    return reference


def test_activation_naee_drops_picks_under_the_threshold(prof, tiny_moe, tmp_path):
    import numpy as np

    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "naee",
                     BuildOptions(policy="full", fraction=1.0, activation="naee", active=0.75))
    beta = b.manifest.activation.beta
    assert set(beta) == {0, 2} and all(0 < v < 1 for v in beta.values())
    reference = _per_token_reference(model, b.manifest.activation,
                                     lambda li, w: np.concatenate([np.ones((len(w), 1), bool),
                                                                   w[:, 1:] >= beta[li] * w[:, :1]], 1))
    rt = build_runtime(b)
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(reference, ids), atol=1e-5)
    rt.finish()
    assert ids.numel() <= rt.layers[0].stats.picks < 2 * ids.numel()  # some tokens ran one expert, not two


def test_activation_alloc_t_pools_the_spare_slots_over_the_tokens(prof, tiny_moe, tmp_path):
    from lightmoe_cli.policies.activation_budget import pooled_token_topk

    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "allct",
                     BuildOptions(policy="prune", fraction=0.5, activation="alloc-t", active=0.75))
    act = b.manifest.activation
    assert act.pooled_base == 1 and sorted(act.k.values()) == [1, 2]
    pruned = get_adapter(model).keep_experts(model, {lp.layer_index: lp.resident for lp in b.layers})
    reference = _per_token_reference(pruned, act, lambda li, w: pooled_token_topk(w, act.k[li], 1))
    rt = build_runtime(b)
    ids = _ids(tok)
    assert torch.allclose(_logits(rt.model, ids), _logits(reference, ids), atol=1e-5)
    with pytest.raises(LightMoEError, match="on-demand loading"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "lru",
                     BuildOptions(policy="lru", fraction=0.5, activation="naee", active=0.75))


def test_activation_keeps_raw_weights_where_the_router_does_not_renormalise(tiny_moe, tmp_path):
    """OLMoE with norm_topk_prob=False: dropping a pick keeps the other raw probabilities, exactly as the same
    model with a smaller top-k (the Qwen3-MoE tests above cover a renormalising router)."""
    from transformers import OlmoeConfig, OlmoeForCausalLM

    root, _, tok = tiny_moe
    cfg = OlmoeConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, intermediate_size=16, num_experts=8, num_experts_per_tok=2,
                      norm_topk_prob=False, pad_token_id=tok.pad_token_id)
    torch.manual_seed(1)
    model = OlmoeForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "olmoe")
    tok.save_pretrained(tmp_path / "olmoe")
    prof = run_profile(model, tok, str(tmp_path / "olmoe"), load_recipe(root / "calib.yaml"), tmp_path / "p",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=32))
    b = build_bundle(prof, model, tok, str(tmp_path / "olmoe"), tmp_path / "b",
                     BuildOptions(policy="full", fraction=1.0, activation="topk", active=0.5))
    reference = copy.deepcopy(model)
    for layer in get_adapter(reference).moe_layers(reference):
        layer.router.top_k = 1
    ids = _ids(tok)
    assert torch.allclose(_logits(build_runtime(b).model, ids), _logits(reference, ids), atol=1e-5)


@pytest.mark.parametrize("activation", [None, "alloc-t"])
def test_batched_decoding_serves_several_requests_in_one_forward_per_step(prof, tiny_moe, tmp_path, activation):
    """Left-padded batch decoding gives each request the tokens it gets alone (full top-k); with Alloc-T a
    decode step's forward routes the whole batch (T = B tokens), so its pooled slots are shared across requests."""
    from lightmoe_cli.runtime.generate import generate_batch, generate_one

    root, model, tok = tiny_moe
    opts = BuildOptions(policy="full", fraction=1.0, activation=activation, active=0.75) if activation \
        else BuildOptions(policy="full", fraction=1.0)
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "batch", opts)
    rt = build_runtime(b)
    prompts = ["12 + 7 = ", "reverse lamp -> pmal\nreverse stone -> ", "45 - 3 = 42\n"]
    batch = generate_batch(rt, prompts, max_new_tokens=6)
    assert [r.prompt for r in batch] == prompts and all(0 < r.new_tokens <= 6 for r in batch)
    if activation is None:
        alone = [generate_one(rt, p, 6, [0]).text for p in prompts]
        assert [r.text for r in batch] == alone
    else:
        widths = []
        layer = rt.layers[0]
        original = layer._select

        def spy(index, weights):
            widths.append(index.reshape(-1, index.shape[-1]).shape[0])
            return original(index, weights)

        layer._select = spy
        generate_batch(rt, prompts, max_new_tokens=3)
        assert widths[1:] == [len(prompts)] * (len(widths) - 1)  # every decode step routes B = 3 tokens at once


def test_last_logits_only_gives_the_last_positions_logits(tiny_moe):
    from lightmoe_cli.runtime.generate import last_logits_only

    _, model, tok = tiny_moe
    ids = _ids(tok)
    kw = last_logits_only(model)
    assert kw, "the tiny model's causal-LM head takes logits_to_keep"
    with torch.no_grad():
        last = model(input_ids=ids, **kw).logits
    assert last.shape[1] == 1
    assert torch.allclose(last[:, -1], _logits(model, ids)[:, -1], atol=1e-5)

    class NoKeep(torch.nn.Module):
        def forward(self, input_ids, use_cache=False):
            return input_ids

    assert last_logits_only(NoKeep()) == {}
