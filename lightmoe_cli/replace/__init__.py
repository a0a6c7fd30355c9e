"""Expert replacing (LightMoE, arXiv 2603.12645): redundant experts become a kept expert's weights plus an
expert-specific low-rank term, recovered by a short annealed training run."""
