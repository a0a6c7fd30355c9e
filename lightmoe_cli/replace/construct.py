"""Build a replacement from a plan: factors from a truncated SVD, calibration windows, the recovery, the tensors
the bundle stores. The glue between the policy's plan, the model and `recover`."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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


def calibration_windows(tokenizer, recipe, seq_len: int, budget_tokens: int | None = None) -> torch.Tensor:
    """(N, seq_len) token windows: each task's documents joined by EOS and cut to full windows, tasks interleaved
    so every batch mixes them. `budget_tokens`: read the tasks up to that many tokens in all (an equal share
    each), whatever the recipe's own max_tokens (the recovery's text is sized by the recovery, not by the profile
    that happened to use the recipe); None: each task's max_tokens."""
    from lightmoe_cli.recipes import iter_task_texts

    per_task = []
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    share = -(-budget_tokens // max(len(recipe.tasks), 1)) if budget_tokens else None
    for task in recipe.tasks:
        cap = share if share is not None else task.max_tokens
        ids: list[int] = []
        for text in iter_task_texts(recipe, task):
            if text.strip():
                ids += tokenizer(text, add_special_tokens=False)["input_ids"] + [eos]
            if len(ids) >= cap:
                break
        ids = ids[:cap]
        n = len(ids) // seq_len
        if n:
            per_task.append(torch.tensor(ids[: n * seq_len]).view(n, seq_len))
    if not per_task:
        return torch.zeros(0, seq_len, dtype=torch.long)
    rows = []
    for i in range(max(len(t) for t in per_task)):
        rows += [t[i] for t in per_task if i < len(t)]
    return torch.stack(rows)


@dataclass
class RecoveryText:
    """The recovery's windows, split: training windows and a held-out slice spread over tasks and positions."""

    train: torch.Tensor
    heldout: torch.Tensor
    needed_tokens: int  # steps x batch x seq_len: what the recovery trains on

    @property
    def epochs(self) -> float:
        """How many times the recovery goes over its training text (above 1: it repeats it)."""
        return self.needed_tokens / max(self.train.numel(), 1)


def recovery_text(tokenizer, recipe, settings: RecoverySettings) -> RecoveryText:
    """Read the recipe up to what the recovery needs (plus its held-out share) and hold a slice out."""
    needed = settings.steps * settings.batch_size * settings.seq_len
    train_windows = -(-needed // settings.seq_len)
    heldout_windows = max(settings.batch_size, round(settings.heldout_share * train_windows)) \
        if settings.heldout_share > 0 else 0
    windows = calibration_windows(tokenizer, recipe, settings.seq_len,
                                  (train_windows + heldout_windows) * settings.seq_len)
    n = windows.shape[0]
    h = min(heldout_windows, n // 2)  # short text: at most half of it is held out
    if h == 0:
        return RecoveryText(windows, windows[:0], needed)
    stride = n / h
    held = sorted({int(i * stride + stride / 2) for i in range(h)})  # every k-th window: all tasks, all positions
    mask = torch.zeros(n, dtype=torch.bool)
    mask[held] = True
    return RecoveryText(windows[~mask], windows[mask], needed)


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
    if rank > 0 and settings.steps > 0:
        text = recovery_text(tokenizer, recipe, settings)
        if text.train.shape[0] == 0:
            names = ", ".join(t.name for t in recipe.tasks)
            raise LightMoEError(f"the recovery recipe (tasks {names}) yields no window of {settings.seq_len} "
                                "tokens: give --recover-tasks a recipe with text, or --recover-steps 0")
        device = next(model.parameters()).device
        record = recover(model, layers, states, text.train.to(device), settings, ckpt,
                         run_key(bases, rank, settings, fingerprint, torch.cat([text.train, text.heldout])),
                         progress, heldout=text.heldout.to(device))
        record.tokens_needed, record.epochs = text.needed_tokens, round(text.epochs, 3)
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


def merged_experts(adapter, layers, plan_layers, mass: dict[int, np.ndarray]) -> dict[int, dict[int, dict]]:
    """Merging: each cluster representative's weights become its members' mass-weighted average (members: the
    experts whose table entry is the representative). Returns layer -> expert -> tensors to store instead."""
    out: dict[int, dict[int, dict]] = {}
    by_layer = {m.layer_index: m for m in layers}
    for lp in plan_layers:
        m = by_layer[lp.layer_index]
        out[lp.layer_index] = {}
        for rep in lp.resident:
            members = [e for e, t in enumerate(lp.redirect) if t == rep]
            if members == [rep]:
                continue
            w = torch.tensor([float(mass[lp.layer_index][e]) for e in members], dtype=torch.float64)
            w = w / w.sum() if float(w.sum()) > 0 else torch.full_like(w, 1 / len(members))
            tensors = [adapter.read_expert(m, e) for e in members]
            out[lp.layer_index][rep] = {n: sum(float(wi) * t[n].double() for wi, t in zip(w, tensors, strict=True))
                                        .to(tensors[0][n].dtype) for n in tensors[0]}
    return out


def lora_experts(model, tokenizer, adapter, plan_layers, rank: int, settings: RecoverySettings, recipe,
                 fingerprint: str, ckpt: Path, progress=None) -> tuple[dict[int, dict[int, dict]], RecoveryRecord]:
    """Prune + LoRA: the router-sliced copy of the model trains a rank-r term per projection on every kept
    expert (A = 0, B random: the standard LoRA start, so step 0 is prune), merged into their weights at the end.
    Returns layer -> kept expert -> fine-tuned tensors, and the training record."""
    kept = {lp.layer_index: sorted(lp.resident) for lp in plan_layers}
    pruned = adapter.keep_experts(model, kept)
    layers = adapter.moe_layers(pruned)
    gen = torch.Generator().manual_seed(settings.seed)
    states = {}
    for m in layers:
        check_supported(m.experts, f"layer {m.layer_index}")
        ex, n = m.experts, len(kept[m.layer_index])
        hidden, inter = int(ex.gate_up_proj.shape[2]), int(ex.gate_up_proj.shape[1]) // 2
        f = Factors(list(range(n)), hidden, inter, rank)
        with torch.no_grad():
            f.gate_up_b.normal_(0.0, hidden ** -0.5, generator=gen)
            f.down_b.normal_(0.0, inter ** -0.5, generator=gen)
        states[m.layer_index] = LayerReplacement({j: j for j in range(n)}, f)
    text = recovery_text(tokenizer, recipe, settings)
    if text.train.shape[0] == 0:
        raise LightMoEError(f"the fine-tuning recipe yields no window of {settings.seq_len} tokens: give "
                            "--recover-tasks a recipe with text")
    settings = RecoverySettings(**{**settings.__dict__, "anneal": 0.0})
    record = recover(pruned, layers, states, text.train, settings, ckpt,
                     run_key({li: {j: j for j in range(len(k))} for li, k in kept.items()}, rank, settings,
                             fingerprint + ":lora", torch.cat([text.train, text.heldout])), progress,
                     heldout=text.heldout)
    record.tokens_needed, record.epochs = text.needed_tokens, round(text.epochs, 3)
    shutil.rmtree(ckpt, ignore_errors=True)
    out: dict[int, dict[int, dict]] = {}
    with torch.no_grad():
        for m in layers:
            ex, f = m.experts, states[m.layer_index].factors
            out[m.layer_index] = {}
            for j, e in enumerate(kept[m.layer_index]):
                gu = ex.gate_up_proj[j].float() + f.gate_up_a[j] @ f.gate_up_b[j]
                d = ex.down_proj[j].float() + f.down_a[j] @ f.down_b[j]
                out[m.layer_index][e] = {"gate_up_proj": gu.to(ex.gate_up_proj.dtype),
                                         "down_proj": d.to(ex.down_proj.dtype)}
    return out, record
