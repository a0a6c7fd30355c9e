"""The training recipe machinery on a tiny model and a tiny generated corpus (seconds, not hours)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lightmoe_cli.demo.corpus import _write_jsonl_atomic
from lightmoe_cli.demo.generators import generate_documents
from lightmoe_cli.demo.tokenizer import train_tokenizer
from lightmoe_cli.demo.train import TrainRecipe, fixed_windows, lr_at, per_layer_balance_loss, train

DOMAINS = ["arithmetic", "strings"]
TINY_MODEL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                  intermediate_size=64, num_experts=4, moe_intermediate_size=16, num_experts_per_tok=2,
                  norm_topk_prob=True, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    for d in DOMAINS:
        (root / d).mkdir()
        for split, n, seed in (("train", 120, 0), ("val", 10, 1), ("test", 10, 2)):
            _write_jsonl_atomic(root / d / f"{split}.jsonl", generate_documents(d, n, seed=seed))
    return root


def _recipe(tmp: Path, corpus: Path, **kw) -> TrainRecipe:
    base = dict(corpus=str(corpus), tokens_cache=str(tmp / "tok"), out=str(tmp / "model"),
                checkpoint=str(tmp / "ckpt" / "ckpt.safetensors"), log=str(tmp / "ckpt" / "log.jsonl"), domains=DOMAINS,
                vocab_size=300, model=TINY_MODEL, seq_len=32, batch_size=8, lr=5e-3, warmup_steps=5,
                total_steps=40, eval_every=20, eval_windows=4, threads=1)
    base.update(kw)
    return TrainRecipe(**base)


def test_tokenizer_round_trips_every_domain(tiny_corpus):
    tok = train_tokenizer(tiny_corpus, DOMAINS, vocab_size=300)
    assert len(tok) <= 300
    for text in ["reverse lamp -> pmal", "12 * 7 = 84", "¿Qué? árbol ñandú", "def f(x):\n    return x"]:
        assert tok.decode(tok(text)["input_ids"]) == text


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
    uniform = torch.zeros(64, 4)
    collapsed = torch.tensor([[9.0, 8.0, 0.0, 0.0]]).repeat(64, 1)
    assert per_layer_balance_loss((uniform,), top_k=2).item() == pytest.approx(1.0, abs=1e-5)
    # all picks on 2 of 4 experts: f = (.5, .5, 0, 0), P ~ (.73, .27, 0, 0) -> 4 * .5 = 2
    assert per_layer_balance_loss((collapsed,), top_k=2).item() == pytest.approx(2.0, abs=1e-2)
    assert per_layer_balance_loss((uniform, collapsed), top_k=2).item() == pytest.approx(3.0, abs=1e-2)


def test_lr_schedule_warms_up_then_decays():
    r = TrainRecipe(lr=1.0, warmup_steps=10, total_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, r) == pytest.approx(0.1)
    assert lr_at(9, r) == pytest.approx(1.0)
    assert lr_at(60, r) == pytest.approx(0.55)
    assert lr_at(110, r) == pytest.approx(0.1)


def test_fixed_windows_are_stable_and_in_range():
    s = np.arange(1000, dtype=np.uint16)
    w = fixed_windows(s, 5, 32)
    assert w.shape == (5, 33) and torch.equal(w, fixed_windows(s, 5, 32))
    assert int(w.max()) < 1000 and torch.all(w[:, 1:] - w[:, :-1] == 1)


def test_training_lowers_loss_checkpoints_resumes_and_exports(tmp_path, tiny_corpus):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = _recipe(tmp_path, tiny_corpus)
    state = train(recipe, resume=False, stop_after_s=None)
    assert state.step == 40
    log = [json.loads(x) for x in Path(recipe.log).read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 20, 40]
    for d in DOMAINS:
        assert log[-1]["val_loss"][d] < log[0]["val_loss"][d] - 1.0

    model = AutoModelForCausalLM.from_pretrained(recipe.out)
    tok = AutoTokenizer.from_pretrained(recipe.out)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config.num_experts == 4 and len(tok) <= 300

    longer = _recipe(tmp_path, tiny_corpus, total_steps=60)
    state = train(longer, resume=True)
    assert state.step == 60
    log = [json.loads(x) for x in Path(recipe.log).read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 20, 40, 60]
    assert not Path(recipe.out + ".tmp").exists() and not Path(recipe.out + ".old").exists()


def test_recipe_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("total_step: 5\n")
    with pytest.raises(ValueError, match="unknown key.*total_step"):
        TrainRecipe.from_yaml(bad)


def test_shipped_training_recipe_validates():
    for path in Path("recipes/training").glob("*.yaml"):
        r = TrainRecipe.from_yaml(path)
        assert r.model["num_experts"] >= 32 and 4 <= r.model["num_experts_per_tok"] <= 8
        assert set(r.domains) >= {"arithmetic", "algebra"} and len(r.domains) >= 5


def test_upcycled_moe_computes_what_the_dense_model_computed():
    """At noise 0 every expert is the dense FFN and the renormalised top-k weights sum to 1: same logits."""
    from lightmoe_cli.demo.train import UpcycleSpec, build_model, upcycled_model
    from lightmoe_cli.demo.upcycle import upcycle_state

    model_kw = dict(TINY_MODEL, moe_intermediate_size=16)
    recipe = TrainRecipe(model=model_kw, upcycle=UpcycleSpec(dense_intermediate_size=16, noise_std=0.0))

    class Tok:  # the model builder only needs these
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 300

    dense = build_model(recipe, Tok(), "dense")
    assert not any(".experts." in n for n in dense.state_dict())
    torch.manual_seed(3)
    for p in dense.parameters():  # a "trained" dense model, not its initialisation
        p.data.normal_(0, 0.05)
    moe = upcycled_model(recipe, Tok(), dense).eval()
    ids = torch.randint(0, 300, (2, 12))
    with torch.no_grad():
        assert torch.allclose(dense.eval()(ids).logits, moe(ids).logits, atol=1e-5)

    noisy = upcycle_state(dense.state_dict(), moe.state_dict(), 0.01, torch.Generator().manual_seed(0))
    experts = noisy["model.layers.0.mlp.experts.down_proj"]
    assert not torch.equal(experts[0], experts[1])  # noise breaks the symmetry ...
    cos = torch.nn.functional.cosine_similarity(experts[0].flatten(), experts[1].flatten(), dim=0)
    assert 0.99 < cos < 1.0  # ... but only slightly
    wide = build_model(TrainRecipe(model=model_kw, upcycle=UpcycleSpec(dense_intermediate_size=32)), Tok(), "dense")
    with pytest.raises(ValueError, match="experts' width"):
        upcycle_state(wide.state_dict(), moe.state_dict(), 0.0, torch.Generator())


def test_upcycled_recipe_trains_dense_then_moe_and_resumes(tmp_path, tiny_corpus):
    from transformers import AutoModelForCausalLM

    from lightmoe_cli.demo.train import UpcycleSpec

    spec = UpcycleSpec(dense_steps=20, dense_intermediate_size=16, noise_std=0.01, rewarmup_steps=5)
    recipe = _recipe(tmp_path, tiny_corpus, upcycle=spec, total_steps=30, eval_every=10)
    assert recipe.phase_at(19) == "dense" and recipe.phase_at(20) == "moe"
    assert lr_at(20, recipe) < lr_at(24, recipe)  # re-warm-up after the switch
    state = train(recipe, resume=False, stop_after_s=None)
    assert state.step == 30 and state.phase == "moe"
    log = [json.loads(x) for x in Path(recipe.log).read_text().splitlines()]
    assert [(r["step"], r["phase"]) for r in log] == [(0, "dense"), (10, "dense"), (20, "dense"), (20, "upcycle"),
                                                       (30, "moe")]
    dense_end, upcycled = log[2]["val_loss"], log[3]["val_loss"]
    for d in DOMAINS:  # the copy costs (almost) nothing: only the noise and the router differ
        assert abs(upcycled[d] - dense_end[d]) < 0.05
    assert AutoModelForCausalLM.from_pretrained(recipe.out).config.num_experts == 4
    assert (Path(recipe.checkpoint).parent / "dense" / "config.json").exists()
    state = train(_recipe(tmp_path, tiny_corpus, upcycle=spec, total_steps=40, eval_every=10), resume=True)
    assert state.step == 40 and state.phase == "moe"
