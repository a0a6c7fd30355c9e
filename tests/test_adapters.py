"""MoE adapters on tiny random models of real transformers architectures.

Every check compares against something the adapter did not compute itself: the router's own returned indices,
the unmodified model's logits, the experts module's own forward on chosen experts.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError, UnsupportedModelError
from lightmoe_cli.models import (
    MoEAdapter,
    get_adapter,
    list_moe_architectures,
    record_routing,
    redirect_experts,
)
from lightmoe_cli.models.architectures import find_architecture
from lightmoe_cli.models.tiny_configs import tiny_config
from lightmoe_cli.selftest.run import models_command, quiet, run_selftest

FAMILIES = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3", "gpt_oss", "phimoe",
            "granitemoe", "qwen3_next"]


def build(arch: str, **overrides) -> nn.Module:
    """A tiny random model of `arch` (seeded), with config overrides."""
    info = find_architecture(arch)
    config = tiny_config(info)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(0)
    with quiet():
        return info.load_class()(config).eval()


def ids(batch: int = 2, seq: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 120, (batch, seq), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


@pytest.fixture(scope="module", params=FAMILIES)
def family(request) -> tuple[str, nn.Module, MoEAdapter]:
    model = build(request.param)
    return request.param, model, get_adapter(model)


def test_selftest_passes(family):
    name, _, _ = family
    result = run_selftest(name, pipeline=False)  # the pipeline half: tests/test_family_pipeline.py
    assert result.supported and result.passed, result.detail
    assert result.n_moe_layers >= 2 and result.num_experts == 8 and result.top_k == 2


def test_record_routing_equals_router_output(family):
    _, model, adapter = family
    layers = adapter.moe_layers(model)
    returned, traced = {}, {}
    handles = [layer.router.register_forward_hook(
        lambda m, a, out, i=layer.layer_index: returned.__setitem__(i, out[2].clone())) for layer in layers]
    x = ids()
    try:
        with record_routing(model, lambda i, index, weights: traced.__setitem__(i, (index, weights))):
            logits(model, x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(traced) == [layer.layer_index for layer in layers]
    for layer in layers:
        index, weights = traced[layer.layer_index]
        assert index.shape == weights.shape == (x.numel(), layer.top_k)  # [T = batch*seq, K]
        assert torch.equal(index, returned[layer.layer_index].reshape(-1, layer.top_k))
    # the hooks are gone after the context
    assert all(not layer.experts._forward_pre_hooks for layer in layers)


def test_traced_tokens_are_batch_major():
    """Row t of the trace is token (t // seq, t % seq): tracing a batch equals tracing each row alone."""
    model = build("mixtral")
    x = ids(batch=2, seq=6)
    per_row, whole = [], {}
    for row in x:
        got = {}
        with record_routing(model, lambda i, index, w, got=got: got.__setitem__(i, index)):
            logits(model, row[None])
        per_row.append(got)
    with record_routing(model, lambda i, index, w: whole.__setitem__(i, index)):
        logits(model, x)
    for i, index in whole.items():
        assert torch.equal(index, torch.cat([got[i] for got in per_row]))


def test_dense_layers_are_skipped_and_indices_are_real():
    dsv3 = build("deepseek_v3", first_k_dense_replace=1)
    layers = get_adapter(dsv3).moe_layers(dsv3)
    assert [layer.layer_index for layer in layers] == [1, 2]
    assert layers[0].block is dsv3.model.layers[1].mlp
    assert layers[0].shared_experts is dsv3.model.layers[1].mlp.shared_experts

    qwen = build("qwen2_moe", mlp_only_layers=[1])
    layers = get_adapter(qwen).moe_layers(qwen)
    assert [layer.layer_index for layer in layers] == [0, 2]
    assert layers[1].experts is qwen.model.layers[2].mlp.experts
    assert layers[1].shared_experts is qwen.model.layers[2].mlp.shared_expert
    traced = []
    with record_routing(qwen, lambda i, index, w: traced.append(i)):
        logits(qwen, ids())
    assert traced == [0, 2]


def test_keep_all_experts_is_identical(family):
    _, model, adapter = family
    x = ids()
    full = adapter.keep_experts(model, {layer.layer_index: list(range(layer.num_experts))
                                        for layer in adapter.moe_layers(model)})
    assert full is not model
    assert torch.equal(logits(full, x), logits(model, x))


def test_keep_subset_shrinks_and_runs(family):
    _, model, adapter = family
    x = ids()
    before = logits(model, x)
    layers = adapter.moe_layers(model)
    keep = {layer.layer_index: [1, 2, 5, 6] for layer in layers}
    small = adapter.keep_experts(model, keep)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for old, new in zip(layers, adapter.moe_layers(small), strict=True):
        assert new.num_experts == 4
        for name, tensor in adapter.expert_tensors(new).items():
            assert tensor.shape[0] == 4, name
            assert torch.equal(tensor, adapter.expert_tensors(old)[name][[1, 2, 5, 6]])
            # its own storage, not a view into the old [8, ...] tensor: the dropped experts' memory is gone
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        router_weight = next(p for p in new.router.parameters() if p.ndim == 2)
        assert router_weight.shape[0] == 4
    out = logits(small, x)
    assert torch.isfinite(out).all()
    assert torch.equal(logits(model, x), before)  # the original is untouched


def test_keep_routes_among_kept_experts_only():
    """Mixtral after keep: each token's experts are the top-2 of the original router logits over kept ones."""
    model = build("mixtral")
    adapter = get_adapter(model)
    kept = [0, 3, 4, 7]
    small = adapter.keep_experts(model, {layer.layer_index: kept for layer in adapter.moe_layers(model)})
    first = adapter.moe_layers(model)[0]
    x = ids()
    hidden = {}
    handle = first.router.register_forward_hook(lambda m, a, out: hidden.__setitem__("logits", out[0]))
    logits(model, x)
    handle.remove()
    traced = {}
    with record_routing(small, lambda i, index, w: traced.setdefault(i, index)):
        logits(small, x)
    expected = torch.topk(hidden["logits"][:, kept], 2, dim=-1).indices  # [T, 2] in new numbering
    assert torch.equal(traced[first.layer_index], expected)


def test_keep_fewer_than_top_k_lowers_top_k():
    model = build("mixtral")
    adapter = get_adapter(model)
    small = adapter.keep_experts(model, {layer.layer_index: [5] for layer in adapter.moe_layers(model)})
    assert all(layer.top_k == 1 and layer.num_experts == 1 for layer in adapter.moe_layers(small))
    traced = []
    with record_routing(small, lambda i, index, w: traced.append(index)):
        assert torch.isfinite(logits(small, ids())).all()
    assert all(index.shape[1] == 1 and int(index.max()) == 0 for index in traced)


def test_keep_rejects_bad_requests():
    model = build("deepseek_v3")
    adapter = get_adapter(model)
    with pytest.raises(LightMoEError, match="not an MoE layer"):
        adapter.keep_experts(model, {0: [1, 2]})  # layer 0 is dense
    with pytest.raises(LightMoEError, match="at least 2"):
        adapter.keep_experts(model, {1: [3]})  # group-limited routing ranks groups by their best two
    with pytest.raises(LightMoEError, match="distinct"):
        adapter.keep_experts(model, {1: [3, 3]})


def _experts_output(layer, hidden: torch.Tensor, expert: int) -> torch.Tensor:
    """The experts module's own forward with every token sent to `expert` at weight 1."""
    index = torch.full((hidden.shape[0], 1), expert, dtype=torch.long)
    with torch.no_grad():
        return layer.experts(hidden, index, torch.ones(hidden.shape[0], 1))


def test_read_write_round_trip_and_copy(family):
    name, _, _ = family
    model = build(name)  # a fresh copy: this test writes weights
    adapter = get_adapter(model)
    layer = adapter.moe_layers(model)[-1]
    hidden = torch.randn(5, model.config.hidden_size, generator=torch.Generator().manual_seed(2))
    a, b = 2, 6
    tensors = adapter.read_expert(layer, a)
    assert set(tensors) == set(adapter.expert_tensors(layer))
    assert sum(t.numel() * t.element_size() for t in tensors.values()) == adapter.bytes_per_expert(layer)
    adapter.write_expert(layer, a, tensors)  # writing back what was read changes nothing
    assert all(torch.equal(adapter.read_expert(layer, a)[k], v) for k, v in tensors.items())
    out_a = _experts_output(layer, hidden, a)
    assert not torch.allclose(_experts_output(layer, hidden, b), out_a)
    adapter.write_expert(layer, b, tensors)
    assert torch.allclose(_experts_output(layer, hidden, b), out_a, atol=1e-6)
    with pytest.raises(LightMoEError):
        adapter.write_expert(layer, b, {k: v[..., :1] for k, v in tensors.items()})


def test_fused_layouts_are_read_per_family():
    gpt_oss = build("gpt_oss")
    adapter = get_adapter(gpt_oss)
    layer = adapter.moe_layers(gpt_oss)[0]
    tensors = adapter.read_expert(layer, 0)
    assert set(tensors) == {"gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"}
    hidden, inter = gpt_oss.config.hidden_size, gpt_oss.config.intermediate_size
    assert tensors["gate_up_proj"].shape == (hidden, 2 * inter)  # transposed layout, as stored
    mixtral = build("mixtral")
    layer = get_adapter(mixtral).moe_layers(mixtral)[0]
    hidden, inter = mixtral.config.hidden_size, mixtral.config.intermediate_size
    assert get_adapter(mixtral).bytes_per_expert(layer) == 4 * (2 * inter * hidden + hidden * inter)


def test_redirect_experts(family):
    _, model, adapter = family
    layers = adapter.moe_layers(model)
    table = {}
    for layer in layers:
        t = torch.arange(layer.num_experts)
        t[0] = 1
        table[layer.layer_index] = t
    x = ids(seq=16)
    routed, redirected = [], []
    with record_routing(model, lambda i, index, w: routed.append(index)):
        logits(model, x)
    with redirect_experts(model, table), record_routing(model, lambda i, index, w: redirected.append(index)):
        out = logits(model, x)
    assert torch.isfinite(out).all()
    assert any(bool((index == 0).any()) for index in routed)  # expert 0 was used before
    assert not any(bool((index == 0).any()) for index in redirected)
    assert len(routed) == len(redirected)
    # the first MoE layer sees the same hidden states, so its routing changes exactly by the table
    assert torch.equal(redirected[0], torch.where(routed[0] == 0, 1, routed[0]))


def test_redirect_rejects_bad_tables():
    model = build("mixtral")
    with pytest.raises(LightMoEError, match="LongTensor"):
        with redirect_experts(model, {0: torch.arange(4)}):
            pass
    with pytest.raises(LightMoEError, match="not an MoE layer"):
        with redirect_experts(model, {7: torch.arange(8)}):
            pass


def test_unsupported_model_names_the_supported_ones():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(UnsupportedModelError, match="LlamaForCausalLM has no MoE layers lightmoe knows; "
                                                    "supported: .*mixtral"):
        get_adapter(LlamaForCausalLM(config))


def test_list_moe_architectures():
    archs = list_moe_architectures()
    names = {a.class_name: a for a in archs}
    assert len(archs) >= 50
    assert all(a.class_name.endswith("ForCausalLM") for a in archs)
    assert names["MixtralForCausalLM"].model_type == "mixtral"
    assert names["MixtralForCausalLM"].config_class_name == "MixtralConfig"
    assert names["DeepseekV3ForCausalLM"].model_type == "deepseek_v3"
    assert "LlamaForCausalLM" not in names


def test_models_command_prints_table_and_summary(capsys):
    models_command(["mixtral", "olmoe"])  # the pipeline runs too, by default
    out = capsys.readouterr().out
    assert "MixtralForCausalLM" in out and "OlmoeForCausalLM" in out
    assert "2/2 passed (100%)" in out and "pipeline ran" in out
    models_command(["qwen3_moe"], run_selftest=False)
    assert "skipped" in capsys.readouterr().out
    with pytest.raises(LightMoEError, match="unknown MoE architecture"):
        models_command(["not_a_model"])


@pytest.mark.slow
def test_whole_sweep_passes_at_least_90_percent():
    results = [run_selftest(info, pipeline=False) for info in list_moe_architectures()]
    passed = [r for r in results if r.passed]
    failures = {r.arch: r.detail for r in results if not r.passed}
    assert len(passed) / len(results) >= 0.9, failures


# ---- the adapter API the profiler uses: expert inputs and one expert's output --------------------------------

# Families whose experts take (hidden, index, weights), plus those that break that rule (llama4, jetmoe: the
# experts never see indices), reshape their output (dbrx) or need two picks per token (longcat_flash).
EXPERT_API_FAMILIES = [*FAMILIES, "llama4_text", "jetmoe", "dbrx", "longcat_flash"]


@pytest.mark.parametrize("arch", EXPERT_API_FAMILIES)
def test_expert_input_hook_sees_block_input_and_routing(arch):
    """The hook's states are the MoE block's own input (as [T, H]) and its routing is the traced routing."""
    model = build(arch)
    adapter = get_adapter(model)
    layers = adapter.moe_layers(model)
    seen, block_inputs, traced = {}, {}, {}
    handles = [adapter.add_expert_input_hook(
        layer, lambda h, i, w, li=layer.layer_index: seen.setdefault(li, (h, i, w))) for layer in layers]
    handles += [layer.block.register_forward_pre_hook(
        lambda m, args, li=layer.layer_index: block_inputs.setdefault(li, args[0])) for layer in layers]
    x = ids()
    try:
        with record_routing(model, lambda i, index, weights: traced.setdefault(i, (index, weights))):
            logits(model, x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == [layer.layer_index for layer in layers]
    for layer in layers:
        hidden, index, weights = seen[layer.layer_index]
        assert hidden.shape == (x.numel(), model.config.hidden_size)  # [T, H]
        assert torch.equal(hidden, block_inputs[layer.layer_index].reshape(hidden.shape))
        assert torch.equal(index, traced[layer.layer_index][0])  # [T, K]
        assert torch.equal(weights, traced[layer.layer_index][1])


@pytest.mark.parametrize("arch", EXPERT_API_FAMILIES)
def test_run_expert_is_the_block_with_every_token_on_that_expert(arch):
    """run_expert(e, h) == block(h) with every token routed to e at weight 1, minus block(h) at weight 0
    (which cancels shared experts and biases): the family's own forward decides, not our reading of it."""
    model = build(arch)
    adapter = get_adapter(model)
    layer = adapter.moe_layers(model)[0]
    hidden = torch.randn(6, model.config.hidden_size, generator=torch.Generator().manual_seed(3))  # [N, H]

    def block_output(e: int, weight: float) -> torch.Tensor:
        def force(index: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            new_weights = torch.zeros_like(weights)
            new_weights[:, 0] = weight
            return torch.full_like(index, e), new_weights  # [T, K]: e in every slot, weight on the first only

        handle = adapter.add_routing_hook(layer, force)
        try:
            with torch.no_grad():
                out = layer.block(hidden[None])
        finally:
            handle.remove()
        return (out[0] if isinstance(out, tuple) else out).reshape(hidden.shape)

    for e in (0, 5):
        with torch.no_grad():
            got = adapter.run_expert(layer, e, hidden)
        assert got.shape == hidden.shape
        torch.testing.assert_close(got, block_output(e, 1.0) - block_output(e, 0.0), atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert not torch.allclose(adapter.run_expert(layer, 0, hidden), adapter.run_expert(layer, 5, hidden))
    with pytest.raises(LightMoEError):
        adapter.run_expert(layer, layer.num_experts, hidden)


def test_llama4_routing_hook_writes_scores_as_wide_as_the_expert_pool():
    """A routing function may map experts to slots of a smaller pool (the runtime does): the experts then run
    only the pool's rows, and the dropped sentinel (an id past the pool) adds nothing."""
    model = build("llama4_text")
    adapter = get_adapter(model)
    layer = adapter.moe_layers(model)[0]
    scores = []
    handle = adapter.add_routing_hook(layer, lambda index, weights: (torch.where(index < 4, index, 4), weights))
    probe = layer.router.register_forward_hook(lambda m, a, out: scores.append(out[0]))
    layer.experts.gate_up_proj = nn.Parameter(layer.experts.gate_up_proj[:4].detach().clone())  # a 4-row pool
    layer.experts.down_proj = nn.Parameter(layer.experts.down_proj[:4].detach().clone())
    try:
        with torch.no_grad():
            out, _ = layer.block(torch.randn(1, 5, model.config.hidden_size))
    finally:
        handle.remove()
        probe.remove()
    assert torch.isfinite(out).all()
    assert scores[0].shape == (5, 4)  # [T, pool rows]


def test_no_module_outside_models_reaches_into_adapters():
    """Only models/ may import the adapters' private names or call an experts module itself."""
    import re
    from pathlib import Path

    import lightmoe_cli

    package = Path(lightmoe_cli.__file__).parent
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.parent.name == "models" and path.parent.parent == package:
            continue
        source = path.read_text()
        if re.search(r"from lightmoe_cli\.models[.\w]* import [^\n]*\b_\w+", source) \
                or re.search(r"\.experts\(", source):
            offenders.append(path.relative_to(package).as_posix())
    assert offenders == []


def test_which_families_can_change_top_k():
    from lightmoe_cli.models.adapter import MoEAdapter
    from lightmoe_cli.models.families import JetMoeAdapter, Llama4Adapter

    assert MoEAdapter().can_change_top_k()
    assert not Llama4Adapter().can_change_top_k() and not JetMoeAdapter().can_change_top_k()
