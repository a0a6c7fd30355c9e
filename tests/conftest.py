"""Test defaults: no network to the hub, one CPU thread (the machines running these are small and shared)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402 - after the environment is set

torch.set_num_threads(1)


import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TINY_EXPERTS, TINY_TOP_K = 8, 2


@pytest.fixture(scope="session")
def tiny_moe(tmp_path_factory) -> tuple[Path, object, object]:
    """A tiny Qwen3-MoE (3 layers, layer 1 dense, 8 experts, top-2) saved with a byte-level BPE tokenizer,
    plus a two-task calibration recipe over generated text. Returns (folder, model, tokenizer)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from lightmoe_cli.demo.generators import generate_documents
    from lightmoe_cli.demo.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    corpus = root / "corpus"
    for d in ("arithmetic", "strings"):
        (corpus / d).mkdir(parents=True)
        docs = generate_documents(d, 40, seed=3)
        (corpus / d / "train.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in docs))
    tok = train_tokenizer(corpus, ["arithmetic", "strings"], vocab_size=300)
    cfg = Qwen3MoeConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=16, intermediate_size=48, moe_intermediate_size=16,
                         num_experts=TINY_EXPERTS, num_experts_per_tok=TINY_TOP_K, mlp_only_layers=[1],
                         norm_topk_prob=True, pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    model = Qwen3MoeForCausalLM(cfg).eval()
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    (root / "calib.yaml").write_text(
        "max_tokens: 600\ntasks:\n"
        + "".join(f"  - {{name: {d}, source: {{type: jsonl, path: corpus/{d}/train.jsonl}}}}\n"
                  for d in ("arithmetic", "strings")))
    return root, model, tok


@pytest.fixture(scope="session")
def tiny_profile(tiny_moe, tmp_path_factory):
    """The tiny model's profile over its calibration recipe (batches of 4 x 64 tokens, 128 sampled states per
    layer): one profile shared by every test module that only reads it."""
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root, model, tok = tiny_moe
    return run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"),
                       tmp_path_factory.mktemp("tiny-profile") / "p",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=128))
