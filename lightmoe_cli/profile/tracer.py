"""Run a model over one calibration task and collect routing statistics through hooks on the real experts call.

Why hooks (never recomputing top-k from logits): DeepSeek-V3's correction bias and group limits, Mixtral's
renormalisation and redirects all live in the model's own routing code; the experts module's inputs are the truth.
Besides the statistics, the tracer can keep a small fixed-size sample of routed hidden states per layer (for
output-space similarity) and stream raw traces to disk in chunks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from lightmoe_cli.models import MoEAdapter, MoELayer, get_adapter, record_routing
from lightmoe_cli.models.offload import input_device
from lightmoe_cli.profile.accumulator import TaskStats
from lightmoe_cli.profile.batches import TokenBatch


class HiddenSampler:
    """Up to `quota` hidden states per layer, drawn at random from real tokens (fixed memory)."""

    def __init__(self, layers: list[MoELayer], quota: int, seed: int = 0):
        self.quota = quota
        self.samples: dict[int, list[torch.Tensor]] = {m.layer_index: [] for m in layers}
        self.routes: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {m.layer_index: [] for m in layers}
        self.taken: dict[int, int] = {m.layer_index: 0 for m in layers}
        self.gen = torch.Generator().manual_seed(seed)

    def offer(self, layer_index: int, hidden: torch.Tensor, mask: torch.Tensor | None, share: float,
              index: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> None:
        """hidden: (T, H) the experts' input, index/weights: (T, K) its routing; takes about `share` of the real
        tokens until the quota is met."""
        left = self.quota - self.taken[layer_index]
        if left <= 0:
            return
        rows = hidden.reshape(-1, hidden.shape[-1])
        keep = mask.reshape(-1).bool() if mask is not None else torch.ones(rows.shape[0], dtype=torch.bool)
        rows = rows[keep]
        n = min(left, max(1, int(round(rows.shape[0] * share))), rows.shape[0])
        pick = torch.randperm(rows.shape[0], generator=self.gen)[:n]
        self.samples[layer_index].append(rows[pick].detach().float().cpu().clone())
        if index is not None and weights is not None:
            k = index.shape[-1]
            self.routes[layer_index].append((index.reshape(-1, k)[keep][pick].cpu().long(),
                                             weights.reshape(-1, k)[keep][pick].detach().float().cpu()))
        self.taken[layer_index] += n

    def tensors(self) -> dict[str, torch.Tensor]:
        """layer.{i}.hidden (N, H), and where routing was offered layer.{i}.index / .weights (N, K)."""
        out = {}
        for li, v in self.samples.items():
            out[f"layer.{li}.hidden"] = torch.cat(v) if v else torch.zeros(0)
            if self.routes[li]:
                out[f"layer.{li}.index"] = torch.cat([r[0] for r in self.routes[li]])
                out[f"layer.{li}.weights"] = torch.cat([r[1] for r in self.routes[li]])
        return out


class TraceWriter:
    """Raw per-token routing (top-k ids int16, weights fp16, window positions; optionally the router inputs fp16),
    written in chunks of `chunk_tokens` tokens."""

    def __init__(self, folder: Path, chunk_tokens: int = 65536, router_inputs: bool = False):
        self.folder = folder
        self.chunk_tokens = chunk_tokens
        self.router_inputs = router_inputs  # also keep every real token's router input (fp16)
        self.buf: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.tokens_buf: list[torch.Tensor] = []
        self.positions_buf: list[torch.Tensor] = []
        self.hidden: dict[int, list[torch.Tensor]] = {}
        self.buffered = 0
        self.chunks = 0
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, layer_index: int, idx: torch.Tensor, w: torch.Tensor) -> None:
        self.buf.setdefault(layer_index, []).append((idx.to(torch.int16), w.to(torch.float16)))

    def add_hidden(self, layer_index: int, hidden: torch.Tensor) -> None:
        """The router's input of every real token (fp16): what an expert predictor learns from."""
        self.hidden.setdefault(layer_index, []).append(hidden.to(torch.float16))

    def add_tokens(self, token_ids: torch.Tensor, positions: torch.Tensor | None = None) -> None:
        """The real tokens of a batch, and each one's position in its window (0 starts a new window)."""
        if positions is not None:
            self.positions_buf.append(positions.to(torch.int32))
        self.tokens_buf.append(token_ids.to(torch.int32))
        self.buffered += token_ids.numel()
        if self.buffered >= self.chunk_tokens:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buffered:
            return
        data = {"token_ids": torch.cat(self.tokens_buf)}
        if self.positions_buf:
            data["positions"] = torch.cat(self.positions_buf)
        for li, parts in self.buf.items():
            data[f"layer.{li}.ids"] = torch.cat([p[0] for p in parts])
            data[f"layer.{li}.weights"] = torch.cat([p[1] for p in parts])
        for li, parts in self.hidden.items():
            data[f"layer.{li}.router_input"] = torch.cat(parts)
        path = self.folder / f"chunk_{self.chunks:05d}.safetensors"
        save_file(data, str(path) + ".tmp")
        path.with_name(path.name + ".tmp").replace(path)
        self.chunks += 1
        self.buf, self.tokens_buf, self.positions_buf, self.hidden, self.buffered = {}, [], [], {}, 0


@torch.no_grad()
def trace_task(model, layers: list[MoELayer], name: str, batches: Iterable[TokenBatch], *,
               sampler: HiddenSampler | None = None, sample_share: float = 0.05,
               traces: TraceWriter | None = None, on_batch: Callable[[int], None] | None = None,
               adapter: MoEAdapter | None = None) -> TaskStats:
    """Forward every batch; statistics exclude padding. on_batch(real_tokens) is called after each batch.

    The sampler is fed through the adapter's expert-input hook: what the experts receive, wherever the
    family hands it over."""
    stats = TaskStats.empty(name, {m.layer_index: m.num_experts for m in layers})
    current: dict = {"mask": None, "half": 0}

    def on_route(layer_index: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> None:
        mask = current["mask"]
        stats.layers[layer_index].update(top_k_index.cpu(), top_k_weights.cpu(), mask, current["half"])
        if traces is not None:
            keep = mask.bool() if mask is not None else slice(None)
            traces.add(layer_index, top_k_index.cpu()[keep], top_k_weights.cpu()[keep])

    handles = []
    keep_inputs = traces is not None and traces.router_inputs
    if sampler is not None or keep_inputs:
        adapter = adapter or get_adapter(model)
        for m in layers:
            def offer(hidden: torch.Tensor, index: torch.Tensor, weights: torch.Tensor, li: int = m.layer_index):
                if sampler is not None:
                    sampler.offer(li, hidden, current["mask"], sample_share, index, weights)  # [T, H], [T, K]
                if keep_inputs:
                    rows = hidden.reshape(-1, hidden.shape[-1]).cpu()
                    traces.add_hidden(li, rows[current["mask"]] if current["mask"] is not None else rows)
            handles.append(adapter.add_expert_input_hook(m, offer))
    device = input_device(model)
    try:
        with record_routing(model, on_route):
            for n, batch in enumerate(batches):
                current["mask"] = batch.attention_mask.reshape(-1).bool()
                current["half"] = n % 2  # split-half: even and odd batches
                model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                      use_cache=False)
                if traces is not None:
                    positions = (batch.attention_mask.cumsum(-1) - 1).reshape(-1)
                    traces.add_tokens(batch.input_ids.reshape(-1)[current["mask"]], positions[current["mask"]])
                if on_batch:
                    on_batch(batch.real_tokens)
    finally:
        for h in handles:
            h.remove()
    if traces is not None:
        traces.flush()
    return stats
