"""Expert-to-expert similarity matrices, three kinds; each drives the redirect table (missing -> most similar).

- weight: cosine between the experts' flattened weights (all of gate, up and down). Cheap and data-free, but
  blind to the permutation symmetry of hidden units, so it is high only for experts that share an origin
  (upcycled or copied experts).
- output: mean cosine between two experts' outputs on the same sample of hidden states that the router sent to
  this layer during calibration. What a redirect actually substitutes.
- coactivation: cosine of the experts' co-activation profiles, C[i, j] / sqrt(C[i, i] * C[j, j]); experts picked
  together for the same tokens serve the same inputs.
All matrices are (E, E), symmetric, with 1 on the diagonal (0 for experts never seen, except the diagonal).
"""

from __future__ import annotations

import numpy as np
import torch

SIMILARITY_KINDS = ("output", "weight", "coactivation")


def cosine_matrix(x: torch.Tensor) -> torch.Tensor:
    """(E, D) rows -> (E, E) pairwise cosine; a zero row has similarity 0 with everything else."""
    x = x.double()
    norms = x.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    sim = unit @ unit.T
    sim.fill_diagonal_(1.0)
    return sim


def weight_similarity(flat_weights: torch.Tensor) -> torch.Tensor:
    """(E, D) flattened expert weights -> (E, E) cosine."""
    return cosine_matrix(flat_weights)


def output_similarity(outputs: torch.Tensor) -> torch.Tensor:
    """(E, N, H) each expert's output on the same N hidden states -> (E, E) mean per-token cosine."""
    e, n, _ = outputs.shape
    if n == 0:
        return torch.eye(e, dtype=torch.float64)
    o = outputs.double()
    unit = o / o.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (E, N, H)
    sim = torch.einsum("inh,jnh->ij", unit, unit) / n
    sim.fill_diagonal_(1.0)
    return sim


def coactivation_similarity(coactivation: torch.Tensor) -> torch.Tensor:
    """(E, E) co-activation counts -> (E, E) normalised co-occurrence C_ij / sqrt(C_ii C_jj)."""
    c = coactivation.double()
    d = c.diagonal().clone()
    denom = torch.sqrt(torch.outer(d, d))
    sim = torch.where(denom > 0, c / denom.clamp_min(1e-300), torch.zeros_like(c))
    sim.fill_diagonal_(1.0)
    return sim


def reap_saliency(outputs: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
    """REAP's expert saliency: mean over the tokens routed to an expert of router weight x ||expert output||.

    outputs: (E, N, H) each expert's output on N sampled tokens; top_k_index / top_k_weights: (N, K) their real
    routing. An expert never routed to in the sample gets 0. Ranks experts for pruning by how much they actually
    contribute, not only by how often they are picked.
    """
    e, n, _ = outputs.shape
    norms = outputs.double().norm(dim=-1)  # (E, N)
    contrib = torch.zeros(e, dtype=torch.float64)
    count = torch.zeros(e, dtype=torch.float64)
    idx = top_k_index.long()
    valid = idx < e
    tok = torch.arange(n).unsqueeze(1).expand_as(idx)
    contrib.index_add_(0, idx[valid], top_k_weights.double()[valid] * norms[idx[valid], tok[valid]])
    count.index_add_(0, idx[valid], torch.ones_like(contrib[idx[valid]]))
    return torch.where(count > 0, contrib / count.clamp_min(1), torch.zeros_like(contrib))


def nearest_neighbour_similarity(sim: np.ndarray) -> np.ndarray:
    """(E, E) similarity -> (E,) each expert's highest similarity to ANOTHER expert: what a redirect of that
    expert could at best substitute (with every other expert resident)."""
    m = np.array(sim, dtype=np.float64, copy=True)
    np.fill_diagonal(m, -np.inf)
    return m.max(axis=1)


def similarity_summary(sim: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Figures of one layer's (E, E) similarity that say whether redirecting can pay off: mean and max over
    expert pairs, mean nearest-neighbour similarity, and the share of experts whose nearest neighbour reaches
    `threshold` (the redirect default)."""
    m = np.asarray(sim, dtype=np.float64)
    off = m[~np.eye(len(m), dtype=bool)]
    nn = nearest_neighbour_similarity(m)
    return {"mean_pair": float(off.mean()), "max_pair": float(off.max()), "mean_nearest": float(nn.mean()),
            "share_nearest_at_threshold": float((nn >= threshold).mean()), "threshold": threshold}
