"""Paired comparisons between evaluated bundles: every policy x budget against `prune` at the same budget and
against `full`, on the same items (multiple choice: per item; held-out text: per document), with 95% bootstrap
intervals and the share of the prune -> full gap closed. Pure: rows (worker results) in, numbers out."""

from __future__ import annotations

import numpy as np

from lightmoe_cli.analysis.paired import Interval, gap_closed, paired_bootstrap

METRICS = {"acc": "accuracy (multiple choice, macro over tasks)", "nll": "NLL per token (held-out text, nats)"}


def _per_task(row: dict, metric: str) -> tuple[dict[str, dict], list[str]]:
    items = row.get("items", {})
    tasks = sorted(t for t, rec in items.items() if metric in rec)
    return {t: items[t] for t in tasks}, tasks


def paired(a: dict, b: dict, metric: str, seed: int = 0) -> Interval | None:
    """a - b on the items both were scored on (matched by document id); None when they share none."""
    ia, tasks = _per_task(a, metric)
    ib, _ = _per_task(b, metric)
    xs, ys, ws = {}, {}, {}
    for t in tasks:
        if t not in ib:
            continue
        common = sorted(set(ia[t]["doc_id"]) & set(ib[t]["doc_id"]))
        if not common:
            continue
        pa = dict(zip(ia[t]["doc_id"], ia[t][metric], strict=True))
        pb = dict(zip(ib[t]["doc_id"], ib[t][metric], strict=True))
        xs[t] = np.array([pa[d] for d in common])
        ys[t] = np.array([pb[d] for d in common])
        if metric == "nll":
            tok = dict(zip(ia[t]["doc_id"], ia[t]["tokens"], strict=True))
            ws[t] = np.array([tok[d] for d in common], dtype=np.float64)
    if not xs:
        return None
    return paired_bootstrap(xs, ys, ws if metric == "nll" else None, seed=seed)


def summary_value(row: dict, metric: str) -> float | None:
    return row.get("average") if metric == "acc" else row.get("nll_per_token")


def add_comparisons(rows: list[dict], seed: int = 0) -> None:
    """Adds to every row: vs_prune / vs_full ({metric: interval}) and gap_closed ({metric: share})."""
    full = next((r for r in rows if r["policy"] == "full"), None)
    prune = {r["budget_fraction"]: r for r in rows if r["policy"] == "prune"}
    for r in rows:
        r["vs_prune"], r["vs_full"], r["gap_closed"] = {}, {}, {}
        p = prune.get(r["budget_fraction"])
        for metric in METRICS:
            if summary_value(r, metric) is None:
                continue
            if p is not None and p is not r:
                iv = paired(r, p, metric, seed)
                r["vs_prune"][metric] = iv.to_json() if iv else None
            if full is not None and full is not r:
                iv = paired(r, full, metric, seed)
                r["vs_full"][metric] = iv.to_json() if iv else None
            if p is not None and full is not None and summary_value(p, metric) is not None \
                    and summary_value(full, metric) is not None:
                r["gap_closed"][metric] = gap_closed(summary_value(r, metric), summary_value(p, metric),
                                                     summary_value(full, metric))


def merge_replicates(rows: list[dict]) -> list[dict]:
    """One row per policy x budget: replicated bundles (random's seeds) become their mean, per item too, so
    the paired comparisons see the floor's expected score; the replicate rows are kept under `replicates`."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["policy"], r["budget_fraction"]), []).append(r)
    out = []
    for group in groups.values():
        if len(group) == 1:
            out.append(group[0])
            continue
        merged = dict(group[0])
        for key in ("average", "nll_per_token", "decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_mib",
                    "redirect_rate", "reroute_or_drop_rate", "miss_rate"):
            vals = [r[key] for r in group if r.get(key) is not None]
            merged[key] = float(np.mean(vals)) if vals else None
        for key in ("scores", "nll"):
            merged[key] = {t: float(np.mean([r[key][t] for r in group])) for t in group[0].get(key, {})}
        merged["swaps"] = int(round(np.mean([r["swaps"] for r in group])))
        merged["bytes_loaded"] = int(np.mean([r["bytes_loaded"] for r in group]))
        items = {}
        for t, rec in group[0].get("items", {}).items():
            rec = dict(rec)
            for metric in ("acc", "nll"):
                if metric in rec:
                    rec[metric] = np.mean([r["items"][t][metric] for r in group], axis=0).tolist()
            items[t] = rec
        merged["items"] = items
        merged["replicates"] = [{k: r[k] for k in ("bundle", "average", "nll_per_token")} for r in group]
        out.append(merged)
    return out
