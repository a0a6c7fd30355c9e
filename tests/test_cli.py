"""The command line: fast help, every command listed, unsupported models get one line."""

import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from lightmoe_cli.cli import app


def test_help_lists_commands_without_importing_torch():
    code = "import sys, lightmoe_cli.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
    res = CliRunner().invoke(app, ["--help"])
    for cmd in ("models", "profile", "build-bundle", "run", "eval", "demo"):
        assert cmd in res.output


def test_unsupported_model_gets_one_line(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    tok.save_pretrained(tmp_path / "llama")
    res = CliRunner().invoke(app, ["profile", "--model", str(tmp_path / "llama"), "--out", str(tmp_path / "p")])
    assert res.exit_code == 1
    assert "LlamaForCausalLM has no MoE layers lightmoe knows; supported:" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def test_models_command_selftests_an_architecture():
    res = CliRunner().invoke(app, ["models", "--arch", "qwen3_moe"])
    assert res.exit_code == 0, res.output
    assert "Qwen3MoeForCausalLM" in res.output and "1/1 passed" in res.output


def test_demo_model_short_names_resolve_and_a_missing_one_names_its_recipe(monkeypatch, tmp_path):
    from lightmoe_cli import loading
    from lightmoe_cli.errors import LightMoEError
    from lightmoe_cli.paths import DEFAULT_MODEL

    assert loading.resolve_model(None) == loading.resolve_model("demo") == str(DEFAULT_MODEL)
    monkeypatch.setitem(loading.DEMO_MODELS, "demo-upcycled", tmp_path / "absent")
    with pytest.raises(LightMoEError, match="demo-upcycled.*--recipe recipes/training/demo-moe-upcycled.yaml"):
        loading.resolve_model("demo-upcycled")


def test_exit_fast_runs_exit_handlers_flushes_and_keeps_the_code():
    """The console entry skips only the interpreter's module teardown: atexit handlers run, buffered output is
    written, the exit code is kept; an exit message, or a live non-daemon thread, takes the normal way out."""
    code = ("import atexit, sys\nfrom lightmoe_cli.cli import exit_fast\n"
            "atexit.register(lambda: print('handler ran'))\nsys.stdout.write('buffered ')\nexit_fast(3)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 3 and r.stdout == "buffered handler ran\n"
    from lightmoe_cli.cli import exit_fast

    with pytest.raises(SystemExit) as e:
        exit_fast("a message")
    assert e.value.code == "a message"
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        with pytest.raises(SystemExit) as e:
            exit_fast(0)
        assert e.value.code == 0
    finally:
        stop.set()
        t.join()
