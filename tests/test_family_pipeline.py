"""The whole pipeline on every MoE family: profile -> build-bundle (full, prune, lightmoe at 0.5) -> run.

What `lightmoe models` self-tests, checked per family: a `full` bundle's logits equal the model's, the others run
to finite logits. Two families stay in the fast run: one of the common layout (qwen3_moe) and one whose experts
never see indices (llama4_text); the full matrix is `slow`.
"""

from __future__ import annotations

import pytest
import torch

from lightmoe_cli.models.architectures import scan_sources
from lightmoe_cli.models.tiny_configs import VOCAB
from lightmoe_cli.selftest.pipeline import StageFailed, char_tokenizer, check_pipeline, pipeline_workspace
from lightmoe_cli.selftest.run import run_selftest

FAST = ("Qwen3MoeForCausalLM", "Llama4ForCausalLM")

# Failures outside models/ (runtime or bundle), by class name -> reason; strict xfail: an entry must go when its
# fix lands. Empty: every family `lightmoe models` marks supported runs the whole pipeline.
KNOWN_FAILURES: dict[str, str] = {}


def _params() -> list:
    """Every MoE causal-LM class of the installed transformers (by source scan: no imports at collection)."""
    params = []
    for _, _, class_name in sorted(set(scan_sources()), key=lambda s: s[2].lower()):
        marks = [] if class_name in FAST else [pytest.mark.slow]
        if class_name in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[class_name], strict=True))
        params.append(pytest.param(class_name, marks=marks, id=class_name))
    return params


@pytest.mark.parametrize("arch", _params())
def test_family_runs_the_whole_pipeline(arch):
    result = run_selftest(arch)
    assert result.supported, result.detail
    assert result.passed, result.detail
    assert "pipeline ran; hf export " in result.detail
    # every family's hf export loads with from_pretrained and gives the runtime's logits, or is refused by name
    assert "round-tripped" in result.detail or "hf export refused" in result.detail


def test_fast_families_exist():
    """The fast run's families are real class names (a rename would silently make everything slow)."""
    assert set(FAST) <= {class_name for _, _, class_name in scan_sources()}


def test_char_tokenizer_fits_the_tiny_vocabulary():
    tok = char_tokenizer()
    text = "12+7=19 abc\nXYZ {}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(tok) <= VOCAB and max(ids) < VOCAB and len(ids) == len(text)
    assert tok.decode(ids) == text
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)


def test_pipeline_failures_name_every_failing_stage(monkeypatch):
    """A stage that breaks is named with its error, and the other policies still run."""
    from lightmoe_cli.models.architectures import find_architecture
    from lightmoe_cli.models.tiny_configs import tiny_config
    from lightmoe_cli.runtime import loader
    from lightmoe_cli.selftest.run import quiet

    real = loader.build_runtime

    def broken_for_prune(bundle, *args, **kwargs):
        if bundle.path.name == "prune":  # the pipeline names each bundle's folder after its policy
            raise KeyError("some.weight")
        return real(bundle, *args, **kwargs)

    monkeypatch.setattr(loader, "build_runtime", broken_for_prune)
    info = find_architecture("qwen3_moe")
    torch.manual_seed(0)
    with quiet(), pipeline_workspace() as ws:
        model = info.load_class()(tiny_config(info)).eval()
        with pytest.raises(StageFailed, match=r"^run prune: KeyError: 'some.weight'$"):
            check_pipeline(model, "qwen3_moe", ws, torch.randint(3, VOCAB, (2, 8)))
