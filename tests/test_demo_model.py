"""The shipped demo model: loads with plain transformers, is really trained, and routes by domain."""

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from lightmoe_cli.analysis.routing_stats import js_divergence_bits, top_half_coverage
from lightmoe_cli.demo.generators import generate_problems
from lightmoe_cli.loading import DEFAULT_MODEL
from lightmoe_cli.models import get_adapter, record_routing


@pytest.fixture(scope="module")
def demo():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(DEFAULT_MODEL)


def _loss(model, ids: torch.Tensor) -> float:
    with torch.no_grad():
        return model(input_ids=ids, labels=ids).loss.item()


def _code_text() -> str:
    return (Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text()


def test_files_and_config(demo):
    model, tok = demo
    files = {p.name for p in DEFAULT_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md", "training.json"} <= files
    assert (DEFAULT_MODEL / "model.safetensors").stat().st_size <= 50 * 2**20
    cfg = model.config
    assert cfg.model_type == "qwen3_moe" and cfg.num_experts >= 32 and 4 <= cfg.num_experts_per_tok <= 8
    assert 4096 <= len(tok) <= 8192
    text = "1:3 Y dijo Dios: Sea la luz\ndef f(x):\n    return x ** 2  # ñ"
    assert tok.decode(tok(text)["input_ids"]) == text


def test_model_is_trained_not_random(demo):
    from transformers import Qwen3MoeForCausalLM

    model, tok = demo
    problems = "\n".join(p.text for p in generate_problems("arithmetic", 40, seed=99))
    ids = tok(problems, return_tensors="pt").input_ids[:, :256]
    torch.manual_seed(0)
    untrained = Qwen3MoeForCausalLM(model.config).eval()
    trained_loss, random_loss = _loss(model, ids), _loss(untrained, ids)
    assert random_loss > 8.0  # ~ln(vocab): knows nothing
    assert trained_loss < 0.35 * random_loss, trained_loss
    code = tok(_code_text(), return_tensors="pt").input_ids[:, :256]
    assert _loss(model, code) < 4.5


def test_generates_domain_appropriate_text(demo):
    model, tok = demo
    prompt = "solve 2x + 3 = 11 ; x = 4\nsolve 5y - 5 = 20 ; y = 5\nsolve "
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.shape[1]:])
    assert " = " in text and " ; " in text, text  # it continues with another equation


def test_routing_differs_between_domains(demo):
    model, tok = demo
    layers = get_adapter(model).moe_layers(model)
    assert len(layers) == model.config.num_hidden_layers
    arith = "\n".join(p.text for p in generate_problems("arithmetic", 300, seed=5))
    texts = {"arithmetic": arith, "code": _code_text()}
    counts: dict[str, dict[int, np.ndarray]] = {}
    for name, text in texts.items():
        ids = tok(text, return_tensors="pt").input_ids[:, :1024].reshape(4, 256)
        c = {m.layer_index: np.zeros(m.num_experts) for m in layers}

        def on_route(li, idx, w, c=c):
            c[li] += np.bincount(idx.reshape(-1).numpy(), minlength=len(c[li]))

        with record_routing(model, on_route), torch.no_grad():
            model(input_ids=ids)
        counts[name] = c
    for m in layers:
        a, b = counts["arithmetic"][m.layer_index], counts["code"][m.layer_index]
        assert js_divergence_bits(a, b) > 0.15
        assert top_half_coverage(a) > 0.7 and top_half_coverage(b) > 0.7


def test_card_reports_loss_and_specialisation():
    m = json.loads((DEFAULT_MODEL / "training.json").read_text())
    assert len(m["test_loss"]) >= 5
    trained, init = m["specialisation"]["trained"]["mean"], m["specialisation"]["at_init"]["mean"]
    # domains route measurably differently (far above the split-half noise floor); the card reports the
    # untrained reference next to it, whatever it is
    assert trained["js_between_domains_bits"] > 20 * trained["js_split_half_bits"]
    assert trained["top_half_coverage_own"] > trained["top_half_coverage_others"] + 0.2
    assert 0 < init["js_between_domains_bits"] and 0.5 < init["top_half_coverage_own"] < 1
    curve = m["training"]["val_loss_curve"]
    assert curve[-1]["step"] == m["training"]["steps"] > 0
    mean = [sum(r["val_loss"].values()) / len(r["val_loss"]) for r in curve]
    assert mean[-1] < mean[0] / 2 and mean[-1] <= min(mean) + 1e-9
    readme = (DEFAULT_MODEL / "README.md").read_text()
    assert "Routing specialisation" in readme and "held-out" in readme


def test_profiling_the_demo_recipe_separates_domains(demo, tmp_path):
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    recipe_path = Path(__file__).resolve().parent.parent / "recipes" / "calibration" / "demo.yaml"
    recipe = load_recipe(recipe_path, max_tokens_override=1024)
    if not Path(recipe.resolved()["tasks"][0]["source"]["path"]).exists():
        pytest.skip("demo corpus not built (just corpus)")
    model, tok = demo
    prof = run_profile(model, tok, "demo-moe", recipe, tmp_path / "p",
                       ProfileSettings(batch_size=4, sample_tokens=64))
    m = prof.manifest
    assert set(m.tasks) == {t.name for t in recipe.tasks} and all(v == 1024 for v in m.tasks.values())
    js = np.array(m.js_between_tasks_bits)
    assert m.mean_js_between_tasks_bits > 0.15  # domains route differently
    assert js[5, 6] < js[5, 4]  # arithmetic is closer to algebra than to python code
