"""Train the embedded demo MoE from a YAML recipe, on CPU, with checkpoints and per-domain validation.

Why a project-trained model: no pretrained MoE can be downloaded on these machines and random weights say nothing
about accuracy, so the toolkit ships a small Qwen3-MoE whose experts have really learnt to specialise by domain.

Design points, each measured on this machine (see shared NOTES):
- fp32 compute (bf16 is ~20x slower on this CPU); weights exported as bf16 safetensors.
- Load balancing computed PER LAYER and summed: transformers' built-in loss pools all layers' picks, which left
  experts unused in individual layers.
- Batches draw each row's domain uniformly, so small domains are not drowned by large ones.
- A checkpoint (model + optimiser + step + RNG) is written atomically at every evaluation; `resume=True`
  continues from it, and the bf16 export in the output folder is always the latest evaluated model.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from lightmoe_cli.demo.corpus import read_split
from lightmoe_cli.files import atomic_write, optimizer_tensors, restore_optimizer, swap_in_dir


@dataclass
class UpcycleSpec:
    """Sparse upcycling: `dense_steps` of the dense model (FFN width `dense_intermediate_size`, which must equal
    the experts' width), then its FFN is copied into every expert with relative noise `noise_std` and training
    continues as an MoE on the same learning-rate schedule after `rewarmup_steps` of linear re-warm-up."""

    dense_steps: int = 1200
    dense_intermediate_size: int = 128
    noise_std: float = 0.01
    rewarmup_steps: int = 50


@dataclass
class TrainRecipe:
    """Everything that determines the demo model; loaded from recipes/training/*.yaml."""

    corpus: str = "data/corpus"
    tokens_cache: str = "data/tokens"
    out: str = "artifacts/demo-moe"
    checkpoint: str = "data/train-ckpt/ckpt.safetensors"  # tensors; its .json holds the rest (no pickle)
    log: str = "data/train-ckpt/log.jsonl"
    domains: list[str] = field(default_factory=list)
    vocab_size: int = 6144
    model: dict = field(default_factory=dict)  # Qwen3MoeConfig keyword arguments
    seq_len: int = 256
    batch_size: int = 16
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 200
    total_steps: int = 3000
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    aux_loss_coef: float = 0.01
    eval_every: int = 250
    eval_windows: int = 16
    seed: int = 0
    threads: int = 2
    tokenizer: str | None = None  # reuse this model folder's tokenizer instead of training one
    upcycle: UpcycleSpec | None = None  # train dense first, then copy its FFN into every expert

    @classmethod
    def from_yaml(cls, path: Path) -> TrainRecipe:
        raw = yaml.safe_load(Path(path).read_text()) or {}
        known = {f for f in cls.__dataclass_fields__}
        bad = sorted(set(raw) - known)
        if bad:
            raise ValueError(f"{path}: unknown key(s) {bad}; allowed: {sorted(known)}")
        if raw.get("upcycle") is not None:
            spec_known = set(UpcycleSpec.__dataclass_fields__)
            bad = sorted(set(raw["upcycle"]) - spec_known)
            if bad:
                raise ValueError(f"{path}: unknown upcycle key(s) {bad}; allowed: {sorted(spec_known)}")
            raw["upcycle"] = UpcycleSpec(**raw["upcycle"])
        return cls(**raw)

    def phase_at(self, step: int) -> str:
        """'dense' while an upcycled recipe trains its dense model, else 'moe'."""
        return "dense" if self.upcycle is not None and step < self.upcycle.dense_steps else "moe"


# ---------------------------------------------------------------- data
def tokenize_domain(tokenizer, texts: list[str]) -> np.ndarray:
    """One token stream per domain split: documents joined by the end-of-text token. (n_tokens,) uint16"""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for i in range(0, len(texts), 256):
        for row in tokenizer(texts[i:i + 256], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    return np.asarray(ids, dtype=np.uint16)


def load_token_streams(recipe: TrainRecipe, tokenizer, split: str) -> dict[str, np.ndarray]:
    """Tokenised splits, cached as .npy files keyed by the tokenizer's vocabulary hash."""
    cache = Path(recipe.tokens_cache)
    cache.mkdir(parents=True, exist_ok=True)
    vocab_tag = hashlib.sha256(json.dumps(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:10]
    streams = {}
    for d in recipe.domains:
        path = cache / f"{d}.{split}.{vocab_tag}.npy"
        if not path.exists():
            arr = tokenize_domain(tokenizer, read_split(Path(recipe.corpus), d, split))
            atomic_write(path, lambda tmp, arr=arr: _save_npy(tmp, arr))
        streams[d] = np.load(path)
    return streams


def sample_batch(streams: dict[str, np.ndarray], domains: list[str], batch: int, seq_len: int,
                 rng: np.random.Generator) -> torch.Tensor:
    """A (batch, seq_len + 1) window batch; each row's domain is drawn uniformly."""
    rows = []
    for _ in range(batch):
        s = streams[domains[rng.integers(len(domains))]]
        start = rng.integers(0, len(s) - seq_len - 1)
        rows.append(s[start:start + seq_len + 1].astype(np.int64))
    return torch.from_numpy(np.stack(rows))


def fixed_windows(stream: np.ndarray, n: int, seq_len: int) -> torch.Tensor:
    """`n` evenly spaced, non-overlapping (seq_len + 1) windows: the same held-out tokens at every evaluation."""
    n = min(n, (len(stream) - 1) // (seq_len + 1))
    starts = np.linspace(0, len(stream) - seq_len - 2, n).astype(np.int64)
    return torch.from_numpy(np.stack([stream[s:s + seq_len + 1].astype(np.int64) for s in starts]))


# ---------------------------------------------------------------- model + losses
def build_model(recipe: TrainRecipe, tokenizer, phase: str = "moe"):
    """The recipe's Qwen3-MoE; for the 'dense' phase of an upcycled recipe, the same model with every layer dense."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    from lightmoe_cli.demo.upcycle import dense_config_kwargs

    kwargs = dict(recipe.model)
    if phase == "dense":
        kwargs = dense_config_kwargs(kwargs, recipe.upcycle.dense_intermediate_size)
    cfg = Qwen3MoeConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=max(1024, recipe.seq_len), **kwargs)
    torch.manual_seed(recipe.seed)
    return Qwen3MoeForCausalLM(cfg)


def upcycled_model(recipe: TrainRecipe, tokenizer, dense_model):
    """The MoE made from the trained dense model (see demo/upcycle.py)."""
    from lightmoe_cli.demo.upcycle import upcycle_state

    moe = build_model(recipe, tokenizer, "moe")
    gen = torch.Generator().manual_seed(recipe.seed + 1)
    moe.load_state_dict(upcycle_state(dense_model.state_dict(), moe.state_dict(), recipe.upcycle.noise_std, gen))
    return moe


def per_layer_balance_loss(router_logits: tuple[torch.Tensor, ...], top_k: int) -> torch.Tensor:
    """Switch-style balance loss E * sum_e f_e * P_e, computed for each layer separately and summed.

    router_logits: one (tokens, experts) tensor per MoE layer.
    """
    total = router_logits[0].new_zeros(())
    for logits in router_logits:
        probs = logits.float().softmax(-1)  # (T, E)
        n_exp = probs.shape[-1]
        picks = probs.topk(top_k, dim=-1).indices
        frac = torch.zeros(n_exp, device=probs.device).scatter_add_(
            0, picks.reshape(-1), torch.ones(picks.numel(), device=probs.device)) / picks.numel()
        total = total + n_exp * (frac * probs.mean(0)).sum()
    return total


def lm_loss(model, window: torch.Tensor, output_router_logits: bool = False):
    """Next-token cross-entropy of a (B, S+1) window batch; also returns router logits if asked."""
    out = model(input_ids=window[:, :-1], output_router_logits=output_router_logits, use_cache=False)
    loss = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), window[:, 1:].reshape(-1))
    return loss, (out.router_logits if output_router_logits else None)


@torch.no_grad()
def evaluate(model, val_windows: dict[str, torch.Tensor], batch: int = 8) -> dict[str, float]:
    """Mean held-out loss per domain (nats/token) on fixed windows."""
    model.eval()
    result = {}
    for d, w in val_windows.items():
        losses = [lm_loss(model, w[i:i + batch])[0].item() * len(w[i:i + batch]) for i in range(0, len(w), batch)]
        result[d] = sum(losses) / len(w)
    model.train()
    return result


def lr_at(step: int, r: TrainRecipe) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr; an upcycled recipe re-warms linearly after the
    dense phase (the new router and fresh optimiser moments need it) and then rejoins the same cosine."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = min(1.0, (step - r.warmup_steps) / max(1, r.total_steps - r.warmup_steps))
    lr = r.lr * (r.min_lr_ratio + (1 - r.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
    if r.upcycle is not None and 0 <= step - r.upcycle.dense_steps < r.upcycle.rewarmup_steps:
        lr *= (step - r.upcycle.dense_steps + 1) / r.upcycle.rewarmup_steps
    return lr


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with path.open("wb") as f:  # a file object: np.save would append .npy to a temp file's name
        np.save(f, arr)


# ---------------------------------------------------------------- checkpoint / export
def save_checkpoint(path: Path, model, opt, rng, state: TrainState, recipe: TrainRecipe) -> None:
    """Model and optimizer tensors as safetensors, everything else as JSON beside it (never pickle: a loaded
    checkpoint cannot run code). The step is in both files, so a pair from two different saves is refused."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(opt))
    opt_state = opt.state_dict()
    meta = {"step": str(state.step)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    atomic_write(path.with_suffix(".json"), json.dumps({
        "step": state.step, "state": asdict(state), "rng": rng.bit_generator.state,
        "param_groups": opt_state["param_groups"], "recipe": asdict(recipe)}, indent=1))


def checkpoint_phase(path: Path) -> str | None:
    """Which model a checkpoint holds ('dense' or 'moe'), read from its JSON side file; None if unreadable."""
    try:
        return json.loads(path.with_suffix(".json").read_text())["state"].get("phase", "moe")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_checkpoint(path: Path, model, opt, rng) -> TrainState:
    """Restore what `save_checkpoint` wrote; a mismatched or damaged pair is a one-line error."""
    from safetensors import safe_open

    from lightmoe_cli.errors import LightMoEError

    side = path.with_suffix(".json")
    try:
        info = json.loads(side.read_text())
        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("step") != str(info["step"]):
                raise LightMoEError(f"checkpoint {path} and {side.name} are from different steps: "
                                    "start over with `lightmoe demo train --fresh`")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, ValueError, KeyError) as e:
        raise LightMoEError(f"checkpoint {path} is damaged ({e}): start over with `lightmoe demo train --fresh`") \
            from e
    model.load_state_dict({k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")})
    restore_optimizer(opt, tensors, info["param_groups"])
    rng.bit_generator.state = info["rng"]
    return TrainState(**info["state"])


def export_model(model, tokenizer, out: Path) -> None:
    """save_pretrained in bf16 into a temp folder, then swap it in: a crash never leaves half a model."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    keep = {p.name: p.read_bytes() for p in out.glob("*") if p.name in ("README.md", "training.json")} \
        if out.exists() else {}
    model_bf16 = model.to(torch.bfloat16)
    model_bf16.save_pretrained(tmp, safe_serialization=True)
    model.to(torch.float32)
    tokenizer.save_pretrained(tmp)
    for name, data in keep.items():
        (tmp / name).write_bytes(data)
    swap_in_dir(tmp, out)


@dataclass
class TrainState:
    step: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    phase: str = "moe"  # 'dense' during an upcycled recipe's dense phase


def train(recipe: TrainRecipe, resume: bool = True, on_log: Callable[[dict], None] | None = None,
          stop_after_s: float | None = None) -> TrainState:
    """Run (or continue) the recipe. Logs one JSON line per evaluation to recipe.log.

    An upcycled recipe trains the dense model first (exported beside the checkpoint, never to `out`), then at
    `dense_steps` turns it into the MoE (logged as an 'upcycle' record with the MoE's loss before any MoE step)."""
    torch.set_num_threads(recipe.threads)
    out = Path(recipe.out)
    ckpt_path, log_path = Path(recipe.checkpoint), Path(recipe.log)
    ckpt = resume and ckpt_path.exists() and ckpt_path.with_suffix(".json").exists()
    tokenizer = _recipe_tokenizer(recipe, ckpt_path.parent / "tokenizer", reuse=ckpt)

    train_streams = load_token_streams(recipe, tokenizer, "train")
    val_windows = {d: fixed_windows(s, recipe.eval_windows, recipe.seq_len)
                   for d, s in load_token_streams(recipe, tokenizer, "val").items()}

    phase = (checkpoint_phase(ckpt_path) or "moe") if ckpt else recipe.phase_at(0)
    model = build_model(recipe, tokenizer, phase)
    opt = _optimizer(model, recipe)
    rng = np.random.default_rng(recipe.seed)
    state = TrainState(phase=phase)
    if ckpt:
        state = load_checkpoint(ckpt_path, model, opt, rng)
    else:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        _log(log_path, {"step": 0, "tokens": 0, "wall_s": 0.0, "phase": phase,
                        "val_loss": evaluate(model, val_windows)}, on_log)

    top_k = model.config.num_experts_per_tok
    model.train()
    t_start, t0 = time.perf_counter(), time.perf_counter()
    run_loss, run_aux, run_n = 0.0, 0.0, 0
    while state.step < recipe.total_steps:
        if state.phase == "dense" and recipe.phase_at(state.step) == "moe":
            model = upcycled_model(recipe, tokenizer, model)
            model.train()
            opt = _optimizer(model, recipe)
            state.phase = "moe"
            _log(log_path, {"step": state.step, "tokens": state.tokens, "wall_s": round(state.wall_s, 1),
                            "phase": "upcycle", "val_loss": evaluate(model, val_windows)}, on_log)
            save_checkpoint(ckpt_path, model, opt, rng, state, recipe)
            t0 = time.perf_counter()
        moe = state.phase == "moe"
        for g in opt.param_groups:
            g["lr"] = lr_at(state.step, recipe)
        window = sample_batch(train_streams, recipe.domains, recipe.batch_size, recipe.seq_len, rng)
        loss, router_logits = lm_loss(model, window, output_router_logits=moe)
        aux = per_layer_balance_loss(router_logits, top_k) if moe else loss.new_zeros(())
        (loss + recipe.aux_loss_coef * aux).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens += window[:, :-1].numel()
        run_loss, run_aux, run_n = run_loss + loss.item(), run_aux + aux.item(), run_n + 1
        done = state.step >= recipe.total_steps
        phase_ends = recipe.phase_at(state.step) != state.phase
        out_of_time = stop_after_s is not None and time.perf_counter() - t_start > stop_after_s
        if state.step % recipe.eval_every == 0 or done or out_of_time or phase_ends:
            now = time.perf_counter()
            state.wall_s += now - t0
            t0 = now
            rec = {"step": state.step, "tokens": state.tokens, "wall_s": round(state.wall_s, 1),
                   "phase": state.phase, "lr": lr_at(state.step - 1, recipe), "train_loss": run_loss / run_n,
                   "balance_loss": run_aux / run_n / (len(router_logits) if moe else 1),
                   "tokens_per_s": round(state.tokens / max(state.wall_s, 1e-9), 1),
                   "val_loss": evaluate(model, val_windows)}
            run_loss, run_aux, run_n = 0.0, 0.0, 0
            save_checkpoint(ckpt_path, model, opt, rng, state, recipe)
            export_model(model, tokenizer, out if moe else ckpt_path.parent / "dense")
            t0 = time.perf_counter()  # evaluation and export time is not training time
            _log(log_path, rec, on_log)
            if out_of_time:
                break
    return state


def _recipe_tokenizer(recipe: TrainRecipe, tok_dir: Path, reuse: bool):
    """The recipe's tokenizer: a named model's (so two demo models share one), the checkpoint's, or a new one."""
    from transformers import PreTrainedTokenizerFast

    from lightmoe_cli.demo.tokenizer import train_tokenizer

    if recipe.tokenizer:
        return PreTrainedTokenizerFast.from_pretrained(recipe.tokenizer)
    if reuse and tok_dir.exists():
        return PreTrainedTokenizerFast.from_pretrained(tok_dir)
    tokenizer = train_tokenizer(Path(recipe.corpus), recipe.domains, recipe.vocab_size)
    tok_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(tok_dir)
    return tokenizer


def _optimizer(model, recipe: TrainRecipe) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=recipe.lr, betas=(0.9, 0.95), weight_decay=recipe.weight_decay)


def _log(log_path: Path, record: dict, on_log: Callable[[dict], None] | None) -> None:
    with log_path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    if on_log:
        on_log(record)
