"""`lightmoe export`: a static bundle as a transformers checkpoint whose logits equal the runtime's, placement rules
for llama.cpp and a vLLM expert list, and one-line refusals for bundles that are not a set of weights."""

import json

import pytest
import torch

from lightmoe_cli.bundle.artifact import load_bundle
from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.export.placement import LayerCost, gpu_layers, override_rule
from lightmoe_cli.export.run import ExportRequest, run_export
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.runtime.loader import build_runtime

TEXT = "12 + 7 = 19\n45 - 3 = 42\nreverse lamp -> pmal"


@pytest.fixture(scope="module")
def bundles(tiny_moe, tmp_path_factory):
    root, model, tok = tiny_moe
    work = tmp_path_factory.mktemp("export")
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), work / "p",
                       ProfileSettings(batch_size=4, seq_len=64))
    spec = {"uniform": ("prune", 0.5, {"uniform": True}), "prune": ("prune", 0.6, {}), "lru": ("lru", 0.5, {}),
            "lightmoe": ("lightmoe", 0.5, {})}
    return {k: build_bundle(prof, model, tok, str(root / "model"), work / k, BuildOptions(policy=p, fraction=f,
                                                                                           params=params))
            for k, (p, f, params) in spec.items()}


def _logits(model, tok):
    with torch.no_grad():
        return model(input_ids=tok(TEXT, return_tensors="pt").input_ids).logits.float()


def test_hf_export_loads_with_plain_transformers_and_gives_the_runtime_logits(bundles, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    b = bundles["uniform"]
    result = run_export(ExportRequest(b.path, format="hf", out=tmp_path / "hf"))
    out = result.out
    model, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    rt = build_runtime(b)
    assert (_logits(model, tok) - _logits(rt.model, rt.tokenizer)).abs().max() == 0
    sel = json.loads((out / "lightmoe_selection.json").read_text())
    assert sel["kept_experts"] == {str(lp.layer_index): lp.resident for lp in b.layers}
    assert model.config.num_experts == b.layers[0].slots == 4
    assert "vs original weights" in result.lines[0]
    assert not list(tmp_path.glob("hf.tmp-*"))


def test_a_managed_bundle_exports_one_task_set_and_dynamic_or_ragged_bundles_are_refused(bundles, tmp_path):
    lm = bundles["lightmoe"]
    with pytest.raises(LightMoEError, match="export --task T"):
        run_export(ExportRequest(lm.path, format="hf", out=tmp_path / "a"))
    task = sorted(lm.manifest.task_resident)[0]
    out = run_export(ExportRequest(lm.path, format="hf", out=tmp_path / "t", task=task)).out
    sel = json.loads((out / "lightmoe_selection.json").read_text())
    assert sel["selection"] == f"task:{task}"
    assert sel["kept_experts"] == {str(k): sorted(v) for k, v in lm.manifest.task_resident[task].items()}
    with pytest.raises(LightMoEError, match="no resident set for task 'nope'"):
        run_export(ExportRequest(lm.path, format="hf", out=tmp_path / "n", task="nope"))
    with pytest.raises(LightMoEError, match="loads experts at run time.*--uniform"):
        run_export(ExportRequest(bundles["lru"].path, format="hf", out=tmp_path / "l"))
    ragged = bundles["prune"]
    assert len({lp.slots for lp in ragged.layers}) > 1
    with pytest.raises(LightMoEError, match="different expert counts.*--uniform"):
        run_export(ExportRequest(ragged.path, format="hf", out=tmp_path / "r"))
    with pytest.raises(LightMoEError, match="unknown --format"):
        run_export(ExportRequest(lm.path, format="onnx", out=tmp_path / "o"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "l").exists()


def test_llamacpp_rules_put_the_least_covered_layers_on_the_gpu_within_memory(bundles, tmp_path):
    costs = [LayerCost(0, 100, 0.9), LayerCost(1, 100, 0.5), LayerCost(2, 100, 0.7), LayerCost(3, 100, 0.6)]
    assert gpu_layers(costs, 250) == [1, 3]
    assert override_rule([0, 2]) == r"blk\.(0|2)\.ffn_(gate|up|down)_exps\.weight=CPU"
    assert override_rule([]) is None
    b = bundles["uniform"]
    layer_bytes = b.manifest.model.bytes_per_expert[0] * b.layers[0].num_experts
    res = run_export(ExportRequest(b.path, format="llamacpp-ot", out=tmp_path / "ot.json", gpu_memory=layer_bytes))
    rules = json.loads((tmp_path / "ot.json").read_text())
    assert len(rules["gpu_layers"]) == 1 and rules["command"].startswith("llama-server -m model.gguf -ngl 99 -ot ")
    assert rules["command"] in res.lines
    half = run_export(ExportRequest(b.path, format="llamacpp-ot", out=tmp_path / "q.json", gpu_memory=layer_bytes,
                                    weight_bits=8))  # an 8-bit GGUF: half the bytes, twice the layers
    assert "2 of" in half.lines[0]
    with pytest.raises(LightMoEError, match="needs --gpu-memory"):
        run_export(ExportRequest(b.path, format="llamacpp-ot", out=tmp_path / "x.json"))


def test_vllm_profile_lists_kept_experts_per_layer_and_task(bundles, tmp_path):
    lm = bundles["lightmoe"]
    run_export(ExportRequest(lm.path, format="vllm-profile", out=tmp_path / "v.json"))
    data = json.loads((tmp_path / "v.json").read_text())
    assert data["kept_experts"] == {str(lp.layer_index): lp.resident for lp in lm.layers}
    assert set(data["task_kept_experts"]) == set(lm.manifest.task_resident)
    assert load_bundle(lm.path).manifest.budget  # the bundle itself is untouched


def test_a_uniform_activation_budget_exports_as_the_configs_experts_per_token(bundles, tiny_moe, tmp_path):
    """prune --uniform + --activation topk: every layer keeps k=1 of its top-2; the exported config says top-1 and
    plain transformers gives the runtime's logits. A per-layer k is refused."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightmoe_cli.profile.artifact import load_profile

    root, model, tok = tiny_moe
    prof = load_profile(bundles["uniform"].manifest.profile.path)
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b",
                     BuildOptions(policy="prune", fraction=0.5, params={"uniform": True}, activation="topk",
                                  active=0.5))
    assert set(b.manifest.activation.k.values()) == {1}
    out = run_export(ExportRequest(b.path, format="hf", out=tmp_path / "hf")).out
    exported, etok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert exported.config.num_experts_per_tok == 1
    rt = build_runtime(b)
    assert torch.allclose(_logits(exported, etok), _logits(rt.model, rt.tokenizer), atol=1e-5)
    import dataclasses

    ragged = dataclasses.replace(b.manifest.activation, k={li: 1 + (i % 2) for i, li in
                                                           enumerate(b.manifest.activation.k)})
    from lightmoe_cli.export.hf import activation_top_k

    with pytest.raises(LightMoEError, match="different k"):
        activation_top_k(type(b)(b.path, dataclasses.replace(b.manifest, activation=ragged)))
