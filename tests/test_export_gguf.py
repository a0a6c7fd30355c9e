"""`--format gguf` through llama.cpp's own converter: a missing converter is one line; on the demo model the GGUF
loaded by llama-cpp-python generates the same greedy tokens as transformers on the hf export (slow: needs
`just llama-cpp`)."""

import importlib.util

import pytest

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.export.gguf import export_gguf, find_converter


def test_a_missing_converter_names_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTMOE_LLAMA_CPP", str(tmp_path))
    monkeypatch.setattr("lightmoe_cli.export.gguf.REPO_ROOT", tmp_path)
    with pytest.raises(LightMoEError, match="just llama-cpp"):
        find_converter(tmp_path / "nowhere")
    with pytest.raises(LightMoEError, match="unknown GGUF type"):
        export_gguf(None, None, tmp_path / "m.gguf", outtype="q2")


def _have_converter() -> bool:
    try:
        find_converter()
    except LightMoEError:
        return False
    return True


@pytest.mark.skipif(not _have_converter(), reason="needs llama.cpp's converter: just llama-cpp")
def test_a_gguf_export_tells_llama_cpp_the_activation_budget(tmp_path):
    """On the demo model (the tiny test model has a dense layer the converter cannot map): prune --uniform with
    top-k 2 of 4 per token; the GGUF's `qwen3moe.expert_used_count` is 2, its expert count the kept 16, and it
    says it is lightmoe's (so a later export may replace it, and nothing else)."""
    import json

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.export.run import ExportRequest, run_export
    from lightmoe_cli.files import gguf_metadata, output_kind, sha256_file
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.profile.run import ensure_profile

    name = resolve_model(None)
    model, tok = load_model_and_tokenizer(name)
    b = build_bundle(ensure_profile(model, tok, name), model, tok, name, tmp_path / "b",
                     BuildOptions(policy="prune", fraction=0.5, params={"uniform": True}, activation="topk",
                                  active=0.5))
    assert set(b.manifest.activation.k.values()) == {2}
    out = run_export(ExportRequest(bundle=b.path, format="gguf", out=tmp_path / "m.gguf")).out
    meta = gguf_metadata(out)
    assert meta["general.architecture"] == "qwen3moe"
    assert meta["qwen3moe.expert_used_count"] == 2 and meta["qwen3moe.expert_count"] == 16
    assert meta["lightmoe.bundle_manifest_sha256"] == sha256_file(b.path / "manifest.json")
    assert output_kind(out) == "lightmoe-gguf"
    run_export(ExportRequest(bundle=b.path, format="gguf", out=out))  # its own kind: replaced
    m = json.loads((b.path / "manifest.json").read_text())
    m["activation"]["k"] = {li: 1 + i % 2 for i, li in enumerate(sorted(m["activation"]["k"]))}
    (b.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(LightMoEError, match="different k"):
        run_export(ExportRequest(bundle=b.path, format="gguf", out=tmp_path / "r.gguf"))
    assert not (tmp_path / "r.gguf").exists()


def _have_llama() -> bool:
    try:
        find_converter()
    except LightMoEError:
        return False
    return importlib.util.find_spec("llama_cpp") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _have_llama(), reason="needs llama.cpp's converter and llama-cpp-python: just llama-cpp")
def test_demo_model_gguf_generates_the_greedy_tokens_of_transformers(tmp_path):
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.export.hf import export_hf
    from lightmoe_cli.export.selection import select
    from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model
    from lightmoe_cli.profile.run import ensure_profile

    name = resolve_model(None)
    model, tok = load_model_and_tokenizer(name)
    prof = ensure_profile(model, tok, name)
    bundle = build_bundle(prof, model, tok, name, tmp_path / "b",
                          BuildOptions(policy="prune", fraction=0.5, params={"uniform": True}))
    sel = select("prune", {lp.layer_index: lp.resident for lp in bundle.layers}, {}, False)
    gguf = export_gguf(bundle, sel, tmp_path / "demo.gguf", outtype="f32")
    hf = export_hf(bundle, sel, tmp_path / "hf")
    ref, rtok = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(hf)
    llm = Llama(model_path=str(gguf), n_ctx=128, n_threads=2, verbose=False)
    try:
        for prompt in ["12 + 7 = ", "reverse lamp -> ", "The river", "upper dog -> "]:
            ids = rtok(prompt).input_ids
            with torch.no_grad():
                want = ref.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
            got = []
            for t in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
                got.append(int(t))
                if len(got) == len(want):
                    break
            llm.reset()
            assert got == want, prompt
    finally:
        llm.close()
    import sys

    sys.path.insert(0, str(find_converter() / "gguf-py"))
    from gguf import GGUFReader

    tensors = {t.name: t for t in GGUFReader(str(gguf)).tensors}
    kept = bundle.layers[0].slots
    assert kept == 16 and kept in tensors["blk.0.ffn_gate_exps.weight"].shape.tolist()  # only the kept experts
