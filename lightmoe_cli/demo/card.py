"""Measure the trained demo model honestly and write its model card (README.md) and training.json.

Why: everything lightmoe claims is measured on this model, and the method needs experts that specialise by
domain. The card therefore reports routing specialisation on HELD-OUT text, next to two references that keep
the number honest: the same architecture at initialisation (token identity alone already biases routing) and
a split-half comparison within each domain (the noise floor of the divergence).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightmoe_cli.analysis.routing_stats import (
    cross_coverage,
    entropy_bits,
    js_divergence_bits,
    mean_offdiagonal,
    normalise,
    pairwise_js_bits,
    top_half_coverage,
)
from lightmoe_cli.demo.train import TrainRecipe, build_model, evaluate, fixed_windows, load_token_streams
from lightmoe_cli.files import atomic_write
from lightmoe_cli.models import get_adapter, record_routing
from lightmoe_cli.paths import repo_relative

SAMPLE_PROMPTS = {
    "dictionary": "Lantern \\Lan\"tern\\, n.",
    "bible_en": "3:16 For God so loved",
    "bible_es": "1:3 Y dijo Dios",
    "python_docs": ":mod:`json` --- JSON encoder and decoder\n",
    "python_code": "def read_lines(path):\n",
    "arithmetic": "17 + 25 = 42\n38 * 2 = 76\n45 - 19 = ",
    "algebra": "solve 3x + 4 = 19 ; x = 5\nsolve 2y - 6 = 10 ; ",
    "strings": "reverse lamp -> pmal\nupper dog -> DOG\nreverse tigon -> ",
}


SPEC_HEADER = ("| layer | JS trained | JS at init | JS split-half | own top half | own top half at init "
               "| others' top half | routing entropy (bits) | busiest expert | unused |\n" + "|---" * 10 + "|")


@dataclass
class RoutingCounts:
    """Expert selection counts on held-out text. counts[layer] is (n_domains, n_experts); halves likewise."""

    layer_indices: list[int]
    counts: list[np.ndarray]
    halves: list[np.ndarray]  # (n_domains, 2, n_experts): even vs odd windows, for the noise floor


@torch.no_grad()
def routing_counts(model, windows: dict[str, torch.Tensor], batch: int = 8) -> RoutingCounts:
    """Count top-k picks per domain and layer with hooks on the real experts call."""
    layers = get_adapter(model).moe_layers(model)
    pos = {m.layer_index: i for i, m in enumerate(layers)}
    n_dom, n_exp = len(windows), layers[0].num_experts
    halves = [np.zeros((n_dom, 2, n_exp)) for _ in layers]
    state = {"domain": 0, "half": 0}

    def on_route(layer_index: int, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> None:
        picks = np.bincount(top_k_index.reshape(-1).numpy(), minlength=n_exp)[:n_exp]
        halves[pos[layer_index]][state["domain"], state["half"]] += picks

    model.eval()
    with record_routing(model, on_route):
        for d, w in enumerate(windows.values()):
            state["domain"] = d
            for i in range(0, len(w)):
                state["half"] = i % 2
                model(input_ids=w[i:i + 1, :-1], use_cache=False)
    return RoutingCounts([m.layer_index for m in layers], [h.sum(axis=1) for h in halves], halves)


def specialisation(rc: RoutingCounts, domains: list[str]) -> dict:
    """Per-layer specialisation figures; all divergences in bits (JS of base-2 logs, in [0, 1])."""
    per_layer = []
    for li, counts, halves in zip(rc.layer_indices, rc.counts, rc.halves, strict=True):
        js = pairwise_js_bits(counts)
        cc = cross_coverage(counts)
        n = len(domains)
        per_layer.append({
            "layer": li,
            "js_between_domains_bits": mean_offdiagonal(js),
            "js_split_half_bits": float(np.mean([js_divergence_bits(h[0], h[1]) for h in halves])),
            "top_half_coverage_own": float(np.mean(np.diag(cc))),
            "top_half_coverage_others": float((cc.sum() - np.trace(cc)) / (n * (n - 1))),
            "routing_entropy_bits": entropy_bits(counts.sum(0)),
            "max_entropy_bits": float(np.log2(counts.shape[1])),
            "busiest_expert_share": float(normalise(counts.sum(0)).max()),
            "unused_experts": int((counts.sum(0) == 0).sum()),
            "top_half_coverage_by_domain": {d: top_half_coverage(counts[i]) for i, d in enumerate(domains)},
            "js_matrix_bits": js.round(4).tolist(),
        })
    keys = ["js_between_domains_bits", "js_split_half_bits", "top_half_coverage_own", "top_half_coverage_others",
            "routing_entropy_bits", "busiest_expert_share"]
    return {"per_layer": per_layer, "mean": {k: float(np.mean([p[k] for p in per_layer])) for k in keys}}


@torch.no_grad()
def sample_generations(model, tokenizer, max_new_tokens: int = 40) -> dict[str, str]:
    """Greedy continuations of one prompt per domain: does the model write domain-appropriate text?"""
    out = {}
    for d, prompt in SAMPLE_PROMPTS.items():
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        gen = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        out[d] = tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    return out


def _versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "tokenizers": tokenizers.__version__}


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def expert_similarity(model, tokenizer, name: str) -> dict:
    """Per layer and kind (output, weight, coactivation): the similarity summary that says whether redirecting
    a missing expert can pay off, from the model's default profile (made with the demo calibration recipe when
    missing)."""
    from lightmoe_cli.analysis.similarity import similarity_summary
    from lightmoe_cli.profile.run import ensure_profile

    prof = ensure_profile(model, tokenizer, name)
    return {"profile": repo_relative(prof.path), "per_layer": [
        {"layer": li} | {k: similarity_summary(m.numpy()) for k, m in sorted(kinds.items())}
        for li, kinds in prof.similarities().items()]}


def measure(recipe: TrainRecipe, tokens_per_domain: int, recipe_path: str = "recipes/training/demo-moe.yaml") -> dict:
    """Everything the card reports, as one JSON-able dict."""
    from dataclasses import asdict

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(recipe.threads)
    out = Path(recipe.out)
    if not (out / "config.json").exists():
        raise FileNotFoundError(f"{out} has no trained model: run `lightmoe demo train` first")
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    init_model = build_model(recipe, tokenizer)  # same architecture and seed, untrained

    n_windows = max(2, tokens_per_domain // recipe.seq_len)
    test_streams = load_token_streams(recipe, tokenizer, "test")
    windows = {d: fixed_windows(s, n_windows, recipe.seq_len) for d, s in test_streams.items()}
    t0 = time.perf_counter()
    test_loss = evaluate(model, windows)
    init_loss = evaluate(init_model, {d: w[:4] for d, w in windows.items()})
    trained = specialisation(routing_counts(model, windows), recipe.domains)
    at_init = specialisation(routing_counts(init_model, windows), recipe.domains)
    log = _read_log(Path(recipe.log))
    train_streams = load_token_streams(recipe, tokenizer, "train")
    last = log[-1] if log else {}
    weights = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    cfg = model.config
    return {
        "schema": 1,
        "model": {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
                  "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "experts": cfg.num_experts,
                  "top_k": cfg.num_experts_per_tok, "expert_intermediate": cfg.moe_intermediate_size,
                  "vocab": cfg.vocab_size, "weights_bytes": weights, "dtype": "bfloat16"},
        "recipe": asdict(recipe),
        "recipe_path": recipe_path,
        "data": {d: {"train_tokens": int(len(train_streams[d])), "test_tokens": int(len(test_streams[d]))}
                 for d in recipe.domains},
        "training": {"steps": last.get("step", 0), "tokens": last.get("tokens", 0),
                     "wall_s": last.get("wall_s", 0.0), "tokens_per_s": last.get("tokens_per_s", 0.0),
                     "val_loss_curve": [{"step": r["step"], "tokens": r["tokens"], "val_loss": r["val_loss"],
                                         "phase": r.get("phase", "moe")} for r in log]},
        "test_loss": test_loss,
        "test_loss_at_init": init_loss,
        "held_out_tokens_per_domain": int(n_windows * recipe.seq_len),
        "specialisation": {"trained": trained, "at_init": at_init},
        "samples": sample_generations(model, tokenizer),
        "expert_similarity": expert_similarity(model, tokenizer, str(out)),
        "measure_seconds": round(time.perf_counter() - t0, 1),
        "versions": _versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, CPU only",
        "date": time.strftime("%Y-%m-%d"),
    }


def _fmt_curve(curve: list[dict], domains: list[str]) -> str:
    step_rows = curve if len(curve) <= 10 else curve[:: max(1, len(curve) // 8)] + [curve[-1]]
    seen, rows = set(), []
    for r in step_rows:
        if r["step"] in seen:
            continue
        seen.add(r["step"])
        rows.append(f"| {r['step']} | {r['tokens']:,} | " + " | ".join(f"{r['val_loss'][d]:.3f}" for d in domains)
                    + f" | {np.mean(list(r['val_loss'].values())):.3f} |")
    head = "| step | tokens | " + " | ".join(domains) + " | mean |\n|" + "---|" * (len(domains) + 3)
    return head + "\n" + "\n".join(rows)


def _intro(m: dict, recipe_path: str) -> tuple[str, str]:
    """The card's title and opening paragraph: trained from scratch, or upcycled from a dense model."""
    mod, t, up = m["model"], m["training"], m["recipe"].get("upcycle")
    if up:
        return "lightmoe demo MoE, upcycled", f"""The toolkit's second demo model, made by **sparse upcycling** by \
lightmoe's own recipe
(`{recipe_path}`): a dense model of the same family (every layer one FFN of the experts' width,
{up['dense_intermediate_size']}) trained for {up['dense_steps']:,} steps, then its FFN copied into all {mod['experts']}
experts of every layer ({up['noise_std']:.0%} relative noise, a fresh router) and trained on as an MoE to
{t['steps']:,} steps. Same family, shape, tokenizer, corpus and token count as the first demo model
(`artifacts/demo-moe`, trained from scratch); they differ in how they were made, as Mixtral or Qwen1.5-MoE differ
from models trained as MoEs from the start. It exists to measure what redirecting a missing expert to a similar
resident one is worth when experts are alike. A toy: {mod['parameters'] / 1e6:.1f}M parameters, trained on CPU."""
    return "lightmoe demo MoE", f"""A small Mixture-of-Experts language model trained by lightmoe's own recipe
(`{recipe_path}`) on a multi-domain corpus built offline from public sources and our own
generators. It is the embedded default model and the test model of the toolkit: everything lightmoe measures
about accuracy is measured on it. It is a toy: {mod['parameters'] / 1e6:.1f}M parameters, trained on CPU."""


def _similarity_section(m: dict) -> str:
    sim = m.get("expert_similarity")
    if not sim:
        return ""
    kinds = [k for k in ("output", "weight", "coactivation") if k in sim["per_layer"][0]]
    rows = "\n".join(f"| {r['layer']} | " + " | ".join(
        f"{r[k]['mean_pair']:.2f} / {r[k]['mean_nearest']:.2f} / {r[k]['max_pair']:.2f} / "
        f"{r[k]['share_nearest_at_threshold']:.0%}" for k in kinds) + " |" for r in sim["per_layer"])
    return f"""
## Expert similarity (calibration profile)
Per layer and kind: mean over expert pairs / mean of each expert's nearest neighbour / highest pair / share of
experts whose nearest neighbour reaches {sim['per_layer'][0][kinds[0]]['threshold']:.1f} (the redirect
threshold's default). Output = mean cosine of two experts' outputs on the same routed hidden states; weight =
cosine of the flattened weights; coactivation = normalised co-selection. From `{sim['profile']}`.

| layer | {' | '.join(kinds)} |
|---|{'---|' * len(kinds)}
{rows}
"""


def _table_rows(m: dict) -> tuple[str, str, str, str]:
    """The specialisation, coverage, loss and sample rows of the card."""
    domains = list(m["test_loss"])
    tr, ini = m["specialisation"]["trained"], m["specialisation"]["at_init"]
    spec_rows = "\n".join(
        f"| {a['layer']} | {a['js_between_domains_bits']:.3f} | {b['js_between_domains_bits']:.3f} | "
        f"{a['js_split_half_bits']:.4f} | {a['top_half_coverage_own']:.1%} | {b['top_half_coverage_own']:.1%} | "
        f"{a['top_half_coverage_others']:.1%} | {a['routing_entropy_bits']:.2f} / {a['max_entropy_bits']:.0f} | "
        f"{a['busiest_expert_share']:.1%} | {a['unused_experts']} |"
        for a, b in zip(tr["per_layer"], ini["per_layer"], strict=True))
    cov_rows = "\n".join(
        f"| {d} | " + " | ".join(f"{p['top_half_coverage_by_domain'][d]:.1%}" for p in tr["per_layer"]) + " |"
        for d in domains)
    loss_rows = "\n".join(f"| {d} | {m['data'][d]['train_tokens']:,} | {m['test_loss'][d]:.3f} | "
                          f"{m['test_loss_at_init'][d]:.3f} |" for d in domains)
    samples = "\n".join(f"- **{d}** `{SAMPLE_PROMPTS[d]!r}` -> `{s!r}`" for d, s in m["samples"].items())
    return spec_rows, cov_rows, loss_rows, samples


def _specialisation_section(m: dict, spec_rows: str, cov_rows: str) -> str:
    tr, ini = m["specialisation"]["trained"], m["specialisation"]["at_init"]
    return f"""## Routing specialisation (held-out text)
JS = Jensen-Shannon divergence (bits, 0..1) between two domains' expert-frequency distributions, averaged over
domain pairs. "Own top half" = share of a domain's activations covered by its own most frequent half of
experts (50% = no concentration); "others' top half" = share of OTHER domains' activations covered by that
same half. References: the same architecture at initialisation, and split-half JS within one domain (noise).

{SPEC_HEADER}
{spec_rows}

Mean over layers: JS {tr['mean']['js_between_domains_bits']:.3f} bits trained vs \
{ini['mean']['js_between_domains_bits']:.3f} at init (noise floor {tr['mean']['js_split_half_bits']:.4f}); \
own top half {tr['mean']['top_half_coverage_own']:.1%} trained vs {ini['mean']['top_half_coverage_own']:.1%} \
at init; others' top half {tr['mean']['top_half_coverage_others']:.1%}.

Own top-half coverage per domain and layer:

| domain | {' | '.join(f"layer {p['layer']}" for p in tr['per_layer'])} |
|---|{'---|' * len(tr['per_layer'])}
{cov_rows}

"""


def render_card(m: dict) -> str:
    """The model card in Markdown, every figure taken from the measurement dict."""
    domains = list(m["test_loss"])
    mod, t = m["model"], m["training"]
    spec_rows, cov_rows, loss_rows, samples = _table_rows(m)
    recipe_path = m.get("recipe_path", "recipes/training/demo-moe.yaml")
    out_dir = m["recipe"]["out"]
    title, intro = _intro(m, recipe_path)
    sim_section = _similarity_section(m)
    return f"""# {title}

{intro}

| | |
|---|---|
| architecture | `{mod['architecture']}` (transformers-native) |
| layers / hidden | {mod['layers']} / {mod['hidden']} |
| experts per layer / top-k / expert width | {mod['experts']} / {mod['top_k']} / {mod['expert_intermediate']} |
| vocabulary | {mod['vocab']} (byte-level BPE, trained with `tokenizers`) |
| weights | {mod['weights_bytes'] / 2**20:.1f} MiB, {mod['dtype']} safetensors (compute in fp32 on CPU) |
| training | {t['steps']:,} steps, {t['tokens']:,} tokens, {t['wall_s'] / 60:.0f} min at \
{t['tokens_per_s']:,.0f} tokens/s |
| measured | {m['date']}, {m['machine']}, torch {m['versions']['torch']}, transformers {m['versions']['transformers']} |

Load it with `AutoModelForCausalLM.from_pretrained("{out_dir}")`.

## Data and held-out loss
Loss in nats per token on {m['held_out_tokens_per_domain']:,} held-out (test split) tokens per domain.

| domain | train tokens | test loss | at init |
|---|---|---|---|
{loss_rows}

Validation loss during training (fixed validation windows):

{_fmt_curve(t['val_loss_curve'], domains)}

{_specialisation_section(m, spec_rows, cov_rows)}{sim_section}
## Samples (greedy, 40 new tokens)
{samples}

## Rebuild
    just setup && just corpus
    lightmoe demo train --fresh --recipe {recipe_path}
    lightmoe demo card --recipe {recipe_path}      # this file and training.json

All figures on this page come from `training.json`, written by `lightmoe demo card`.
"""


def write_card(recipe: TrainRecipe, tokens_per_domain: int = 32_768, console=None,
               recipe_path: str = "recipes/training/demo-moe.yaml") -> str:
    """Measure, then write training.json and README.md atomically into the model folder; returns a summary."""
    m = measure(recipe, tokens_per_domain, recipe_path)
    out = Path(recipe.out)
    for name, text in (("training.json", json.dumps(m, indent=2)), ("README.md", render_card(m))):
        atomic_write(out / name, text)
    tr, ini = m["specialisation"]["trained"]["mean"], m["specialisation"]["at_init"]["mean"]
    return (f"mean test loss {np.mean(list(m['test_loss'].values())):.3f} nats; JS between domains "
            f"{tr['js_between_domains_bits']:.3f} bits (init {ini['js_between_domains_bits']:.3f}, noise "
            f"{tr['js_split_half_bits']:.4f}); own top half {tr['top_half_coverage_own']:.1%} "
            f"(init {ini['top_half_coverage_own']:.1%})")
