"""Feed the model's experts to the pure similarity functions: weights via the adapter, outputs on sampled
routed hidden states through the adapter's `run_expert` (the real experts module, every token sent to one
expert at weight 1, however the family's experts take their routing)."""

from __future__ import annotations

import torch

from lightmoe_cli.analysis.similarity import (
    coactivation_similarity,
    output_similarity,
    reap_saliency,
    weight_similarity,
)
from lightmoe_cli.models import MoEAdapter, MoELayer


def flat_expert_weights(adapter: MoEAdapter, layer: MoELayer) -> torch.Tensor:
    """(E, D) every expert's tensors flattened and concatenated in a fixed order."""
    rows = []
    for e in range(layer.num_experts):
        tensors = adapter.read_expert(layer, e)
        rows.append(torch.cat([tensors[k].detach().float().reshape(-1) for k in sorted(tensors)]))
    return torch.stack(rows)


@torch.no_grad()
def expert_outputs(adapter: MoEAdapter, layer: MoELayer, hidden: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """(N, H) hidden states -> (E, N, H): each expert's own output (router weight 1) on every state."""
    n = hidden.shape[0]
    outs = []
    for e in range(layer.num_experts):
        parts = [adapter.run_expert(layer, e, hidden[s:s + chunk]).float().cpu() for s in range(0, n, chunk)]
        outs.append(torch.cat(parts) if parts else torch.zeros(0, hidden.shape[-1]))
    return torch.stack(outs)  # (E, N, H)


def layer_similarities(adapter: MoEAdapter, layer: MoELayer, coactivation: torch.Tensor,
                       hidden_sample: torch.Tensor | None,
                       routing: tuple[torch.Tensor, torch.Tensor] | None = None,
                       ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The three (E, E) similarity matrices of one layer (`output` omitted without a hidden sample), and the
    REAP saliency (E,) when the sample's routing is known."""
    sims = {"weight": weight_similarity(flat_expert_weights(adapter, layer)),
            "coactivation": coactivation_similarity(coactivation)}
    saliency = None
    if hidden_sample is not None and hidden_sample.numel():
        outputs = expert_outputs(adapter, layer, hidden_sample)
        sims["output"] = output_similarity(outputs)
        if routing is not None:
            saliency = reap_saliency(outputs, *routing)
    return sims, saliency
