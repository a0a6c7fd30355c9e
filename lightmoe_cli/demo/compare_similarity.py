"""Compare how alike the experts of several models are: per-layer similarity histograms (PNG) and a summary.

Why: whether redirecting a missing expert to a similar resident one can pay off depends on the model -- experts
trained from scratch are diverse, upcycled ones start as copies. This puts the two demo models (or any models
with a profile) side by side, from their calibration profiles.
"""

from __future__ import annotations

from pathlib import Path

from lightmoe_cli.analysis.similarity import similarity_summary


def similarity_matrices(model_name: str, progress=None) -> dict[int, dict]:
    """layer -> kind -> (E, E) numpy similarity, from the model's default profile (made when missing)."""
    from lightmoe_cli.loading import load_model_and_tokenizer
    from lightmoe_cli.profile.run import ensure_profile

    model, tok = load_model_and_tokenizer(model_name)
    sims = ensure_profile(model, tok, model_name, progress).similarities()
    return {li: {k: m.numpy() for k, m in kinds.items()} for li, kinds in sims.items()}


def compare_similarity(models: dict[str, dict[int, dict]], png: Path, threshold: float = 0.5) -> list[dict]:
    """Write the histogram PNG; return one summary row per model, layer and kind."""
    from lightmoe_cli.profile.plots import similarity_histograms

    similarity_histograms(models, png)
    return [{"model": name, "layer": li, "kind": kind} | similarity_summary(m, threshold)
            for name, layers in models.items() for li, kinds in sorted(layers.items()) for kind, m in kinds.items()]
