"""The evaluation report: per-item scores from lm-eval samples, paired comparisons against prune and full,
held-out-text tasks, task-name resolution with one-line errors, tables readable at 100 columns."""

import json

import numpy as np
import pytest
from rich.console import Console

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.evaluation.comparisons import add_comparisons
from lightmoe_cli.evaluation.render import eval_tables
from lightmoe_cli.evaluation.run import EvalReport, EvalRequest, activation_combos, precision_note, prepare_tasks
from lightmoe_cli.evaluation.tasks import generated_items, render_lm_eval_tasks
from lightmoe_cli.evaluation.worker import task_scores


def _row(policy, budget, acc, nll, tokens=None):
    """A worker result with per-item records: acc[task] 0/1 per item, nll[task] per document."""
    tokens = tokens or {t: [10] * len(v) for t, v in nll.items()}
    items = {f"demo_{t}": {"doc_id": list(range(len(v))), "acc": v} for t, v in acc.items()}
    items |= {f"demo_{t}_ppl": {"doc_id": list(range(len(v))), "nll": v, "tokens": tokens[t]} for t, v in nll.items()}
    scores = {f"demo_{t}": float(np.mean(v)) for t, v in acc.items()}
    per_tok = {f"demo_{t}_ppl": sum(v) / sum(tokens[t]) for t, v in nll.items()}
    return {"policy": policy, "budget_fraction": budget, "items": items, "scores": scores, "nll": per_tok,
            "average": float(np.mean(list(scores.values()))), "nll_per_token": float(np.mean(list(per_tok.values()))),
            "resident_expert_bytes": int(budget * 2**24), "decode_tokens_per_s": 10.0, "swaps": 0,
            "bytes_loaded": 0, "reroute_or_drop_rate": 0.0, "miss_rate": 0.0}


def _rows():
    rng = np.random.default_rng(0)
    base = rng.normal(30, 5, size=40)
    acc_full = (rng.random(60) < 0.6).astype(float).tolist()
    acc_prune = [a if rng.random() < 0.8 else 0.0 for a in acc_full]
    return [_row("full", 1.0, {"x": acc_full}, {"x": base.tolist()}),
            _row("prune", 0.5, {"x": acc_prune}, {"x": (base + 5).tolist()}),
            _row("lightmoe", 0.5, {"x": acc_full}, {"x": (base + 2 + rng.normal(0, 0.1, 40)).tolist()})]


def test_comparisons_pair_items_and_report_the_gap_closed():
    rows = _rows()
    add_comparisons(rows)
    light = rows[2]
    nll = light["vs_prune"]["nll"]
    assert nll["diff"] == pytest.approx(-0.3, abs=0.01) and nll["hi"] < 0  # 3 nats per 10-token document
    assert light["gap_closed"]["nll"] == pytest.approx(0.6, abs=0.02)
    assert light["vs_full"]["acc"]["diff"] == 0 and light["vs_prune"]["acc"]["diff"] > 0
    assert "vs_prune" in rows[1] and "nll" not in rows[1]["vs_prune"]  # prune is not compared with itself
    note = precision_note(rows, 0.5)
    assert "points" in note and ("meets" in note or "does NOT meet" in note)


def test_tables_fit_100_columns_without_truncation():
    rows = _rows()
    rows.append(dict(rows[2], policy="lightmoe+alloc-t@75%", swaps=1234, bytes_loaded=324_581 * 2**20))
    add_comparisons(rows)
    report = EvalReport(None, ["demo_x", "demo_x_ppl"], rows, {})
    console = Console(width=100, record=True)
    for t in eval_tables(report):
        console.print(t)
    text = console.export_text()
    assert "…" not in text and max(map(len, text.splitlines())) <= 100
    assert "-0.300" in text or "-0.30" in text


def test_task_scores_from_lm_eval_samples():
    mc = [{"doc_id": 1, "acc": 0.0}, {"doc_id": 0, "acc": 1.0}]
    kind, score, rec = task_scores("t", {"acc,none": 0.5}, mc, None)
    assert (kind, score, rec) == ("acc", 0.5, {"doc_id": [0, 1], "acc": [1.0, 0.0]})
    ppl = [{"doc_id": 0, "word_perplexity": (-12.0, 3), "target": "abcd"},
           {"doc_id": 1, "word_perplexity": (-6.0, 2), "target": "ab"}]
    kind, score, rec = task_scores("t", {"word_perplexity,none": 9.0}, ppl, lambda s: list(s))
    assert kind == "nll" and score == pytest.approx(18 / 6) and rec["tokens"] == [4, 2]


def test_task_names_resolve_tags_and_refuse_unknown(tmp_path, monkeypatch):
    import lightmoe_cli.evaluation.run as run

    items = tmp_path / "items"
    (items / "ppl").mkdir(parents=True)
    for d in ("arithmetic", "strings"):
        (items / f"{d}.jsonl").write_text("\n".join(json.dumps(i.__dict__) for i in generated_items(d, 3)) + "\n")
        (items / "ppl" / f"{d}.jsonl").write_text(json.dumps({"text": "1 + 1 = 2\n"}) + "\n")
    monkeypatch.setattr(run, "ITEMS_DIR", items)
    names, include = prepare_tasks("demo,demo_ppl", tmp_path / "out")
    assert names == ["demo_arithmetic", "demo_strings", "demo_arithmetic_ppl", "demo_strings_ppl"]
    assert "loglikelihood_rolling" in (include[0] / "demo_strings_ppl.yaml").read_text()
    assert prepare_tasks("demo_strings_ppl", tmp_path / "out")[0] == ["demo_strings_ppl"]
    with pytest.raises(LightMoEError, match="unknown task demo_klingon; available: demo, demo_ppl"):
        prepare_tasks("demo_klingon", tmp_path / "out")


@pytest.mark.parametrize("kw, message", [({"tasks": ""}, "--tasks is empty"), ({"limit": 0}, "--limit must be"),
                                         ({"limit": -3}, "--limit must be"), ({"budgets": [float("nan")]}, "budgets"),
                                         ({"policies": ["magic"]}, "unknown policy"),
                                         ({"include_path": "/nonexistent"}, "--include-path")])
def test_eval_options_are_checked_first(kw, message):
    with pytest.raises(LightMoEError, match=message):
        EvalRequest(**kw).validate()


def test_activation_rules_combine_with_every_resident_set_policy_and_budget():
    req = EvalRequest(budgets=[0.25, 0.5], activations=["topk", "alloc"], active=[0.5],
                      activation_policies=["full", "prune", "lru"])
    combos = activation_combos(req)
    assert ("full", "topk", 1.0, 0.5) in combos and ("lru", "alloc", 0.25, 0.5) in combos
    assert len(combos) == 2 * (1 + 2 + 2)  # full once; prune and lru at both budgets
    with pytest.raises(LightMoEError, match="unknown policy"):
        EvalRequest(activations=["topk"], activation_policies=["magic"]).validate()


def test_rendered_ppl_task_reads_absolute_paths(tmp_path):
    items = tmp_path / "items"
    (items / "ppl").mkdir(parents=True)
    (items / "ppl" / "bible_en.jsonl").write_text(json.dumps({"text": "In the beginning\n"}) + "\n")
    (items / "bible_en.jsonl").write_text("\n".join(json.dumps(i.__dict__) for i in generated_items("strings", 2)))
    names = render_lm_eval_tasks(items, tmp_path / "yaml")
    assert "demo_bible_en_ppl" in names
    yaml_text = (tmp_path / "yaml" / "demo_bible_en_ppl.yaml").read_text()
    assert str((items / "ppl" / "bible_en.jsonl").resolve()) in yaml_text


def test_lm_eval_command_line_runs_a_bundle(tiny_moe, tmp_path):
    from typer.testing import CliRunner

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.cli import app
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root, model, tok = tiny_moe
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), tmp_path / "p",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=32))
    bundle = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "b", BuildOptions(policy="prune"))
    items = tmp_path / "items"
    items.mkdir()
    (items / "arithmetic.jsonl").write_text("\n".join(json.dumps(i.__dict__) for i in generated_items("arithmetic", 3)))
    render_lm_eval_tasks(items, tmp_path / "yaml")
    res = CliRunner().invoke(app, ["lm-eval", "--model", "lightmoe", "--model_args", f"bundle={bundle.path}",
                                   "--tasks", "demo_arithmetic", "--include_path", str(tmp_path / "yaml"),
                                   "--limit", "2", "--output_path", str(tmp_path / "out"), "--log_samples"])
    assert res.exit_code == 0, res.output
    assert list((tmp_path / "out").rglob("results_*.json")), "lm-eval wrote no results"
