"""lm-eval integration: the bundle model class agrees with lm-eval's own HF wrapper; demo tasks are sound."""

import json

import pytest
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.evaluation.lm_eval_model import LightMoELM
from lightmoe_cli.evaluation.tasks import generated_items, render_lm_eval_tasks
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.runtime.loader import build_runtime


@pytest.fixture(scope="module")
def full_runtime(tiny_moe, tmp_path_factory):
    root, model, tok = tiny_moe
    work = tmp_path_factory.mktemp("ev")
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), work / "p",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=64))
    b = build_bundle(prof, model, tok, str(root / "model"), work / "full", BuildOptions(policy="full"))
    return build_runtime(b), model, tok


def _requests(pairs):
    return [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]


def test_loglikelihoods_match_lm_evals_hf_wrapper(full_runtime):
    rt, model, tok = full_runtime
    pairs = [("12 + 7 =", " 19"), ("reverse lamp ->", " pmal"), ("solve 2x + 1 = 9 ;", " x = 4"),
             ("a longer context with several words in it", " and more")]
    ours = LightMoELM(runtime=rt, batch_size=2).loglikelihood(_requests(pairs))
    ref = HFLM(pretrained=model, tokenizer=tok, device="cpu", batch_size=2).loglikelihood(_requests(pairs))
    for (a, ga), (b, gb) in zip(ours, ref, strict=True):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb


def test_generated_items_have_one_correct_choice():
    for domain in ("arithmetic", "algebra", "strings"):
        items = generated_items(domain, 50)
        for it in items:
            assert len(it.choices) == 4 and len(set(it.choices)) == 4
            assert it.context.count("\n") == 3  # three solved examples, then the question
    # the gold answer of arithmetic items is the true value
    it = generated_items("arithmetic", 5)[0]
    expr = it.context.splitlines()[-1].removesuffix(" = ")
    assert it.choices[it.gold] == str(eval(expr.replace("/", "//")))


def test_rendered_tasks_use_absolute_paths(tmp_path):
    items = tmp_path / "items"
    items.mkdir()
    (items / "arithmetic.jsonl").write_text(
        "\n".join(json.dumps(i.__dict__) for i in generated_items("arithmetic", 3)) + "\n")
    names = render_lm_eval_tasks(items, tmp_path / "yaml")
    assert names == ["demo_arithmetic"]
    assert str(items.resolve() / "arithmetic.jsonl") in (tmp_path / "yaml" / "demo_arithmetic.yaml").read_text()


@pytest.mark.slow
def test_eval_on_the_demo_model_writes_tables_results_and_plots(tmp_path):
    from typer.testing import CliRunner

    from lightmoe_cli.cli import app
    from lightmoe_cli.paths import CORPUS_DIR

    if not (CORPUS_DIR / "manifest.json").exists():
        pytest.skip("demo corpus not built (just corpus)")
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--compare", "full,prune,lightmoe,oracle", "--budgets", "0.5",
                                   "--limit", "4", "--tasks", "demo_arithmetic,demo_bible_es,demo_bible_es_ppl",
                                   "--block-requests", "1,3", "--stream-requests", "6", "--out", str(out)])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    rows = {r["policy"]: r for r in results["rows"]}
    assert set(rows) == {"full", "prune", "lightmoe", "oracle"}
    assert all(len(r["manifest_sha256"]) == 64 and 0 <= r["average"] <= 1 for r in rows.values())
    assert rows["lightmoe"]["vs_prune"]["nll"]["lo"] <= rows["lightmoe"]["vs_prune"]["nll"]["diff"]
    assert rows["oracle"]["nll_per_token"] < rows["prune"]["nll_per_token"]  # its own set fits its task better
    assert {r["block"] for r in results["task_shift"]["rows"]} == {1, 3}
    assert (out / "pareto.png").stat().st_size > 5000 and (out / "task_shift.png").stat().st_size > 5000
    assert "differences to prune" in res.output and "task-shift streams" in res.output
    res = CliRunner().invoke(app, ["eval", "--tasks", "demo_klingon", "--out", str(out)])
    assert res.exit_code == 1 and "available: demo, demo_ppl" in res.output
    # the same bundles scored two at a time (local processes): the same numbers, in the same rows
    par = tmp_path / "par"
    res = CliRunner().invoke(app, ["eval", "--compare", "full,prune,lightmoe,oracle", "--budgets", "0.5",
                                   "--limit", "4", "--tasks", "demo_arithmetic,demo_bible_es,demo_bible_es_ppl",
                                   "--no-task-shift", "--workers", "2", "--out", str(par)])
    assert res.exit_code == 0, res.output
    again = {r["policy"]: r for r in json.loads((par / "results.json").read_text())["rows"]}
    assert {p: r["nll_per_token"] for p, r in again.items()} == {p: r["nll_per_token"] for p, r in rows.items()}
