"""Generate text with a runtime, timing prefill and decode apart, and collect the run statistics."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass, field

import torch

from lightmoe_cli.runtime.session import Runtime


@dataclass
class RequestResult:
    prompt: str
    text: str
    prompt_tokens: int
    new_tokens: int
    prefill_s: float
    decode_s: float


@dataclass
class RunStats:
    requests: list[RequestResult] = field(default_factory=list)
    resident_expert_bytes: int = 0
    non_expert_bytes: int = 0
    peak_rss_bytes: int = 0
    layers: dict[int, dict] = field(default_factory=dict)
    swaps: list[dict] = field(default_factory=list)
    bytes_loaded: int = 0
    load_seconds: float = 0.0
    modelled_io_seconds: float | None = None

    @property
    def prefill_tokens_per_s(self) -> float:
        t = sum(r.prefill_s for r in self.requests)
        return sum(r.prompt_tokens for r in self.requests) / t if t else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        t = sum(r.decode_s for r in self.requests)
        return sum(r.new_tokens for r in self.requests) / t if t else 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["prefill_tokens_per_s"] = self.prefill_tokens_per_s
        d["decode_tokens_per_s"] = self.decode_tokens_per_s
        return d


def peak_rss_bytes() -> int:
    """This process's peak RSS. VmHWM belongs to the current address space; getrusage's ru_maxrss is carried
    over exec() on Linux, so a child started by a big parent would report the parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _forward_params(model):
    import inspect

    return inspect.signature(model.forward).parameters


def cache_kwarg_name(model) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); accept both."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def last_logits_only(model) -> dict:
    """Forward kwargs that make the model compute logits for the last position only, when it supports it.

    Why: generation reads only the last position's logits, and the LM head over a whole prompt is a large share
    of a prefill (the demo model, 342 tokens, 1 thread: 41.7 ms with every position's logits, 31.9 ms with the
    last one's; its vocabulary of 6,144 makes the logits 8.4 MB). transformers' causal-LM heads take
    `logits_to_keep` (older ones `num_logits_to_keep`); a model with neither gets all of them, as before."""
    params = _forward_params(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def cache_of(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.inference_mode()
def generate_one(rt: Runtime, prompt: str, max_new_tokens: int, tokens_done: list[int]) -> RequestResult:
    """Greedy decoding with a KV cache; the manager may swap every `rt.check_every` tokens, never per token."""
    tok, model = rt.tokenizer, rt.model
    device = rt.device
    ids = tok(prompt, return_tensors="pt").input_ids.to(device)
    last_only = last_logits_only(model)  # a signature lookup: kept out of the timed prefill
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, **last_only)
    prefill = time.perf_counter() - t0
    name = cache_kwarg_name(model)
    past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    eos = tok.eos_token_id  # read once: a property that converts a token each time
    generated = []
    t1 = time.perf_counter()
    for _ in range(max_new_tokens):
        if nxt.item() == eos:
            break
        generated.append(nxt.item())
        tokens_done[0] += 1
        if tokens_done[0] % rt.check_every == 0:
            rt.checkpoint(boundary=False)
        out = model(input_ids=nxt, use_cache=True, **{name: past})
        past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    decode = time.perf_counter() - t1
    return RequestResult(prompt, tok.decode(generated, skip_special_tokens=True), ids.shape[1], len(generated),
                         prefill, decode)


@torch.inference_mode()
def generate_batch(rt: Runtime, prompts: list[str], max_new_tokens: int) -> list[RequestResult]:
    """Greedy decoding of several requests together (left padding, one forward per step for the batch).

    Why: a server decodes many requests at once, so one decode step routes B tokens, not 1 -- which is what a
    per-forward rule such as Alloc-T pools over (with one request, T = 1 and only the per-layer k remains).
    The batch ends when every request has hit end-of-text or `max_new_tokens`; the timings are the batch's,
    and each request's result carries the whole batch's prefill and decode time."""
    tok, model, device = rt.tokenizer, rt.model, rt.device
    rows = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    name, last_only = cache_kwarg_name(model), last_logits_only(model)
    t0 = time.perf_counter()
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **last_only)
    prefill = time.perf_counter() - t0
    past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    generated: list[list[int]] = [[] for _ in rows]
    done = torch.zeros(len(rows), dtype=torch.bool, device=device)
    eos = tok.eos_token_id
    t1 = time.perf_counter()
    for _ in range(max_new_tokens):
        done |= nxt[:, 0] == eos
        if bool(done.all()):
            break
        for i in (~done).nonzero().flatten().tolist():
            generated[i].append(int(nxt[i]))
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=positions, use_cache=True, **{name: past})
        past, nxt = cache_of(out), out.logits[:, -1].argmax(-1, keepdim=True)
    decode = time.perf_counter() - t1
    return [RequestResult(p, tok.decode(g, skip_special_tokens=True), len(r), len(g), prefill, decode)
            for p, r, g in zip(prompts, rows, generated, strict=True)]


def run_requests(rt: Runtime, prompts: list[str], max_new_tokens: int, io_bandwidth: float | None = None,
                 progress=None) -> RunStats:
    """Serve prompts one after another; request boundaries are check points for the manager."""
    stats = RunStats()
    tokens_done = [0]
    task = progress.add_task("requests", total=len(prompts)) if progress else None
    for i, p in enumerate(prompts):
        if i:
            rt.checkpoint()
        stats.requests.append(generate_one(rt, p, max_new_tokens, tokens_done))
        if progress:
            progress.advance(task)
    rt.finish()
    expert_ids = {id(p) for m in rt.layers for p in m.writer.adapter.expert_parameters(m.writer.layer)}
    stats.non_expert_bytes = sum(p.numel() * p.element_size() for p in rt.model.parameters() if id(p) not in expert_ids)
    stats.resident_expert_bytes = rt.resident_expert_bytes()
    stats.peak_rss_bytes = peak_rss_bytes()
    for m in rt.layers:
        stats.layers[m.layer_index] = asdict(m.stats) | m.stats.rates()
        stats.swaps += [asdict(r) for r in m.swaps]
        stats.bytes_loaded += m.stats.bytes_loaded
        stats.load_seconds += m.stats.load_seconds
    if io_bandwidth:
        stats.modelled_io_seconds = stats.bytes_loaded / io_bandwidth
    return stats
