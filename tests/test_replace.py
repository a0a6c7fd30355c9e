"""Expert replacing (`replace`): selection under a compression, SVD-initialised low-rank terms, annealed recovery
that resumes, and a runtime that serves a replaced expert as base slot + low-rank term."""

import copy

import pytest
import torch

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.models import get_adapter
from lightmoe_cli.policies.replace_select import base_experts, kept_slots, lowrank_bytes, max_compression
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.replace.construct import calibration_windows, init_states
from lightmoe_cli.replace.lowrank import svd_factors
from lightmoe_cli.replace.recover import RecoverySettings, install, recover
from lightmoe_cli.runtime.loader import build_runtime

TEXT = "12 + 7 = 19\n45 - 3 = 42\nreverse lamp -> pmal\nupper dog -> DOG"


@pytest.fixture(scope="module")
def prof(tiny_moe, tmp_path_factory):
    root, model, tok = tiny_moe
    return run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"),
                       tmp_path_factory.mktemp("rep") / "p", ProfileSettings(batch_size=4, seq_len=64))


def _logits(model, tok, text=TEXT):
    with torch.no_grad():
        return model(input_ids=tok(text, return_tensors="pt").input_ids).logits


def test_kept_experts_follow_the_compression_and_a_too_large_one_is_refused_with_its_range():
    share = lowrank_bytes(32, 16, 2, 1) / (3 * 32 * 16)
    assert kept_slots(0.3, share, 2, 8, 2) == 10  # (0.7 - s) / (1 - s) of 16 experts
    assert kept_slots(0.3, 0.0, 2, 8, 2) == 11  # no term to pay for: 70% of the experts stay whole
    top = max_compression(share, 2, 8)
    kept_slots(top - 1e-9, share, 2, 8, 2)
    with pytest.raises(LightMoEError, match=r"fewer than top-k=2 of 8 experts.*use a value in \(0, 0\.64\]"):
        kept_slots(0.7, share, 2, 8, 2)
    sim = torch.tensor([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]]).numpy()
    assert base_experts(sim, [1, 2]) == {0: 2}


def test_svd_factors_are_the_best_rank_r_approximation():
    torch.manual_seed(0)
    delta = torch.randn(12, 6)
    a, b = svd_factors(delta, 6)
    assert torch.allclose(a @ b, delta, atol=1e-5)  # full rank: exact
    a, b = svd_factors(delta, 2)
    s = torch.linalg.svdvals(delta)
    assert torch.linalg.matrix_norm(delta - a @ b) ** 2 == pytest.approx(float((s[2:] ** 2).sum()), rel=1e-4)


def test_a_full_rank_replacement_is_the_original_expert(tiny_moe):
    """base + full-rank SVD of (own - base) = own weights: the replaced model's logits equal the original's."""
    _, model, tok = tiny_moe
    layers = get_adapter(model).moe_layers(model)
    want = _logits(model, tok)
    states = init_states(layers, {m.layer_index: {1: 0, 5: 2, 7: 0} for m in layers}, rank=32)
    restore = install(layers, states)
    try:
        assert torch.allclose(_logits(model, tok), want, atol=1e-4)
        states[layers[0].layer_index].factors.gate_up_a.data.zero_()  # no term: the base alone differs
        assert not torch.allclose(_logits(model, tok), want, atol=1e-3)
    finally:
        restore()
    assert torch.equal(_logits(model, tok), want)  # restored


def test_annealing_schedule():
    s = RecoverySettings(steps=100, anneal=0.5)
    assert [s.alpha(0), s.alpha(25), s.alpha(50), s.alpha(99)] == [0.0, 0.5, 1.0, 1.0]
    assert RecoverySettings(steps=100, anneal=0.0).alpha(0) == 1.0


def test_recovery_lowers_the_replaced_loss_and_an_interrupted_run_resumes_to_the_same_factors(tiny_moe, tmp_path):
    root, model, tok = tiny_moe
    layers = get_adapter(model).moe_layers(model)
    bases = {m.layer_index: {1: 0, 3: 2, 6: 4} for m in layers}
    windows = calibration_windows(tok, load_recipe(root / "calib.yaml"), 32)
    assert windows.shape[1] == 32 and windows.shape[0] >= 8
    settings = RecoverySettings(steps=12, lr=5e-3, anneal=0.5, batch_size=4, seq_len=32, checkpoint_every=5)
    before = copy.deepcopy(model.state_dict())

    whole = init_states(layers, bases, rank=2)
    rec = recover(model, layers, whole, windows, settings)
    assert rec.probe_after < rec.probe_before  # training recovers what the replacement lost
    assert len(rec.losses) == 12 and rec.seconds > 0 and rec.peak_rss_mib > 0

    parts = init_states(layers, bases, rank=2)
    first = recover(model, layers, parts, windows, settings, ckpt=tmp_path / "ck", key="k", stop_after=7)
    assert len(first.losses) == 7
    parts = init_states(layers, bases, rank=2)  # a new process: fresh factors, then the checkpoint
    second = recover(model, layers, parts, windows, settings, ckpt=tmp_path / "ck", key="k")
    assert second.resumed_at == 5 and len(second.losses) == 12
    for li in whole:
        for (n, p), (_, q) in zip(whole[li].factors.named_parameters(), parts[li].factors.named_parameters(),
                                  strict=True):
            assert torch.allclose(p, q, atol=1e-6), n
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # only the factors trained
    other = init_states(layers, bases, rank=2)
    assert recover(model, layers, other, windows, settings, ckpt=tmp_path / "ck", key="other",
                   stop_after=1).resumed_at is None  # another run's checkpoint is not resumed
    with pytest.raises(LightMoEError, match="no tokens"):
        recover(model, layers, other, windows[:0], settings)


def test_replace_bundle_runtime_serves_base_plus_lowrank_and_reports_its_memory(prof, tiny_moe, tmp_path):
    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "r",
                     BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 0}))
    rec = b.manifest.replacement
    assert rec.rank == 2 and sum(len(v) for v in rec.base.values()) == 16 - 10
    assert (b.path / "lowrank.safetensors").exists() and not (tmp_path / "r.recover").exists()
    rt = build_runtime(b)
    assert rt.resident_expert_bytes() == b.manifest.budget.resident_expert_bytes
    assert b.manifest.budget.resident_fraction == pytest.approx(0.7, abs=0.03)
    got = _logits(rt.model, rt.tokenizer)
    # the same replacement at training time on the full model: same bases, SVD init, alpha 1
    layers = get_adapter(model).moe_layers(model)
    restore = install(layers, init_states(layers, rec.base, rank=2))
    try:
        want = _logits(model, tok)
    finally:
        restore()
    assert torch.allclose(got, want, atol=1e-4)
    rt.finish()
    assert sum(m.stats.redirects for m in rt.layers) > 0 and sum(m.stats.hits for m in rt.layers) > 0
    naive = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "n",
                         BuildOptions(policy="replace", params={"compression": 0.3, "rank": 0}))
    assert naive.manifest.replacement.lowrank_bytes == 0
    from lightmoe_cli.evaluation.run import _configs_from_bundles

    configs = _configs_from_bundles([tmp_path / "r", tmp_path / "n"])  # one policy, one budget: an ablation row
    assert [c.label for c in configs] == ["replace", "replace (n)"] and configs[0].budget == 0.7
    assert not torch.allclose(_logits(build_runtime(naive).model, tok), got, atol=1e-3)


def test_replace_refuses_a_recovery_recipe_without_text_and_too_much_compression(prof, tiny_moe, tmp_path,
                                                                                monkeypatch):
    root, model, tok = tiny_moe
    (tmp_path / "empty.jsonl").write_text('{"text": "1"}\n')
    (tmp_path / "r.yaml").write_text("max_tokens: 10\ntasks:\n"
                                     "  - {name: t, source: {type: jsonl, path: empty.jsonl}}\n")
    with pytest.raises(LightMoEError, match="yields no window"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "a",
                     BuildOptions(policy="replace", params={"rank": 2, "recover_steps": 3,
                                                            "recover_tasks": str(tmp_path / "r.yaml")}))
    with pytest.raises(LightMoEError, match="use a value in"):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b",
                     BuildOptions(policy="replace", params={"compression": 0.9, "rank": 2}))
    def no_training(*args, **kwargs):
        raise AssertionError("the recovery trained before the refusal")

    monkeypatch.setattr("lightmoe_cli.replace.construct.build_replacement", no_training)
    with pytest.raises(LightMoEError, match="drops picks per token, which expert replacing"):  # refused before training
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "c",
                     BuildOptions(policy="replace", params={"rank": 2, "recover_steps": 3}, activation="naee",
                                  active=0.5))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "c").exists() and not (tmp_path / "c.recover").exists()


def test_merge_clusters_similar_experts_into_their_most_used_member():
    from lightmoe_cli.policies.residency.merge import cluster_experts

    sim = torch.eye(5).numpy()
    sim[0, 1] = sim[1, 0] = sim[2, 3] = sim[3, 2] = 0.9
    sim[2, 4] = sim[4, 2] = sim[3, 4] = sim[4, 3] = 0.8
    mass = torch.tensor([1.0, 3.0, 2.0, 0.5, 0.1]).numpy()
    assert cluster_experts(sim, mass, 2) == [1, 1, 2, 2, 2]
    assert cluster_experts(sim, mass, 5) == [0, 1, 2, 3, 4]


def test_merge_and_prune_lora_bundles_store_changed_weights_and_serve(prof, tiny_moe, tmp_path):
    root, model, tok = tiny_moe
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    merged = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "m",
                          BuildOptions(policy="merge", fraction=0.5))
    lp = merged.layers[0]
    rep = next(r for r in lp.resident if lp.redirect.count(r) > 1)
    members = [e for e, t in enumerate(lp.redirect) if t == rep]
    mass = prof.total_stats()[lp.layer_index].gate_mass.double()
    w = mass[members] / mass[members].sum()
    want = sum(float(wi) * adapter.read_expert(layers[0], e)["down_proj"].double()
               for wi, e in zip(w, members, strict=True))
    from lightmoe_cli.runtime.loader import ExpertStore

    stored = merged.layout(lp.layer_index).split(ExpertStore(merged).read(lp.layer_index, rep))["down_proj"]
    assert torch.allclose(stored.double(), want, atol=1e-5)
    rt = build_runtime(merged)
    _logits(rt.model, rt.tokenizer)
    rt.finish()
    assert sum(m.stats.redirects for m in rt.layers) > 0 and sum(m.stats.drops for m in rt.layers) == 0

    lora = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "l",
                        BuildOptions(policy="prune-lora", fraction=0.5,
                                     params={"rank": 2, "recover_steps": 8, "lr": 5e-3}))
    rec = lora.manifest.replacement.recovery
    kept = sum(lp.slots for lp in lora.layers)
    assert rec["trainable_params"] == kept * 2 * (2 * 16 + 32 + 32 + 16)
    assert rec["probe_after"] < rec["probe_before"]
    prune = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "p", BuildOptions(policy="prune",
                                                                                            fraction=0.5))
    assert [lp.resident for lp in lora.layers] == [lp.resident for lp in prune.layers]
    assert not torch.allclose(_logits(build_runtime(lora).model, tok), _logits(build_runtime(prune).model, tok),
                              atol=1e-4)


def test_an_interrupted_replace_build_resumes_its_recovery_to_the_same_factors(prof, tiny_moe, tmp_path, monkeypatch):
    """Ctrl-C during recovery leaves `<out>.recover` (checkpointed every 25 steps); the same build then resumes from
    it and ends with the factors of an uninterrupted build."""
    from safetensors.torch import load_file

    from lightmoe_cli.replace import recover as rec

    root, model, tok = tiny_moe
    opts = BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 40,
                                                  "lr": 5e-3})
    whole = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "whole", opts)
    alpha = rec.RecoverySettings.alpha

    def interrupt_at_30(self, step):
        if step == 30:
            raise KeyboardInterrupt
        return alpha(self, step)

    monkeypatch.setattr(rec.RecoverySettings, "alpha", interrupt_at_30)
    with pytest.raises(KeyboardInterrupt):
        build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b", opts)
    assert (tmp_path / "b.recover" / "recovery.safetensors").exists() and not (tmp_path / "b").exists()
    monkeypatch.setattr(rec.RecoverySettings, "alpha", alpha)
    resumed = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b", opts)
    assert resumed.manifest.replacement.recovery["resumed_at"] == 25
    assert not (tmp_path / "b.recover").exists()
    a, b = load_file(str(whole.path / "lowrank.safetensors")), load_file(str(resumed.path / "lowrank.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_similarity_selection_replaces_near_duplicates_before_rarely_used_unique_experts():
    from lightmoe_cli.policies.replace_select import keep_value

    mass = torch.tensor([4.0, 4.0, 1.0, 3.0]).numpy()
    sim = torch.eye(4).numpy()
    sim[0, 1] = sim[1, 0] = 0.95  # 0 and 1 are near-duplicates: one can stand in for the other
    v = keep_value(mass, sim)
    assert v[2] > v[0] and v[3] > v[1]  # the unique experts are worth more than the duplicates, mass notwithstanding
    alone = keep_value(mass, torch.eye(4).numpy())  # no neighbour alike: the value is the mass share
    assert alone / alone.sum() == pytest.approx(mass / mass.sum())


def test_recovery_reads_its_own_text_budget_not_the_profiles_and_scores_a_heldout_slice(prof, tiny_moe, tmp_path):
    """The profile kept 600 tokens per task; a recovery of 6 x 8 x 64 = 3,072 tokens reads that much text of the
    recipe (plus its held-out slice), records the held-out loss before, during and after, and says how many
    times it went over its text."""
    root, model, tok = tiny_moe
    assert prof.manifest.recipe["tasks"][0]["max_tokens"] == 600
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "r",
                     BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 6,
                                                            "lr": 5e-3}))
    rec = b.manifest.replacement.recovery
    assert rec["tokens_needed"] == 6 * 8 * 128
    assert rec["tokens"] + rec["heldout_tokens"] > 2 * 600  # more than the profile's text
    assert rec["tokens"] >= rec["tokens_needed"] or rec["epochs"] > 1.0
    assert rec["epochs"] == pytest.approx(rec["tokens_needed"] / rec["tokens"], rel=1e-3)
    steps = [s for s, _ in rec["heldout_losses"]]
    assert steps[0] == 0 and steps[-1] == 6 and rec["heldout_before"] == rec["heldout_losses"][0][1]
    assert rec["heldout_after"] == min(x for _, x in rec["heldout_losses"]) <= rec["heldout_before"]


def test_a_recovery_that_gets_worse_keeps_its_starting_factors(tiny_moe, monkeypatch):
    """Scored on held-out windows, a run whose steps wreck the factors ends with the SVD initialisation."""
    root, model, tok = tiny_moe
    layers = get_adapter(model).moe_layers(model)
    bases = {m.layer_index: {1: 0, 3: 2} for m in layers}
    windows = calibration_windows(tok, load_recipe(root / "calib.yaml"), 32)
    settings = RecoverySettings(steps=6, lr=1e-3, anneal=0.0, batch_size=4, seq_len=32, eval_every=3)
    gen = torch.Generator().manual_seed(0)

    @torch.no_grad()
    def wreck(self, closure=None):  # every step throws the factors far off: held-out loss only rises
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(torch.randn(p.shape, generator=gen) * 50)

    monkeypatch.setattr(torch.optim.AdamW, "step", wreck)
    start = init_states(layers, bases, rank=2)
    states = init_states(layers, bases, rank=2)
    rec = recover(model, layers, states, windows[4:], settings, heldout=windows[:4])
    assert rec.heldout_best_step == 0 and rec.heldout_after == rec.heldout_before
    assert [s for s, _ in rec.heldout_losses] == [0, 3, 6]
    for li in states:
        for (n, p), (_, q) in zip(states[li].factors.named_parameters(), start[li].factors.named_parameters(),
                                  strict=True):
            assert torch.equal(p, q), n


def test_a_short_recovery_recipe_is_reported_in_one_warning_line(prof, tiny_moe, tmp_path):
    from lightmoe_cli.report import recovery_warning

    root, model, tok = tiny_moe
    (tmp_path / "short.jsonl").write_text('{"text": "' + "12 + 7 = 19. " * 40 + '"}\n')
    (tmp_path / "short.yaml").write_text("tasks:\n  - {name: arithmetic, source: {type: jsonl, path: short.jsonl}}\n")
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "r",
                     BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 4,
                                                            "recover_tasks": str(tmp_path / "short.yaml")}))
    rec = b.manifest.replacement.recovery
    assert rec["epochs"] > 1.0
    line = recovery_warning(b)
    assert line is not None and "\n" not in line and f"{rec['epochs']:.1f} times" in line
    long = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "ok",
                        BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 1}))
    assert long.manifest.replacement.recovery["epochs"] <= 1.0 and recovery_warning(long) is None


def test_eval_rows_carry_each_bundles_own_memory(prof, tiny_moe, tmp_path):
    """A full bundle (built with a --budget it ignores) is a row at 1.00; a replace bundle at its own fraction."""
    from lightmoe_cli.evaluation.render import _mem
    from lightmoe_cli.evaluation.run import _configs_from_bundles

    root, model, tok = tiny_moe
    full = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "full",
                        BuildOptions(policy="full", fraction=0.5))
    rep = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "rep",
                       BuildOptions(policy="replace", params={"compression": 0.3, "rank": 2, "recover_steps": 0}))
    configs = _configs_from_bundles([full.path, rep.path])
    assert [c.budget for c in configs] == [1.0, pytest.approx(0.7)]
    row = {"budget_fraction": 0.7, "resident_fraction": rep.manifest.budget.resident_fraction}
    assert _mem(row) == f"{rep.manifest.budget.resident_fraction:.2f}" and _mem({"budget_fraction": 0.5}) == "0.50"
    assert full.manifest.budget.resident_fraction == 1.0
