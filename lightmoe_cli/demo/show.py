"""`lightmoe demo show`: a quick look at the embedded model (card figures + one continuation per domain)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lightmoe_cli.loading import load_model_and_tokenizer, resolve_model


def show_demo(model: str | None, max_new_tokens: int = 40, console: Console | None = None) -> dict[str, str]:
    """Print the card's headline figures (if measured) and greedy continuations; returns the continuations."""
    import torch

    from lightmoe_cli.demo.card import SAMPLE_PROMPTS
    from lightmoe_cli.models import get_adapter

    console = console or Console()
    torch.set_num_threads(2)
    path = resolve_model(model)
    lm, tok = load_model_and_tokenizer(path)
    layers = get_adapter(lm).moe_layers(lm)
    console.print(f"[bold]{path}[/]: {type(lm).__name__}, {sum(p.numel() for p in lm.parameters()) / 1e6:.1f}M "
                  f"parameters, {len(layers)} MoE layers x {layers[0].num_experts} experts, top-{layers[0].top_k}")
    card = Path(path) / "training.json"
    if card.exists():
        m = json.loads(card.read_text())
        table = Table(title="held-out loss and routing specialisation (from training.json)")
        for col in ("domain", "test loss (nats)", "own top-half coverage (mean over layers)"):
            table.add_column(col)
        per_layer = m["specialisation"]["trained"]["per_layer"]
        for d, loss in m["test_loss"].items():
            cov = sum(p["top_half_coverage_by_domain"][d] for p in per_layer) / len(per_layer)
            table.add_row(d, f"{loss:.3f}", f"{cov:.1%}")
        console.print(table)
    out = {}
    table = Table(title=f"greedy continuations ({max_new_tokens} tokens)", show_lines=True)
    table.add_column("domain")
    table.add_column("prompt")
    table.add_column("continuation")
    with torch.no_grad():
        for d, prompt in SAMPLE_PROMPTS.items():
            ids = tok(prompt, return_tensors="pt").input_ids
            gen = lm.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            out[d] = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
            table.add_row(d, prompt, out[d])
    console.print(table)
    return out
