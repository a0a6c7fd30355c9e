"""Streaming routing statistics: fixed-size accumulators, so memory stays flat however many tokens we see.

Why separate from the hooks: the counting is plain tensor arithmetic on (tokens, top_k) arrays, testable with a
hand-written routing, and the hooks only hand it what the real router chose.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerStats:
    """Routing statistics of one MoE layer on one task.

    counts: (E,) how often each expert was selected (a token selecting it in its top-k counts once)
    gate_mass: (E,) summed router weight given to each expert
    coactivation: (E, E) tokens that selected both i and j; the diagonal equals `counts`
    tokens: real (non-padding) tokens seen
    half_mass: (2, E) gate mass of the even and the odd batches apart: a split-half, so a choice made on one
        half can be checked on tokens it has not seen
    """

    counts: torch.Tensor
    gate_mass: torch.Tensor
    coactivation: torch.Tensor
    tokens: int = 0
    half_mass: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.half_mass is None:
            self.half_mass = torch.zeros(2, self.counts.shape[0], dtype=torch.float64)

    @classmethod
    def empty(cls, num_experts: int) -> LayerStats:
        return cls(torch.zeros(num_experts, dtype=torch.int64), torch.zeros(num_experts, dtype=torch.float64),
                   torch.zeros(num_experts, num_experts, dtype=torch.int64))

    def update(self, top_k_index: torch.Tensor, top_k_weights: torch.Tensor, mask: torch.Tensor | None,
               half: int = 0) -> None:
        """Add one forward's picks. top_k_index/weights: (T, K); mask: (T,) bool, True = real token; half: which
        split-half (0 or 1) this forward belongs to."""
        idx = top_k_index.reshape(top_k_index.shape[0], -1).long()
        w = top_k_weights.reshape(idx.shape)
        if mask is not None:
            keep = mask.reshape(-1).bool()
            idx, w = idx[keep], w[keep]
        e = self.counts.shape[0]
        valid = idx < e  # an index == E is the "dropped" sentinel: not a selection
        if not bool(valid.all()):
            w = w.masked_fill(~valid, 0)
            idx = idx.masked_fill(~valid, e)
        # float one-hot (an extra column takes sentinels): BLAS does the co-activation product; counts stay
        # exact (integers below 2**24 per batch); a token picking one expert twice counts once
        onehot = torch.zeros(idx.shape[0], e + 1)
        onehot.scatter_(1, idx, 1.0)
        onehot = onehot[:, :e]
        self.counts += onehot.sum(0).round().long()
        self.gate_mass.index_add_(0, idx[valid], w[valid].double())
        self.half_mass[half].index_add_(0, idx[valid], w[valid].double())
        self.coactivation += (onehot.T @ onehot).round().long()
        self.tokens += int(idx.shape[0])

    def merge(self, other: LayerStats) -> None:
        self.counts += other.counts
        self.gate_mass += other.gate_mass
        self.coactivation += other.coactivation
        self.tokens += other.tokens
        self.half_mass += other.half_mass


@dataclass
class TaskStats:
    """Per-layer statistics of one calibration task, keyed by the real decoder layer index."""

    name: str
    layers: dict[int, LayerStats] = field(default_factory=dict)

    @classmethod
    def empty(cls, name: str, layer_experts: dict[int, int]) -> TaskStats:
        return cls(name, {li: LayerStats.empty(e) for li, e in layer_experts.items()})

    @property
    def tokens(self) -> int:
        return next(iter(self.layers.values())).tokens if self.layers else 0

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat tensor dict for safetensors: layer.{i}.{counts,gate_mass,coactivation,tokens}."""
        out = {}
        for li, s in self.layers.items():
            out[f"layer.{li}.counts"] = s.counts
            out[f"layer.{li}.gate_mass"] = s.gate_mass
            out[f"layer.{li}.coactivation"] = s.coactivation
            out[f"layer.{li}.tokens"] = torch.tensor([s.tokens], dtype=torch.int64)
            out[f"layer.{li}.half_mass"] = s.half_mass
        return out

    @classmethod
    def from_tensors(cls, name: str, tensors: dict[str, torch.Tensor]) -> TaskStats:
        layer_ids = sorted({int(k.split(".")[1]) for k in tensors})
        return cls(name, {li: LayerStats(tensors[f"layer.{li}.counts"], tensors[f"layer.{li}.gate_mass"],
                                         tensors[f"layer.{li}.coactivation"],
                                         int(tensors[f"layer.{li}.tokens"][0]), tensors.get(f"layer.{li}.half_mass"))
                         for li in layer_ids})
