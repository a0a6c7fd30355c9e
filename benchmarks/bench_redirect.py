"""Is redirecting a missing expert to the most similar resident worth it? A sweep on the demo models.

For each model and memory budget, with the resident set fixed (the lightmoe frequency-aware set, manager off,
so only the handling of missing experts differs), scores on held-out text (corpus test split, NLL per token) and
on the demo multiple-choice items:
  prune (re-route among residents: the baseline), drop (missing picks weighted 0, renormalised), and redirect
  by each similarity kind (output, weight, coactivation) at thresholds 0.3..0.9 (below it: re-route, as prune).
Each row: NLL per token, its paired difference to prune with a 95% bootstrap interval over documents, MC accuracy,
and the redirect rate (share of router picks sent to another expert). Prints a table and writes
benchmarks/results/redirect-<model>.json.

    python benchmarks/bench_redirect.py --model demo --budgets 0.25,0.5
    python benchmarks/bench_redirect.py --model demo-upcycled --budgets 0.25,0.5

No timing is claimed here: every score is a deterministic forward pass, the same on a busy machine as on a quiet
one, so the configurations are not repeated or interleaved and no run is refused; the machine's load before and
after is recorded in the JSON (benchmarks/harness.py) only to say where the `seconds` came from. No speed ratio,
so no bound.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.harness import RESULTS, demo_model_and_profile, sample_load  # noqa: E402

KINDS = ("output", "weight", "coactivation")


def sequence_logprobs(rt, sequences: list[list[int]], starts: list[int], batch: int = 16) -> list[float]:
    """Summed log-probability of tokens[start:] of each token sequence, right-padded batches (causal attention:
    padding after a sequence cannot change its scores)."""
    import torch

    out = []
    for b in range(0, len(sequences), batch):
        seqs, st = sequences[b:b + batch], starts[b:b + batch]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs], device=rt.device)
        with torch.no_grad():
            logp = rt.model(input_ids=ids).logits[:, :-1].float().log_softmax(-1)
        tok_logp = logp.gather(-1, ids[:, 1:, None])[..., 0]  # (B, width - 1): log p(token t+1)
        for row, (s, start) in enumerate(zip(seqs, st, strict=True)):
            out.append(float(tok_logp[row, max(start, 1) - 1:len(s) - 1].sum()))
    return out


def score_documents(rt, docs: dict[str, list[str]]) -> tuple[dict, dict]:
    """Per-domain arrays of summed NLL and token counts (every token after the first)."""
    import numpy as np

    nll, tokens = {}, {}
    for domain, texts in docs.items():
        seqs = [rt.tokenizer(t).input_ids for t in texts]
        nll[domain] = -np.array(sequence_logprobs(rt, seqs, [1] * len(seqs)))
        tokens[domain] = np.array([len(s) - 1 for s in seqs], dtype=np.float64)
    return nll, tokens


def split_encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces of the context move to the continuation, the whole string is encoded
    once and the continuation is what follows the context's own encoding (so BPE merges match lm-eval's)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    return ctx, whole[len(ctx):]


def mc_correct(rt, items: dict[str, list]) -> dict:
    """Per-domain 0/1 arrays: the choice with the highest summed log-probability is the gold one (lm-eval's `acc`
    with an empty target delimiter, tokenised as lm-eval does)."""
    import numpy as np

    out = {}
    for domain, its in items.items():
        seqs, starts, owners = [], [], []
        for n, it in enumerate(its):
            for choice in it.choices:
                ctx, cont = split_encode(rt.tokenizer, it.context, choice)
                seqs.append(ctx + cont)
                starts.append(len(ctx))
                owners.append(n)
        scores = sequence_logprobs(rt, seqs, starts)
        right = []
        for n, it in enumerate(its):
            mine = [s for s, o in zip(scores, owners, strict=True) if o == n]
            right.append(float(int(np.argmax(mine)) == it.gold))
        out[domain] = np.array(right)
    return out


def markdown(payload: dict) -> str:
    """The README table of one results file: per budget, prune, drop, and each kind's thresholds, with the
    redirect rate (rows whose redirect table equals prune's are folded into one line per kind)."""
    lines = ["| budget | missing expert -> | redirect rate | NLL/token | ΔNLL vs prune [95%] | MC acc | "
             "Δacc vs prune (pts) |", "|---|---|---|---|---|---|---|"]
    groups: list[list[dict]] = []  # consecutive thresholds of one kind that served identically
    for r in payload["rows"]:
        last = groups[-1][-1] if groups else None
        if last and r["similarity"] and last["similarity"] == r["similarity"] and last["budget"] == r["budget"] \
                and last["nll"] == r["nll"] and last["redirect_rate"] == r["redirect_rate"]:
            groups[-1].append(r)
        else:
            groups.append([r])
    for g in groups:
        r = g[0]
        label = r["config"] if len(g) == 1 else \
            f"redirect {r['similarity']} >= {g[0]['threshold']:.1f} .. {g[-1]['threshold']:.1f}"
        d, a = r["d_nll_vs_prune"], r["d_acc_vs_prune"]
        lines.append(f"| {r['budget']:.0%} | {label} | {r['redirect_rate']:.1%} | {r['nll']:.3f} | "
                     f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] | {r['acc']:.1%} | "
                     f"{100 * a['diff']:+.1f} [{100 * a['lo']:+.1f}, {100 * a['hi']:+.1f}] |")
    full = payload["full"]
    lines.append(f"\nFull model: NLL {full['nll']:.3f}, MC {full['acc']:.1%}.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="demo")
    ap.add_argument("--budgets", default="0.25,0.5")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--docs", type=int, default=24, help="held-out documents per domain")
    ap.add_argument("--items", type=int, default=24, help="multiple-choice items per domain")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--markdown", action="store_true", help="print the README table of the existing results")
    args = ap.parse_args()
    if args.markdown:
        import json

        from lightmoe_cli.loading import resolve_model
        from lightmoe_cli.paths import model_slug

        print(markdown(json.loads((RESULTS / f"redirect-{model_slug(resolve_model(args.model))}.json").read_text())))
        return

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    from lightmoe_cli.analysis.paired import paired_bootstrap
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.evaluation.tasks import read_items
    from lightmoe_cli.files import atomic_write_json
    from lightmoe_cli.paths import ITEMS_DIR, model_slug
    from lightmoe_cli.runtime.loader import build_runtime

    load_before = sample_load()
    name, model, tok, prof = demo_model_and_profile(args.threads, args.model)
    docs = {p.stem: [r["text"] for r in map(__import__("json").loads, p.read_text().splitlines()[:args.docs])]
            for p in sorted((ITEMS_DIR / "ppl").glob("*.jsonl"))}
    items = {p.stem: read_items(p)[:args.items] for p in sorted(ITEMS_DIR.glob("*.jsonl"))}

    slug = model_slug(name)
    work = ROOT / "runs" / "bench-redirect" / slug
    configs: list[tuple[float, str, str, float | None, dict]] = []  # budget, label, kind, threshold, params
    for budget in [float(b) for b in args.budgets.split(",")]:
        configs.append((budget, "prune (re-route)", "", None, {"policy": "prune"}))
        configs.append((budget, "drop", "", None, {"missing": "drop", "min_similarity": 1.0}))
        for kind in args.kinds.split(","):
            for t in [float(x) for x in args.thresholds.split(",")]:
                configs.append((budget, f"redirect {kind} >= {t:.1f}", kind, t,
                                {"similarity": kind, "min_similarity": t, "missing": "reroute"}))
    console = Console(width=110)
    rows, full_nll = [], None
    full_dir = build_bundle(prof, model, tok, name, work / "full", BuildOptions(policy="full", fraction=1.0))
    rt = build_runtime(full_dir, manager=False)
    full_nll, tokens = score_documents(rt, docs)
    full_acc = mc_correct(rt, items)
    del rt
    t0 = time.perf_counter()
    prune_scores: dict[float, tuple[dict, dict]] = {}
    scored: dict[tuple, tuple] = {}
    for budget, label, kind, threshold, params in configs:
        params = dict(params)
        policy = params.pop("policy", "lightmoe")
        out = work / f"tmp-{policy}"
        shutil.rmtree(out, ignore_errors=True)
        bundle = build_bundle(prof, model, tok, name, out, BuildOptions(policy=policy, fraction=budget,
                                                                          params=params))
        # configs whose redirect tables coincide serve identically: score once (thresholds above every
        # similarity of a model all give the same table)
        key = (budget, policy, params.get("missing"), str([lp.redirect for lp in bundle.manifest.layers]))
        if key not in scored:
            rt = build_runtime(bundle, manager=False)
            nll, _ = score_documents(rt, docs)
            acc = mc_correct(rt, items)
            rt.finish()  # fold the per-forward counts into the statistics
            scored[key] = (nll, acc, sum(m.stats.picks for m in rt.layers),
                           sum(m.stats.redirects for m in rt.layers))
            del rt
        nll, acc, picks, redirects = scored[key]
        shutil.rmtree(out, ignore_errors=True)
        if policy == "prune":
            prune_scores[budget] = (nll, acc)
        p_nll, p_acc = prune_scores[budget]
        d_nll = paired_bootstrap(nll, p_nll, weights=tokens)
        d_full = paired_bootstrap(nll, full_nll, weights=tokens)
        d_acc = paired_bootstrap(acc, p_acc)
        rows.append({"budget": budget, "config": label, "similarity": kind or None, "threshold": threshold,
                     "nll": float(sum(v.sum() for v in nll.values()) / sum(v.sum() for v in tokens.values())),
                     "d_nll_vs_prune": d_nll.to_json(), "d_nll_vs_full": d_full.to_json(),
                     "acc": float(np.mean([v.mean() for v in acc.values()])), "d_acc_vs_prune": d_acc.to_json(),
                     "redirect_rate": redirects / max(1, picks)})
        console.print(f"[{time.perf_counter() - t0:6.0f} s] {budget:.2f} {label}: ΔNLL vs prune "
                      f"{d_nll.diff:+.3f} [{d_nll.lo:+.3f}, {d_nll.hi:+.3f}], redirect {redirects / max(1, picks):.1%}")

    table = Table(title=f"Redirect sweep on {slug} (resident set fixed, manager off; {args.docs} held-out docs "
                        f"and {args.items} MC items per domain)")
    for col in ("budget", "missing expert ->", "redirect rate", "NLL/token", "ΔNLL vs prune [95%]",
                "ΔNLL vs full", "MC acc", "Δacc vs prune (pts)"):
        table.add_column(col, justify="left" if col == "missing expert ->" else "right")
    for r in rows:
        d, f, a = r["d_nll_vs_prune"], r["d_nll_vs_full"], r["d_acc_vs_prune"]
        table.add_row(f"{r['budget']:.0%}", r["config"], f"{r['redirect_rate']:.1%}", f"{r['nll']:.3f}",
                      f"{d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]", f"{f['diff']:+.3f}",
                      f"{r['acc']:.1%}", f"{100 * a['diff']:+.1f} [{100 * a['lo']:+.1f}, {100 * a['hi']:+.1f}]")
    console.print(table)
    full_row = {"nll": float(sum(v.sum() for v in full_nll.values()) / sum(v.sum() for v in tokens.values())),
                "acc": float(np.mean([v.mean() for v in full_acc.values()]))}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"redirect-{slug}.json"
    atomic_write_json(path, {"model": name, "docs_per_domain": args.docs, "items_per_domain": args.items,
                             "full": full_row, "rows": rows, "threads": args.threads,
                             "seconds": round(time.perf_counter() - t0, 1),
                             "machine": {"cpu_count": os.cpu_count(), "load_before": load_before.to_json(),
                                         "load_after": sample_load().to_json()}})
    console.print(f"written {path}")


if __name__ == "__main__":
    main()
