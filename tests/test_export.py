"""`lightmoe export`: a static bundle as a transformers checkpoint whose logits equal the runtime's, placement rules
for llama.cpp and a vLLM expert list, and one-line refusals for bundles that are not a set of weights."""

import json
from pathlib import Path

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
    result = run_export(ExportRequest(bundle=b.path, format="hf", out=tmp_path / "hf"))
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
        run_export(ExportRequest(bundle=lm.path, format="hf", out=tmp_path / "a"))
    task = sorted(lm.manifest.task_resident)[0]
    out = run_export(ExportRequest(bundle=lm.path, format="hf", out=tmp_path / "t", task=task)).out
    sel = json.loads((out / "lightmoe_selection.json").read_text())
    assert sel["selection"] == f"task:{task}"
    assert sel["kept_experts"] == {str(k): sorted(v) for k, v in lm.manifest.task_resident[task].items()}
    with pytest.raises(LightMoEError, match="no resident set for task 'nope'"):
        run_export(ExportRequest(bundle=lm.path, format="hf", out=tmp_path / "n", task="nope"))
    with pytest.raises(LightMoEError, match="loads experts at run time.*--uniform"):
        run_export(ExportRequest(bundle=bundles["lru"].path, format="hf", out=tmp_path / "l"))
    ragged = bundles["prune"]
    assert len({lp.slots for lp in ragged.layers}) > 1
    with pytest.raises(LightMoEError, match="different expert counts.*--uniform"):
        run_export(ExportRequest(bundle=ragged.path, format="hf", out=tmp_path / "r"))
    with pytest.raises(LightMoEError, match="unknown --format"):
        run_export(ExportRequest(bundle=lm.path, format="onnx", out=tmp_path / "o"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "l").exists()


def test_llamacpp_rules_put_the_least_covered_layers_on_the_gpu_within_memory(bundles, tmp_path):
    costs = [LayerCost(0, 100, 0.9), LayerCost(1, 100, 0.5), LayerCost(2, 100, 0.7), LayerCost(3, 100, 0.6)]
    assert gpu_layers(costs, 250) == [1, 3]
    assert override_rule([0, 2]) == r"blk\.(0|2)\.ffn_(gate|up|down)_exps\.weight=CPU"
    assert override_rule([]) is None
    b = bundles["uniform"]
    layer_bytes = b.manifest.model.bytes_per_expert[0] * b.layers[0].num_experts
    res = run_export(ExportRequest(bundle=b.path, format="llamacpp-ot", out=tmp_path / "ot.json",
                                   gpu_memory=layer_bytes))
    rules = json.loads((tmp_path / "ot.json").read_text())
    assert len(rules["gpu_layers"]) == 1 and rules["command"].startswith("llama-server -m model.gguf -ngl 99 -ot ")
    assert rules["command"] in res.lines
    half = run_export(ExportRequest(bundle=b.path, format="llamacpp-ot", out=tmp_path / "q.json",
                                    gpu_memory=layer_bytes, weight_bits=8))  # an 8-bit GGUF: twice the layers
    assert "2 of" in half.lines[0]
    with pytest.raises(LightMoEError, match="needs --gpu-memory"):
        run_export(ExportRequest(bundle=b.path, format="llamacpp-ot", out=tmp_path / "x.json"))


def test_vllm_profile_lists_kept_experts_per_layer_and_task(bundles, tmp_path):
    lm = bundles["lightmoe"]
    run_export(ExportRequest(bundle=lm.path, format="vllm-profile", out=tmp_path / "v.json"))
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
    out = run_export(ExportRequest(bundle=b.path, format="hf", out=tmp_path / "hf")).out
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


def _with_activation_k(bundle, tmp_path, name: str, k_of) -> Path:
    """A copy of `bundle` whose activation budget gives layer i `k_of(i)` experts per token (the manifest's own
    file list does not cover the manifest, so the copy still loads)."""
    import shutil

    out = tmp_path / name
    shutil.copytree(bundle.path, out)
    m = json.loads((out / "manifest.json").read_text())
    m["activation"]["k"] = {li: k_of(i) for i, li in enumerate(sorted(m["activation"]["k"]))}
    (out / "manifest.json").write_text(json.dumps(m))
    return out


def test_an_activation_budget_reaches_every_format_or_is_refused_by_name(bundles, tiny_moe, tmp_path):
    """top-k 1 of 2 on every layer: the hf config says 1 (the gguf converter reads it there: test_export_gguf),
    llama.cpp is told `--override-kv qwen3moe.expert_used_count=int:1`, the vllm-profile lists k per layer. A
    per-layer budget (1 and 2): refused by name by hf and llamacpp-ot, listed layer by layer by vllm-profile."""
    from lightmoe_cli.profile.artifact import load_profile

    root, model, tok = tiny_moe
    prof = load_profile(bundles["uniform"].manifest.profile.path)
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b",
                     BuildOptions(policy="prune", fraction=0.5, params={"uniform": True}, activation="topk",
                                  active=0.5))
    hf = run_export(ExportRequest(bundle=b.path, format="hf", out=tmp_path / "hf")).out
    assert json.loads((hf / "config.json").read_text())["num_experts_per_tok"] == 1
    assert json.loads((hf / "lightmoe_selection.json").read_text())["experts_per_token"] == 1
    res = run_export(ExportRequest(bundle=b.path, format="llamacpp-ot", out=tmp_path / "ot.json", gpu_memory="1GiB"))
    rules = json.loads((tmp_path / "ot.json").read_text())
    assert rules["override_kv"] == "qwen3moe.expert_used_count=int:1" and rules["experts_per_token"] == 1
    assert rules["command"].endswith(" --override-kv qwen3moe.expert_used_count=int:1")
    assert rules["command"] in res.lines
    run_export(ExportRequest(bundle=b.path, format="vllm-profile", out=tmp_path / "v.json"))
    v = json.loads((tmp_path / "v.json").read_text())
    assert v["experts_per_token"] == {str(lp.layer_index): 1 for lp in b.layers}
    assert v["activation"]["rule"] == "topk" and v["activation"]["pooled_base"] is None

    ragged = _with_activation_k(b, tmp_path, "ragged", lambda i: 1 + i % 2)
    with pytest.raises(LightMoEError, match=r"different k \(\[1, 2\]\), which a transformers config"):
        run_export(ExportRequest(bundle=ragged, format="hf", out=tmp_path / "hf2"))
    with pytest.raises(LightMoEError, match="different k .* which llama.cpp's experts-per-token override"):
        run_export(ExportRequest(bundle=ragged, format="llamacpp-ot", out=tmp_path / "ot2.json", gpu_memory="1GiB"))
    run_export(ExportRequest(bundle=ragged, format="vllm-profile", out=tmp_path / "v2.json"))
    v2 = json.loads((tmp_path / "v2.json").read_text())
    assert sorted(v2["experts_per_token"].values()) == [1, 2]
    assert not (tmp_path / "hf2").exists() and not (tmp_path / "ot2.json").exists()


def test_an_export_replaces_its_own_kind_and_nothing_else(bundles, tmp_path):
    b = bundles["uniform"]
    out = tmp_path / "hf"
    run_export(ExportRequest(bundle=b.path, format="hf", out=out))
    run_export(ExportRequest(bundle=b.path, format="hf", out=out))  # an hf export: replaced
    run_export(ExportRequest(bundle=b.path, format="vllm-profile", out=tmp_path / "v.json"))
    run_export(ExportRequest(bundle=b.path, format="vllm-profile", out=tmp_path / "v.json"))  # the same: replaced
    with pytest.raises(LightMoEError, match="is a lightmoe expert-selection, not a lightmoe llamacpp-ot"):
        run_export(ExportRequest(bundle=b.path, format="llamacpp-ot", out=tmp_path / "v.json", gpu_memory="1GiB"))
    with pytest.raises(LightMoEError, match="a file lightmoe did not write, not a lightmoe expert-selection"):
        run_export(ExportRequest(bundle=b.path, format="vllm-profile", out=out / "config.json"))
    with pytest.raises(LightMoEError, match="is --bundle .*, an input of this command"):
        run_export(ExportRequest(bundle=b.path, format="hf", out=b.path, force=True))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "v.json"]
