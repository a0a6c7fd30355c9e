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
