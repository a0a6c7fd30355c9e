"""Annealed recovery: train only the replaced experts' low-rank factors on calibration text.

The replaced experts' output is blended from the original expert to its replacement, alpha rising linearly from 0
to 1 over the first `anneal` share of the steps (then 1): the network is never shown the full replacement error
at once, and the last steps train exactly what the runtime will serve. AdamW on the factors only; every other
weight is frozen. Data order is a pure function of the step, and the factors and optimizer state are
checkpointed (safetensors + JSON, never pickle), so an interrupted run resumes to the same result.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import atomic_write, optimizer_tensors, restore_optimizer
from lightmoe_cli.models.routing import serving_class
from lightmoe_cli.replace.lowrank import Factors, replaced_output


@dataclass(frozen=True)
class RecoverySettings:
    steps: int = 200
    lr: float = 1e-3
    anneal: float = 0.5  # share of the steps over which alpha rises 0 -> 1 (0: no annealing, alpha = 1 at once)
    batch_size: int = 8
    seq_len: int = 128
    seed: int = 0
    checkpoint_every: int = 25
    heldout_share: float = 0.1  # of the training windows, held out to score the recovery (at least one batch)
    eval_every: int = 25  # steps between held-out scores; the factors of the best score are kept

    def alpha(self, step: int) -> float:
        ramp = self.anneal * self.steps
        return 1.0 if ramp <= 0 else min(1.0, step / ramp)


@dataclass
class RecoveryRecord:
    """What the manifest records of a recovery run."""

    steps: int
    lr: float
    anneal: float
    schedule: str
    batch_size: int
    seq_len: int
    tokens: int  # training tokens read (windows x seq_len)
    tokens_needed: int = 0  # steps x batch x seq_len
    epochs: float | None = None  # tokens_needed / tokens: above 1 the recovery repeats its text
    heldout_tokens: int = 0
    heldout_before: float | None = None  # held-out LM loss with the SVD-initialised replacements (alpha 1)
    heldout_after: float | None = None  # ... with the factors kept (the best held-out score)
    heldout_best_step: int | None = None  # the step whose factors were kept (0: training never beat the start)
    heldout_losses: list[list[float]] = field(default_factory=list)  # [step, loss] at every held-out score
    trainable_params: int = 0
    loss_start: float | None = None  # LM loss of the first step (alpha at its start value)
    loss_end: float | None = None  # mean LM loss of the last 10% of the steps (alpha = 1 there)
    seconds: float = 0.0
    peak_rss_mib: float = 0.0
    resumed_at: int | None = None
    probe_before: float | None = None  # LM loss with every replacement in place (alpha 1), before training
    probe_after: float | None = None  # the same batches after training
    losses: list[float] = field(default_factory=list)  # every step's loss


@dataclass
class LayerReplacement:
    """Training-time state of one layer (full model: every expert present): replaced router id -> base row, its
    factors, and alpha, the blend of each replaced expert's original output into its replacement's."""

    base: dict[int, int]
    factors: Factors
    alpha: float = 1.0

    def __post_init__(self) -> None:
        self._ids = torch.tensor(sorted(self.base))  # the replaced router ids, for the per-forward mask
        self._own = {e: e for e in self.base}  # each replaced expert's own row: its original output

    def run(self, experts: nn.Module, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
            top_k_weights: torch.Tensor) -> torch.Tensor:
        """The experts' forward: kept picks through the module's own kernel, replaced ones as base + low-rank."""
        replaced = torch.isin(top_k_index, self._ids.to(top_k_index.device))
        out = experts._lightmoe_base.forward(experts, hidden_states, top_k_index,
                                             top_k_weights.masked_fill(replaced, 0))
        return out + replaced_output(experts, hidden_states, top_k_index, top_k_weights, self.base, self.factors,
                                     self.alpha, self._own)


def install(layers, states: dict[int, LayerReplacement]) -> Callable[[], None]:
    """Serve the experts modules of `layers` through their replacement (models.routing.serving_class); returns
    the undo."""
    undo = []
    for m in layers:
        if m.layer_index in states:
            ex = m.experts
            undo.append((ex, type(ex)))
            ex.__class__ = serving_class(type(ex), "Replacing")
            ex._lightmoe_strategy = states[m.layer_index]

    def restore() -> None:
        for ex, cls in undo:
            ex.__class__ = cls
            del ex._lightmoe_strategy
    return restore


def _params(states: dict[int, LayerReplacement]) -> list[nn.Parameter]:
    return [p for li in sorted(states) for p in states[li].factors.parameters()]


def _save(ckpt: Path, states, opt, step: int, losses: list[float], key: str, best: _Best | None = None) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for li, st in states.items():
        tensors.update(st.factors.tensors(f"layer.{li}"))
    tensors.update(optimizer_tensors(opt))
    if best is not None and best.tensors:
        tensors.update({f"best.{k}": v for k, v in best.tensors.items()})
    ckpt.mkdir(parents=True, exist_ok=True)
    atomic_write(ckpt / "recovery.safetensors", lambda tmp: save_file(tensors, str(tmp), metadata={"step": str(step)}))
    atomic_write(ckpt / "recovery.json", json.dumps({"step": step, "key": key, "losses": losses,
                                                      "param_groups": opt.state_dict()["param_groups"],
                                                      "heldout": best.history if best else [],
                                                      "best_step": best.step if best else None}))


def _load(ckpt: Path, states, opt, key: str, best: _Best | None = None) -> tuple[int, list[float]] | None:
    """Restore a checkpoint of the same run (same `key`); None when there is none or it is of another run."""
    from safetensors import safe_open

    side, path = ckpt / "recovery.json", ckpt / "recovery.safetensors"
    if not side.exists() or not path.exists():
        return None
    try:
        info = json.loads(side.read_text())
        if info.get("key") != key:
            return None  # another plan or other settings: start over
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("step") != str(info["step"]):
                raise ValueError("the tensors and the JSON are from different steps")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError) as e:
        raise LightMoEError(f"recovery checkpoint {ckpt} is damaged ({e}): delete the folder to start over") from e
    for li, st in states.items():
        st.factors.load(tensors, f"layer.{li}")
    restore_optimizer(opt, tensors, info["param_groups"])
    if best is not None:
        best.history = [list(x) for x in info.get("heldout", [])]
        best.step = info.get("best_step")
        best.tensors = {k.removeprefix("best."): v for k, v in tensors.items() if k.startswith("best.")}
        best.loss = min((x[1] for x in best.history), default=float("inf"))
    return int(info["step"]), list(info["losses"])


@dataclass
class _Best:
    """The held-out scores so far and the factors of the best one (kept at the end of the run)."""

    heldout: torch.Tensor
    batch_size: int
    history: list[list[float]] = field(default_factory=list)
    loss: float = float("inf")
    step: int | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def score(self, model: nn.Module, states, step: int) -> float:
        """Held-out LM loss with the replacements in full (what the runtime serves); keeps the best factors."""
        losses, tokens = 0.0, 0
        for i in range(0, len(self.heldout), self.batch_size):
            batch = self.heldout[i: i + self.batch_size]
            losses += _probe(model, states, batch) * batch.numel()
            tokens += batch.numel()
        loss = losses / tokens
        self.history.append([step, round(loss, 6)])
        if loss < self.loss:
            self.loss, self.step = loss, step
            self.tensors = {k: v.detach().clone() for li, st in states.items()
                            for k, v in st.factors.tensors(f"layer.{li}").items()}
        return loss


@torch.no_grad()
def _probe(model: nn.Module, states, batch: torch.Tensor) -> float:
    """LM loss on `batch` with every replaced expert fully replaced (alpha 1): what the runtime will serve."""
    for st in states.values():
        st.alpha = 1.0
    model.eval()
    return float(model(input_ids=batch, labels=batch).loss)


def _train_steps(model: nn.Module, states: dict[int, LayerReplacement], windows: torch.Tensor,
                 settings: RecoverySettings, opt, steps: range, losses: list[float], ckpt: Path | None, key: str,
                 progress=None, best: _Best | None = None) -> None:
    """The recovery's optimiser steps (batches cycle over the windows; the blend alpha follows the schedule),
    checkpointed every `checkpoint_every` steps and at the last one."""
    task = progress.add_task("recovery", total=settings.steps, completed=steps.start) if progress else None
    n, b = windows.shape[0], settings.batch_size
    for step in steps:
        for st in states.values():
            st.alpha = settings.alpha(step)
        batch = windows[torch.tensor([(step * b + j) % n for j in range(b)])]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if best is not None and ((step + 1) % settings.eval_every == 0 or step + 1 == settings.steps):
            best.score(model, states, step + 1)
            model.train()
        if ckpt is not None and ((step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps):
            _save(ckpt, states, opt, step + 1, losses, key, best)
        if progress:
            progress.update(task, advance=1, description=f"recovery (loss {losses[-1]:.3f})")


def recover(model: nn.Module, layers, states: dict[int, LayerReplacement], windows: torch.Tensor,
            settings: RecoverySettings, ckpt: Path | None = None, key: str = "", progress=None,
            stop_after: int | None = None, heldout: torch.Tensor | None = None) -> RecoveryRecord:
    """Train the factors in `states` on `windows` (N, seq_len) token ids. `ckpt`: folder for resumable
    checkpoints (kept until the caller removes it); `stop_after`: stop after that many steps of this call (tests
    of resuming); `heldout`: windows scored before, every `eval_every` steps and at the end, the factors of the
    best score kept (training that overfits a short text cannot leave the replacement worse than it found it).
    The model's own weights are left untouched."""
    if windows.numel() == 0 or windows.shape[0] == 0:
        raise LightMoEError("the recovery text yields no tokens: give --recover-tasks a recipe with text")
    record = RecoveryRecord(settings.steps, settings.lr, settings.anneal,
                            f"alpha = min(1, step / ({settings.anneal} x {settings.steps})), linear",
                            settings.batch_size, settings.seq_len, int(windows.numel()))
    if settings.steps == 0:
        return record
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    params = _params(states)
    record.trainable_params = sum(p.numel() for p in params)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    start, losses = 0, []
    best = _Best(heldout, settings.batch_size) if heldout is not None and len(heldout) else None
    if best is not None:
        record.heldout_tokens = int(heldout.numel())
    if ckpt is not None:
        restored = _load(ckpt, states, opt, key, best)
        if restored is not None:
            start, losses = restored
            record.resumed_at = start
    restore = install(layers, states)
    was_training = model.training
    probe = windows[torch.arange(min(len(windows), 2 * settings.batch_size))]
    if start == 0:
        record.probe_before = _probe(model, states, probe)
        if best is not None:
            best.score(model, states, 0)
    model.train()
    t0 = time.perf_counter()
    try:
        end = settings.steps if stop_after is None else min(settings.steps, start + stop_after)
        _train_steps(model, states, windows, settings, opt, range(start, end), losses, ckpt, key, progress, best)
        if best is not None and best.tensors and end == settings.steps:
            for li, st in states.items():  # the factors of the best held-out score
                st.factors.load(best.tensors, f"layer.{li}")
        record.probe_after = _probe(model, states, probe)
    finally:
        restore()
        model.train(was_training)
        for p, req in frozen:
            p.requires_grad_(req)
        for p in params:
            p.requires_grad_(False)
    record.losses = losses
    if best is not None and best.history:
        record.heldout_before, record.heldout_losses = best.history[0][1], best.history
        record.heldout_after, record.heldout_best_step = round(best.loss, 6), best.step
    record.loss_start = losses[0] if losses else None
    tail = losses[-max(1, len(losses) // 10):]
    record.loss_end = sum(tail) / len(tail) if tail else None
    record.seconds = time.perf_counter() - t0
    record.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return record


def record_json(r: RecoveryRecord) -> dict:
    d = asdict(r)
    d["losses"] = [round(x, 5) for x in r.losses]
    return d
