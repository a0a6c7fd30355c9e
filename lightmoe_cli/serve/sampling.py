"""Pick the next token of one request from its logits: greedy, temperature, nucleus (top_p), seeded.

Logprobs are those of the model's own distribution (log-softmax of the raw logits), as vLLM reports them, so a
client scoring text gets the model's probabilities whatever it sampled with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Sampling:
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    logprobs: int | None = None  # alternatives per token to report (0: only the chosen token's logprob)

    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        g = torch.Generator()
        g.manual_seed(self.seed)
        return g


@dataclass
class Choice:
    token: int
    logprob: float  # NaN when the request asked for no logprobs
    top: list[tuple[int, float]]  # the `logprobs` most likely tokens and their logprobs (empty when not asked)


def choose(logits: torch.Tensor, s: Sampling, gen: torch.Generator | None) -> Choice:
    """(V,) logits -> the next token. Greedy at temperature 0 (or top_p 0), else sampled with `gen`. The
    log-softmax over the vocabulary is computed only when the request asked for logprobs (its logprob is NaN
    otherwise): per decoded token it was 5% of a demo-model step."""
    greedy = s.temperature <= 0 or s.top_p <= 0
    if greedy:
        token = int(torch.argmax(logits))
    else:
        probs = torch.softmax(logits.float() / s.temperature, dim=-1)
        if s.top_p < 1.0:
            sorted_p, order = probs.sort(descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < s.top_p  # the smallest prefix whose mass reaches top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
        token = int(torch.multinomial(probs, 1, generator=gen))
    if s.logprobs is None:
        return Choice(token, float("nan"), [])
    logp = torch.log_softmax(logits.float(), dim=-1)
    top: list[tuple[int, float]] = []
    if s.logprobs:
        vals, ids = logp.topk(min(s.logprobs, logp.shape[-1]))
        top = list(zip(ids.tolist(), vals.tolist(), strict=True))
    return Choice(token, float(logp[token]), top)


def prompt_logprobs(logits: torch.Tensor, ids: torch.Tensor, n_top: int) -> list[Choice | None]:
    """The logprob of each prompt token given the ones before it ((L, V) logits of the prompt, (L,) ids); the
    first token has none (None), as in the legacy completions API with echo."""
    logp = torch.log_softmax(logits[:-1].float(), dim=-1)
    chosen = logp.gather(-1, ids[1:, None]).squeeze(-1).tolist()
    tops = logp.topk(min(n_top, logp.shape[-1]), dim=-1) if n_top else None
    out: list[Choice | None] = [None]
    for i, lp in enumerate(chosen):
        top = list(zip(tops.indices[i].tolist(), tops.values[i].tolist(), strict=True)) if tops is not None else []
        out.append(Choice(int(ids[i + 1]), lp, top))
    return out
