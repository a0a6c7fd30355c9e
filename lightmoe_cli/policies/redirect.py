"""Redirect tables: a missing expert -> the most similar resident expert of the same layer, or drop.

Why a threshold: on a model whose experts are diverse (the demo model: mean output cosine between experts
0.03-0.08 per layer, highest 0.22), "the most similar" expert is a poor substitute and renormalised pruning
measured better. So a pick is redirected only when its best resident match is at least `min_similarity`;
otherwise the table says DROP and the runtime (runtime/managed.py) re-routes the token among the residents as
a pruned router would, or drops the pick and renormalises the token's weights.
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

