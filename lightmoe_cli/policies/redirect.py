"""Redirect tables: a missing expert -> the most similar resident expert of the same layer, or drop.

Why a threshold: on a model whose experts are diverse (the demo model: mean output cosine between experts
~0.1), "the most similar" expert is a poor substitute and renormalised dropping (prune-style) measured better.
So a pick is redirected only when its best resident match is at least `min_similarity`; otherwise it is
dropped and the token's remaining router weights are renormalised.
"""

from __future__ import annotations

import numpy as np

DROP = -1


def redirect_table(similarity: np.ndarray, resident: list[int], min_similarity: float = -np.inf) -> np.ndarray:
    """(E,) table: table[e] = e for residents, the most similar resident for the others, or DROP.

    similarity: (E, E). Ties go to the lower expert id.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    e = sim.shape[0]
    res = np.asarray(sorted(resident), dtype=np.int64)
    if res.size == 0:
        raise ValueError("a layer needs at least one resident expert")
    table = np.full(e, DROP, dtype=np.int64)
    table[res] = res
    for x in range(e):
        if table[x] != DROP:
            continue
        scores = sim[x, res]
        best = int(np.argmax(scores))
        if scores[best] >= min_similarity:
            table[x] = res[best]
    return table


def apply_table(top_k_index: np.ndarray, top_k_weights: np.ndarray, table: np.ndarray,
                renormalise: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Map a token batch's picks through a table. (T, K) in, (T, K) out.

    Redirected picks keep their router weight; two picks landing on the same resident expert both run it
    (their weights add up, which is what the experts kernel computes). Dropped picks get weight 0 and point at
    the token's first kept expert (a valid id, so fused kernels need no sentinel); with `renormalise`, the
    kept weights are rescaled to the original total, as a pruned router would.
    """
    idx = table[np.asarray(top_k_index)]
    w = np.asarray(top_k_weights, dtype=np.float64).copy()
    dropped = idx == DROP
    w[dropped] = 0.0
    if renormalise:
        total = np.asarray(top_k_weights, dtype=np.float64).sum(-1, keepdims=True)
        kept = w.sum(-1, keepdims=True)
        w = np.where(kept > 0, w * total / np.where(kept > 0, kept, 1), w)
    first_kept = np.where(dropped.all(-1), 0, np.argmax(~dropped, axis=-1))
    fill = np.take_along_axis(idx, first_kept[:, None], -1)
    idx = np.where(dropped, fill, idx)
    idx = np.where(idx == DROP, 0, idx)
    return idx, w
