"""`lightmoe tune`: the pure search (halving schedule, Pareto frontier, choice) on small arrays, a tiny end-to-end
tune that writes a bundle and tune.json, and the bad inputs (one line each, nothing written)."""

import json

import pytest
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.tune.search import (
    Candidate,
    Figures,
    advice,
    choose,
    grid,
    interleave,
    keep_best,
    pareto_front,
    payoff_block,
    rungs,
    sweep_advice,
)

# ---- the pure search ----


def test_rungs_keep_fewer_candidates_on_more_documents():
    sched = rungs(24, 25, eta=5, finalists=2)
    assert sched == [(24, 1), (5, 5), (2, 25)]
    kept = [k for k, _ in sched]
    docs = [d for _, d in sched]
    assert kept == sorted(kept, reverse=True) and docs == sorted(docs)
    work = sum(k * d for k, d in sched)
    assert work <= 0.2 * 24 * 25  # the point of halving: a fifth of the exhaustive grid's documents
    assert rungs(2, 10, finalists=2) == [(2, 10)]  # already small: one rung
    assert rungs(9, 3, eta=3, finalists=1)[0][1] >= 1  # never zero documents


def test_keep_best_breaks_ties_by_the_cheaper_candidate():
    a, b, c = Candidate("prune", 0.5), Candidate("prune", 0.375), Candidate("prune", 0.5, "topk", 0.75)
    assert keep_best({a: 0.3, b: 0.3, c: 0.1}, 2) == [c, b]


def test_pareto_front_on_small_points():
    # (memory, nll increase, decode tok/s)
    pts = [(10, 0.5, 100), (10, 0.3, 100), (8, 0.6, 100), (10, 0.3, 90), (12, 0.3, 120), (10, 0.3, 100)]
    front = pareto_front(pts)
    assert 0 not in front  # point 1 is as good everywhere and better on NLL
    assert 3 not in front  # point 1 is faster at the same memory and NLL
    assert {1, 2, 4} <= set(front)
    assert 5 in front and 1 in front  # equal points do not dominate each other


def _fig(name, nll, tps, mem=1.0):
    f = Figures(Candidate(name, 0.5), {10: nll}, tps, mem)
    return f


def test_choose_follows_the_target():
    fs = [_fig("a", 0.30, 50), _fig("b", 0.10, 20), _fig("c", 0.20, 40)]
    assert choose(fs)[0].candidate.policy == "b"
    assert choose(fs, min_decode_tps=35)[0].candidate.policy == "c"
    assert choose(fs, max_nll_increase=0.35)[0].candidate.policy == "a"
    tie = [_fig("managed", 0.5, 300), _fig("static", 0.5, 290)]
    tie[0].moving_parts = 1
    pick, why = choose(tie)
    assert pick.candidate.policy == "static" and "tied with managed" in why  # 3% faster is noise
    tie[0].decode_tps = 400
    assert choose(tie)[0].candidate.policy == "managed"  # clearly faster wins the tie
    pick, why = choose(fs, min_decode_tps=80)
    assert pick is None and "fastest measured: 50.0" in why
    pick, why = choose(fs, max_nll_increase=0.05)
    assert pick is None and "+0.100" in why


def test_grid_leaves_out_per_token_rules_a_policy_refuses():
    cands = grid({"prune": [{}], "lru": [{}]}, [0.5], [(None, 1.0), ("naee", 0.5)], {"lru"}, {"naee"})
    assert [c.name for c in cands] == ["prune 50%", "prune 50% naee@0.5", "lru 50%"]
    ta = grid({"task-aware": [{"swap_rule": "jump"}, {"swap_rule": "incremental"}]}, [0.5, 0.25], [(None, 1.0)])
    assert len(ta) == 4 and len({c.build_key for c in ta}) == 4
    assert ta[0].name == "task-aware(jump) 50%"


def test_interleave_uses_every_document_once_in_runs():
    order = interleave({"a": 3, "b": 2}, 2)
    assert [(t, i) for _, _, t, i in order] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("a", 2)]
    assert [pos for _, pos, _, _ in order] == [0, 1, 0, 1, 0]
    assert sorted((t, i) for _, _, t, i in interleave({"a": 3, "b": 2}, None)) == \
        [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]


def test_advice_says_whether_task_awareness_paid_off():
    assert "pays off" in advice({"prune": 0.7, "task-aware": 0.3}, 30)
    assert "does not pay off" in advice({"prune": 0.7, "task-aware": 0.7}, 1)
    assert "only one kind" in advice({"prune": 0.7}, 1)


def test_payoff_block_is_the_shortest_run_from_which_task_aware_keeps_winning():
    assert payoff_block({1: 0.70, 2: 0.695, 4: 0.40, 8: 0.20}, static=0.70) == 4
    assert payoff_block({1: 0.70, 2: 0.50, 4: 0.72, 8: 0.20}, static=0.70) == 8  # must hold at every longer run
    assert payoff_block({1: 0.70, 8: 0.70}, static=0.70) is None
    assert "8+ requests" in sweep_advice({1: 0.70, 8: 0.20}, 0.70)
    assert "does not pay off" in sweep_advice({1: 0.70, 8: 0.71}, 0.70)
    assert "even when the task changes every 1" in sweep_advice({1: 0.5, 8: 0.2}, 0.70)


# ---- end to end on the tiny model ----


@pytest.fixture(scope="module")
def prof(tiny_profile):
    return tiny_profile


def _request(tiny_moe, prof, out, **kw):
    from lightmoe_cli.tune.request import TuneRequest

    root, _, _ = tiny_moe
    base = dict(model=str(root / "model"), profile=prof.path, memory="50%", docs_per_task=4, doc_tokens=32,
                policies=["prune", "task-aware"], activations=["none", "topk:0.5"], decode_tokens=4, out=out,
                eta=2, finalists=2)
    return TuneRequest(**(base | kw))


def test_tiny_tune_writes_the_pick_and_tune_json(tiny_moe, prof, tmp_path):
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.tune.render import write_sidecars
    from lightmoe_cli.tune.request import run_tune

    out = tmp_path / "pick"
    report = run_tune(_request(tiny_moe, prof, out, traffic="blocks:2"))
    js, png = write_sidecars(report)
    bundle = load_bundle(out)  # verified: a whole bundle, hashes and all
    from lightmoe_cli.bundle.task_classifier import load_text_classifier

    # the serving detector is stored with a task-set pick
    assert (load_text_classifier(out) is not None) == bool(bundle.manifest.task_resident)
    data = json.loads(js.read_text())
    assert data["kind"] == "lightmoe-tune" and data["pick"] == report.pick.candidate.name
    assert bundle.policy == report.pick.candidate.policy
    assert data["traffic_block"] == 2 and data["why"] and data["advice"]
    if data["advice_sweep"]:  # task-aware was measured: the advice comes from run lengths 1, 2, 4
        assert set(data["advice_sweep"]["task_aware_by_block"]) == {"1", "2", "4"}
    # prune + task-aware x 2 swap rules, x 2 budgets x 2 activation rules: measured or pruned by the outlook
    assert len(data["candidates"]) + len(data["pruned_before_measuring"]) == 3 * 2 * 2
    scored = [c for c in data["candidates"] if c["nll_increase"]]
    assert scored and all(c["dropped"] or c["decode_tps"] for c in scored)
    assert {c["name"] for c in data["candidates"] if c["decode_tps"]} >= set(data["frontier"])
    assert [r["candidates"] for r in data["rungs"]] == sorted((r["candidates"] for r in data["rungs"]), reverse=True)
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_tiny_tune_exhaustive_scores_everything_on_every_document(tiny_moe, prof, tmp_path):
    from lightmoe_cli.tune.request import run_tune

    report = run_tune(_request(tiny_moe, prof, tmp_path / "grid", exhaustive=True, policies=["prune"]))
    assert len(report.rungs) == 1 and all(f.evidence == report.documents for f in report.figures)
    assert report.pick.nll == min(f.nll for f in report.figures)
    assert all(f.decode_tps for f in report.figures)  # the grid's frontier is the whole grid's: every one timed


def test_tiny_tune_scores_a_stateless_candidates_documents_once(tiny_moe, prof, tmp_path, monkeypatch):
    """prune has no state, so a later rung (and the advice's sweep) reads only the documents it adds; a managed
    policy's score depends on the stream before it, so it is scored afresh."""
    import lightmoe_cli.tune.request as tr

    seen: dict[int, list[tuple[str, str]]] = {}
    real = tr._score

    def counting(rt, stream):
        seen.setdefault(id(rt), []).extend((r.domain, r.text) for r in stream)
        return real(rt, stream)

    monkeypatch.setattr(tr, "_score", counting)
    report = tr.run_tune(_request(tiny_moe, prof, tmp_path / "p", policies=["prune"],
                                  activations=["none", "topk:0.5"], budget_steps=[1.0], eta=2, finalists=1))
    assert [k for k, _ in report.rungs] == [2, 1] and report.rungs[-1][1] > report.rungs[0][1]
    # the full reference reads every document once, and so does each prune candidate over all its rungs: a
    # first-rung document is read 3 times (full, both candidates), not 4 (the survivor again in the second rung)
    reads: dict[tuple[str, str], int] = {}
    for docs in seen.values():
        for d in docs:
            reads[d] = reads.get(d, 0) + 1
    assert max(reads.values()) == 3 and min(reads.values()) == 2


def test_nested_budgets_leave_the_search_without_a_target():
    from lightmoe_cli.tune.request import _nested_pruned

    cands = [Candidate("prune", 0.5), Candidate("prune", 0.375), Candidate("prune", 0.375, "topk", 0.75),
             Candidate("task-aware", 0.375, params=(("mode", "jump"),)),
             Candidate("task-aware", 0.5, params=(("mode", "jump"),))]
    kept, pruned = _nested_pruned(cands)
    # the smaller budget goes only where the same serving (policy, its parameters, activation rule) runs larger
    assert kept == [cands[0], cands[2], cands[4]]
    assert [n for n, _ in pruned] == [cands[1].name, cands[3].name] and all("superset" in w for _, w in pruned)


def test_tiny_tune_keeps_smaller_budgets_only_under_a_target(tiny_moe, prof, tmp_path):
    from lightmoe_cli.tune.request import run_tune

    kw = dict(policies=["prune"], activations=["none"], budget_steps=[1.0, 0.75])
    plain = run_tune(_request(tiny_moe, prof, tmp_path / "a", **kw))
    assert {f.candidate.budget for f in plain.figures} == {0.5}
    assert any("nested" in why for _, why in plain.pruned)
    targeted = run_tune(_request(tiny_moe, prof, tmp_path / "b", max_nll_increase=100.0, **kw))
    assert {f.candidate.budget for f in targeted.figures} == {0.5, 0.375}


def test_tiny_tune_targets_pick_among_the_timed(tiny_moe, prof, tmp_path):
    from lightmoe_cli.tune.request import run_tune

    fast = run_tune(_request(tiny_moe, prof, tmp_path / "fast", max_nll_increase=100.0, policies=["prune"]))
    timed = [f for f in fast.figures if f.decode_tps]
    assert fast.pick.decode_tps == max(f.decode_tps for f in timed) and "fastest" in fast.why
    slow = run_tune(_request(tiny_moe, prof, tmp_path / "slow", min_decode_tps=1.0, policies=["prune"]))
    assert slow.pick.decode_tps >= 1.0 and "tokens/s" in slow.why


# ---- bad inputs: one line, nothing written ----


def _one_error_line(r, expected: str) -> None:
    assert r.exit_code == 1
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], r.output
    assert "Traceback" not in r.output


def _tune(tiny_moe, prof, out, *args):
    root, _, _ = tiny_moe
    return CliRunner().invoke(app, ["tune", "--model", str(root / "model"), "--profile", str(prof.path),
                                    "--out", str(out), *args])


def test_bad_input_folder_without_config(tiny_moe, prof, tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["tune", "--model", str(tmp_path / "empty"), "--profile", str(prof.path),
                                 "--memory", "50%", "--out", str(out)])
    _one_error_line(r, "config.json")
    assert not out.exists()


def test_bad_input_not_a_profile(tiny_moe, tmp_path):
    (tmp_path / "notaprofile").mkdir()
    root, _, _ = tiny_moe
    out = tmp_path / "b"
    r = CliRunner().invoke(app, ["tune", "--model", str(root / "model"), "--profile", str(tmp_path / "notaprofile"),
                                 "--memory", "50%", "--out", str(out)])
    assert r.exit_code == 1 and len([x for x in r.output.splitlines() if x.strip()]) == 1, r.output
    assert not out.exists()


def test_bad_input_memory_below_the_non_expert_weights(tiny_moe, prof, tmp_path):
    out = tmp_path / "b"
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "1KiB"), "for the non-expert weights alone")
    assert not out.exists()


def test_bad_input_memory_below_top_k_experts_per_layer(tiny_moe, prof, tmp_path):
    out = tmp_path / "b"  # top-2 of 8 experts: a layer needs 25% of its experts at least
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "20%"), "use at least 25.0% of the expert weights")
    assert not out.exists() and not out.with_name("b.tune.json").exists()


def test_tiny_tune_leaves_out_budget_steps_below_top_k(tiny_moe, prof, tmp_path):
    """At 25% (top-2 of 8) the 3/4 step would hold fewer than top-k experts per layer: it is not searched, where
    every candidate would only fail to build."""
    from lightmoe_cli.tune.request import run_tune

    report = run_tune(_request(tiny_moe, prof, tmp_path / "p", memory="25%", policies=["prune"],
                               activations=["none"], budget_steps=[1.0, 0.75]))
    assert {f.candidate.budget for f in report.figures} == {0.25}
    assert all(f.dropped is None or "cannot be built" not in f.dropped for f in report.figures)


def test_bad_input_impossible_speed_target(tiny_moe, prof, tmp_path):
    out = tmp_path / "b"
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "50%", "--min-decode-tps", "1e15"),
                    "--min-decode-tps 1e+15 is impossible here")
    assert not out.exists() and not out.with_name("b.tune.json").exists()


def test_bad_input_options(tiny_moe, prof, tmp_path):
    out = tmp_path / "b"
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "50%", "--traffic", "random"), "use blocks:N")
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "50%", "--activations", "magic:0.5"), "unknown rule")
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "150%"), "must be in (0%, 100%]")
    _one_error_line(_tune(tiny_moe, prof, out), "--memory is required")
    _one_error_line(_tune(tiny_moe, prof, out, "--memory", "50%", "--min-decode-tps", "5", "--max-nll-increase",
                          "0.1"), "not both")
    assert not out.exists()


def test_request_refuses_both_targets_without_the_cli():
    from lightmoe_cli.tune.request import TuneRequest

    with pytest.raises(LightMoEError, match="not both"):
        TuneRequest(memory="50%", min_decode_tps=5, max_nll_increase=0.1).validate()
