"""Build a replacement from a plan: factors from a truncated SVD, calibration windows, the recovery, the tensors
the bundle stores. The glue between the policy's plan, the model and `recover`."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.replace.lowrank import Factors, check_supported, svd_factors
from lightmoe_cli.replace.recover import LayerReplacement, RecoveryRecord, RecoverySettings, recover


def replaced_bases(plan_layers) -> dict[int, dict[int, int]]:
    """layer -> replaced expert -> base, from the plan's tables (a non-resident expert redirects to its base)."""
    return {lp.layer_index: {e: t for e, t in enumerate(lp.redirect) if e not in set(lp.resident)}
            for lp in plan_layers}


def expert_shape(layers) -> tuple[int, int] | None:
    """(hidden, intermediate) of the experts, when they have the fused layout replacing supports."""
    ex = layers[0].experts
    gu = getattr(ex, "gate_up_proj", None)
    if not isinstance(gu, torch.Tensor) or gu.ndim != 3:
        return None
    return int(gu.shape[2]), int(gu.shape[1]) // 2


def init_states(layers, bases: dict[int, dict[int, int]], rank: int) -> dict[int, LayerReplacement]:
    """Each layer's factors: per replaced expert and projection, the rank-r SVD of (own weights - base's)."""
    states = {}
    for m in layers:
        check_supported(m.experts, f"layer {m.layer_index}")
        base = bases.get(m.layer_index, {})
        if not base:
            continue
        ex = m.experts
        hidden, inter = int(ex.gate_up_proj.shape[2]), int(ex.gate_up_proj.shape[1]) // 2
        f = Factors(sorted(base), hidden, inter, rank)
        with torch.no_grad():
            for j, e in enumerate(f.ids):
                if rank == 0:
                    continue
                b = base[e]
                a, bb = svd_factors(ex.gate_up_proj[e].float() - ex.gate_up_proj[b].float(), rank)
                f.gate_up_a[j], f.gate_up_b[j] = a, bb
                a, bb = svd_factors(ex.down_proj[e].float() - ex.down_proj[b].float(), rank)
                f.down_a[j], f.down_b[j] = a, bb
        states[m.layer_index] = LayerReplacement(base, f)
    return states


def calibration_windows(tokenizer, recipe, seq_len: int) -> torch.Tensor:
    """(N, seq_len) token windows: each task's documents joined by EOS and cut to full windows (up to its
    max_tokens), tasks interleaved so every batch mixes them."""
    from lightmoe_cli.recipes import iter_task_texts

    per_task = []
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    for task in recipe.tasks:
        ids: list[int] = []
        for text in iter_task_texts(recipe, task):
            if text.strip():
                ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
            if len(ids) >= task.max_tokens:
                break
        ids = ids[: task.max_tokens]
        n = len(ids) // seq_len
        if n:
            per_task.append(torch.tensor(ids[: n * seq_len]).view(n, seq_len))
    if not per_task:
        return torch.zeros(0, seq_len, dtype=torch.long)
    rows = []
    for i in range(max(len(t) for t in per_task)):
        rows += [t[i] for t in per_task if i < len(t)]
    return torch.stack(rows)


def run_key(bases: dict[int, dict[int, int]], rank: int, settings: RecoverySettings, fingerprint: str,
            windows: torch.Tensor) -> str:
    """Identifies a recovery run: a checkpoint of another plan, setting, model or text is not resumed."""
    blob = json.dumps({"bases": {str(k): {str(e): b for e, b in v.items()} for k, v in bases.items()},
                       "rank": rank, "settings": settings.__dict__, "model": fingerprint,
                       "text": hashlib.sha256(windows.numpy().tobytes()).hexdigest()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def build_replacement(model, tokenizer, layers, plan_layers, rank: int, settings: RecoverySettings, recipe,
                      fingerprint: str, ckpt: Path, progress=None
                      ) -> tuple[dict[str, torch.Tensor], dict[int, dict[int, int]], RecoveryRecord]:
    """Factors (SVD init, then recovered) as the tensors a bundle stores ("layer.{i}.{name}", model dtype), the
    bases, and the recovery record. `ckpt` holds the resumable checkpoint; it is removed once the run ends."""
    bases = replaced_bases(plan_layers)
    states = init_states(layers, bases, rank)
    windows = torch.zeros(0, settings.seq_len, dtype=torch.long)
    if rank > 0 and settings.steps > 0:
        windows = calibration_windows(tokenizer, recipe, settings.seq_len)
        if windows.shape[0] == 0:
            names = ", ".join(t.name for t in recipe.tasks)
            raise LightMoEError(f"the recovery recipe (tasks {names}) yields no window of {settings.seq_len} "
                                "tokens: give --recover-tasks a recipe with text, or --recover-steps 0")
        record = recover(model, layers, states, windows.to(next(model.parameters()).device), settings, ckpt,
                         run_key(bases, rank, settings, fingerprint, windows), progress)
        shutil.rmtree(ckpt, ignore_errors=True)
    else:
        record = recover(model, layers, states, torch.zeros(1, 1, dtype=torch.long),
                         RecoverySettings(**{**settings.__dict__, "steps": 0}))
    dtype = layers[0].experts.gate_up_proj.dtype
    tensors = {}
    for li, st in states.items():
        if rank > 0:
            tensors.update({k: v.to(dtype) for k, v in st.factors.tensors(f"layer.{li}").items()})
    return tensors, bases, record
