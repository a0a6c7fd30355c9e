"""The end-to-end half of the self-test: profile -> build-bundle (full, prune, lightmoe) -> run, per family.

Why: every adapter check can pass while a stage that relies on the adapter fails (experts that never see
indices, a router buffer the loader does not know, a layout the expert store misreads). "Does lightmoe work on
my model?" means the whole pipeline, so the self-test runs it on the tiny model, as a new user would: a
character-level tokenizer over the tiny vocabulary, a two-task calibration recipe of generated text, budget 0.5,
and the stages' public entry points only. A `full` bundle must reproduce the model's logits; `prune` and
`lightmoe` bundles must run to finite logits.

The stages sit above `models/` (they use the adapters), so they are imported inside the functions that call
them: importing `lightmoe_cli.models` never pulls in profile, bundle or runtime.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

POLICIES = ("full", "prune", "lightmoe")  # full first: it checks the store and loader against the model itself
BUDGET = 0.5  # share of expert bytes for prune and lightmoe
TASK_TOKENS = 192  # per calibration task: a few batches, enough for every expert to be seen
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0, 1, 2, 3: the pad/bos/eos ids the tiny configs use
_ATOL, _RTOL = 1e-5, 1e-4  # full bundle vs model: same weights and kernels; only summation order may differ


class StageFailed(Exception):
    """A pipeline stage raised or produced a wrong result; the message starts with the stage's name."""


@dataclass(frozen=True)
class PipelineWorkspace:
    """What every family's pipeline run shares: a scratch folder, the tokenizer and the calibration recipe."""

    root: Path
    tokenizer: Any  # a transformers PreTrainedTokenizerFast
    recipe: Any  # a lightmoe_cli.recipes.CalibrationRecipe


def char_tokenizer() -> Any:
    """One token per printable ASCII character and newline after four specials: 100 ids, inside the tiny
    models' VOCAB, so any text the recipe holds is valid input for any tiny model.

    Why not the demo's byte-level BPE: its 256-symbol base alphabet alone exceeds the tiny vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    symbols = [*SPECIAL_TOKENS, *(chr(c) for c in range(32, 127)), "\n"]  # 100 <= tiny_configs.VOCAB
    vocab = {s: i for i, s in enumerate(symbols)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))  # no merges: one id per character
    backend.decoder = decoders.Fuse()  # decode joins characters without separators
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=512)


def _documents(kind: str, n: int, seed: int) -> list[str]:
    """Short generated documents of two kinds that route differently (digit sums vs. letter words)."""
    rng = random.Random(seed)
    if kind == "sums":
        return [" ".join(f"{rng.randint(0, 99)}+{rng.randint(0, 99)}={rng.randint(0, 198)}" for _ in range(8))
                for _ in range(n)]
    return [" ".join("".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 6))) for _ in range(10))
            for _ in range(n)]


def write_recipe(root: Path) -> Any:
    """A two-task calibration recipe over JSONL files written into `root`, loaded as a user's would be."""
    from lightmoe_cli.recipes import load_recipe

    lines = []
    for seed, kind in enumerate(("sums", "words")):
        docs = _documents(kind, 20, seed)
        (root / f"{kind}.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs) + "\n")
        lines.append(f"  - {{name: {kind}, source: {{type: jsonl, path: {kind}.jsonl}}}}\n")
    (root / "recipe.yaml").write_text(f"max_tokens: {TASK_TOKENS}\ntasks:\n" + "".join(lines))
    return load_recipe(root / "recipe.yaml")


@contextmanager
def pipeline_workspace() -> Iterator[PipelineWorkspace]:
    """A temporary workspace for one self-test run (tokenizer and recipe built once, for every family)."""
    with tempfile.TemporaryDirectory(prefix="lightmoe-selftest-") as tmp:
        root = Path(tmp)
        yield PipelineWorkspace(root, char_tokenizer(), write_recipe(root))


class _StageError(Exception):
    """One stage's failure, kept apart from its stage name so equal errors of several policies merge."""

    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


@contextmanager
def _stage(name: str) -> Iterator[None]:
    """Report any failure inside as `_StageError(name, "<type>: <message>")`, one line."""
    try:
        yield
    except _StageError:
        raise
    except Exception as e:  # any stage error becomes one line of the self-test table
        raise _StageError(name, f"{type(e).__name__}: {e}".splitlines()[0][:200]) from e


def _merged(failures: list[_StageError]) -> str:
    """'run full, run prune: KeyError: ...; ...': stages with the same error share one entry."""
    by_error: dict[str, list[str]] = {}
    for f in failures:
        by_error.setdefault(f.error, []).append(f.stage)
    return "; ".join(f"{', '.join(stages)}: {error}" for error, stages in by_error.items())


def _logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def check_pipeline(model: nn.Module, name: str, ws: PipelineWorkspace, input_ids: torch.Tensor) -> str:
    """Profile `model`, build a bundle per policy and run each; returns a one-line summary.

    Every policy is tried even when an earlier one fails, so one run names every broken stage; raises
    StageFailed listing them. `model` is only read (its logits before and after must not change).
    """
    from lightmoe_cli.profile.run import ProfileSettings, run_profile

    folder = ws.root / name
    reference = _logits(model, input_ids)
    try:
        with _stage("profile"):
            profile = run_profile(model, ws.tokenizer, name, ws.recipe, folder / "profile",
                                  ProfileSettings(seq_len=32, batch_size=4, sample_tokens=64))
    except _StageError as e:
        raise StageFailed(str(e)) from e
    failures = []
    for policy in POLICIES:
        try:
            _check_policy(model, name, profile, policy, ws, folder / policy, input_ids, reference)
        except _StageError as e:
            failures.append(e)
    export = "hf export not tried"
    try:
        export = _check_export(model, name, profile, ws, folder, input_ids)
    except _StageError as e:
        failures.append(e)
    if not torch.equal(_logits(model, input_ids), reference):
        failures.append(_StageError("model", "the pipeline changed the model's own logits"))
    if failures:
        raise StageFailed(_merged(failures))
    return "profile, " + ", ".join(f"{p} bundle" for p in POLICIES) + f" ran, {export}"


def _check_policy(model: nn.Module, name: str, profile: Any, policy: str, ws: PipelineWorkspace, out: Path,
                  input_ids: torch.Tensor, reference: torch.Tensor) -> None:
    """Build and run one policy's bundle; `full` must give the model's logits, the others finite ones."""
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.runtime.loader import build_runtime

    with _stage(f"build-bundle {policy}"):
        bundle = build_bundle(profile, model, ws.tokenizer, name, out, BuildOptions(policy=policy, fraction=BUDGET))
    with _stage(f"run {policy}"):
        logits = _logits(build_runtime(bundle).model, input_ids)  # [B, S, V]
    if not bool(torch.isfinite(logits).all()):
        raise _StageError(f"run {policy}", "non-finite logits")
    if policy == "full" and not torch.allclose(logits, reference, atol=_ATOL, rtol=_RTOL):
        raise _StageError("run full", f"logits differ from the model's by {(logits - reference).abs().max():.2e}")


def _check_export(model: nn.Module, name: str, profile: Any, ws: PipelineWorkspace, folder: Path,
                  input_ids: torch.Tensor) -> str:
    """A uniform prune bundle exported as a transformers checkpoint loads with plain `from_pretrained` and gives
    the runtime's logits; a family the exporter refuses by name (its expert count sizes other modules) says so."""
    import transformers
    from transformers.utils import logging as hf_logging

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.errors import LightMoEError
    from lightmoe_cli.export.hf import export_hf
    from lightmoe_cli.export.selection import select
    from lightmoe_cli.runtime.loader import build_runtime

    hf_logging.disable_progress_bar()
    with _stage("export hf"):
        bundle = build_bundle(profile, model, ws.tokenizer, name, folder / "prune-uniform",
                              BuildOptions(policy="prune", fraction=BUDGET, params={"uniform": True}))
        sel = select("prune", {lp.layer_index: lp.resident for lp in bundle.layers}, {}, False)
        try:
            export_hf(bundle, sel, folder / "hf")
        except LightMoEError as e:
            if "cannot be exported pruned" not in str(e):
                raise
            return "hf export refused (its expert count also sizes other modules)"
        # its own class: AutoModelForCausalLM maps most families, not all (mistral4 in transformers 5.24)
        cls = getattr(transformers, type(model).__name__)
        exported = cls.from_pretrained(folder / "hf", dtype=model.dtype).eval()
        want = _logits(build_runtime(bundle).model, input_ids)
        got = _logits(exported, input_ids)
    if got.shape != want.shape or not torch.allclose(got, want, atol=_ATOL, rtol=_RTOL):
        diff = (got - want).abs().max() if got.shape == want.shape else f"shape {tuple(got.shape)}"
        raise _StageError("export hf", f"from_pretrained logits differ from the runtime's by {diff}")
    return f"hf export round-tripped (max |logit diff| {float((got - want).abs().max()):.1e})"
