"""How a profile is made (its settings travel to worker processes and into the manifest)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProfileSettings:
    seq_len: int = 256
    batch_size: int = 8
    sample_tokens: int = 512  # routed hidden states kept per layer for output-space similarity
    save_traces: bool = False
    save_router_inputs: bool = False  # traces also keep each token's router input (for expert predictors)
    trace_chunk_tokens: int = 65536
    similarity_layer: int | None = None  # layer of the similarity plot (default: the middle MoE layer)
    seed: int = 0
    shards: int = 4  # pieces per task, whatever the workers: runs of the same shards give identical statistics
    extra: dict = field(default_factory=dict)
