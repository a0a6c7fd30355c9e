"""`lightmoe profile` on a tiny model: exact counts, padding excluded, twin experts, artifact round trip."""


import pytest
import torch
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.models import get_adapter
from lightmoe_cli.profile.artifact import ProfileError, load_profile
from lightmoe_cli.profile.batches import TokenBatch
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.profile.tracer import trace_task
from lightmoe_cli.recipes import load_recipe

E, K = 8, 2


@pytest.fixture(scope="module")
def tiny(tiny_moe):
    return tiny_moe


def _router_truth(model, layers, batch: TokenBatch) -> dict[int, torch.Tensor]:
    """Counts from the router modules' own outputs (forward hooks), padding removed."""
    truth, handles = {}, []
    mask = batch.attention_mask.reshape(-1).bool()
    for m in layers:
        def hook(mod, args, out, li=m.layer_index, n=m.num_experts):
            idx = out[2][mask]
            truth[li] = torch.bincount(idx.reshape(-1), minlength=n)
        handles.append(m.router.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for h in handles:
        h.remove()
    return truth


def test_counts_match_router_and_exclude_padding(tiny):
    _, model, tok = tiny
    layers = get_adapter(model).moe_layers(model)
    assert [m.layer_index for m in layers] == [0, 2]  # layer 1 is dense (mlp_only_layers)
    ids = torch.randint(0, len(tok) - 2, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    ids[mask == 0] = tok.pad_token_id
    batch = TokenBatch(ids, mask)
    stats = trace_task(model, layers, "t", [batch])
    truth = _router_truth(model, layers, batch)
    real = int(mask.sum())
    for m in layers:
        s = stats.layers[m.layer_index]
        assert s.tokens == real
        assert torch.equal(s.counts, truth[m.layer_index])
        assert int(s.counts.sum()) == real * K
        assert torch.equal(s.coactivation, s.coactivation.T)
        assert torch.equal(s.coactivation.diagonal(), s.counts)
        assert int(s.coactivation.sum() - s.coactivation.trace()) == real * K * (K - 1)
    # padding excluded: the same real tokens run one sequence at a time, unpadded, give the same counts
    # (the model has causal attention, so right padding does not change the real tokens' routing)
    alone = [trace_task(model, layers, "t", [TokenBatch(ids[i:i + 1, : int(mask[i].sum())],
                                                        mask[i:i + 1, : int(mask[i].sum())])]) for i in range(3)]
    for m in layers:
        assert torch.equal(sum(a.layers[m.layer_index].counts for a in alone), stats.layers[m.layer_index].counts)


def test_twin_expert_is_most_similar_in_all_three_kinds(tiny, tmp_path):
    root, model, tok = tiny
    import copy

    twin = copy.deepcopy(model)
    adapter = get_adapter(twin)
    layers = adapter.moe_layers(twin)
    for m in layers:  # expert 5 becomes a copy of expert 2, router row included
        adapter.write_expert(m, 5, adapter.read_expert(m, 2))
        m.router.weight.data[5] = m.router.weight.data[2]
    recipe = load_recipe(root / "calib.yaml")
    prof = run_profile(twin, tok, "twin", recipe, tmp_path / "p", ProfileSettings(batch_size=4, seq_len=64))
    for li in prof.layer_indices:
        for kind in ("weight", "output", "coactivation"):
            sim = prof.similarity(li, kind)
            assert sim.shape == (E, E) and torch.allclose(sim, sim.T, atol=1e-5)
            if kind == "coactivation":
                # twins tie in the router: they are picked together unless the tie falls on the top-k boundary
                assert sim[2, 5] >= 0.5
                assert int(torch.argsort(sim[2], descending=True)[1]) == 5
            else:
                assert sim[2, 5] > 0.999, (li, kind)
                assert sim[2, [e for e in range(E) if e not in (2, 5)]].max() < 0.9


def test_profile_cli_writes_artifact_and_resume(tiny, tmp_path):
    root, _, _ = tiny
    out = tmp_path / "prof"
    args = ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"), "--out", str(out),
            "--batch-size", "4", "--seq-len", "64", "--save-traces", "--threads", "1"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "routing profile" in res.output and "Jensen-Shannon" in res.output
    prof = load_profile(out)
    m = prof.manifest
    assert m.model.moe_layers == [0, 2] and m.model.num_experts == [E, E]
    assert set(m.tasks) == {"arithmetic", "strings"} and all(0 < v <= 600 for v in m.tasks.values())
    assert m.similarity_kinds == ["coactivation", "output", "weight"]
    assert [r["budget"] for r in m.outlook["rows"]] == [0.25, 0.5, 0.75] and m.outlook["advice"]
    assert all(r["task_coverage"] >= r["global_coverage"] - 1e-9 for r in m.outlook["rows"])
    assert "residency outlook" in res.output
    for png in ("plots/expert_frequency.png", "plots/similarity_layer2.png"):
        assert (out / png).stat().st_size > 5000
    chunk = sorted((out / "traces" / "arithmetic").glob("chunk_*.safetensors"))
    from safetensors.torch import load_file

    ids = torch.cat([load_file(str(c))["layer.0.ids"] for c in chunk])  # one chunk per shard at least
    assert ids.dtype == torch.int16 and ids.shape == (m.tasks["arithmetic"], K)
    assert torch.equal(torch.bincount(ids.long().reshape(-1), minlength=E),
                       prof.task_stats("arithmetic").layers[0].counts)
    assert not out.with_name("prof.partial").exists()

    # replay the traces through expert caches (in-sample here: the tiny model has one profile)
    sim = tmp_path / "sim"
    res = CliRunner().invoke(app, ["simulate", "--heldout", str(out), "--profile", str(out), "--cache", "0.25,0.5",
                                   "--out", str(sim)])
    assert res.exit_code == 0, res.output
    import json

    rows = {(r["policy"], r["fraction"]): r for r in json.loads((sim / "simulation.json").read_text())["rows"]}
    assert (sim / "hit_rate.png").stat().st_size > 5000 and "belady" in res.output
    for f in (0.25, 0.5):
        # belady bounds every policy that loads each miss (static serves misses elsewhere, so it is not bounded)
        assert all(rows[("belady", f)]["hit_rate"] >= rows[(p, f)]["hit_rate"] for p in ("lru", "lfu"))
        assert rows[("static", f)]["loads_per_token"] == 0
    static = rows[("static", 0.5)]  # the top-4 experts by gate mass serve exactly the picks they got
    total = {li: sum(prof.task_stats(t).layers[li].gate_mass for t in prof.task_names) for li in (0, 2)}
    counts = {li: sum(prof.task_stats(t).layers[li].counts for t in prof.task_names) for li in (0, 2)}
    served = sum(int(counts[li][total[li].topk(4).indices].sum()) for li in (0, 2))
    assert static["hit_rate"] == pytest.approx(served / sum(int(c.sum()) for c in counts.values()))
    res = CliRunner().invoke(app, ["simulate", "--heldout", str(out), "--cache", "0"])
    assert res.exit_code == 1 and "--cache values are fractions" in res.output

    # corrupt a file: reported by name
    data = bytearray((out / "similarity.safetensors").read_bytes())
    data[-3] ^= 0xFF
    (out / "similarity.safetensors").write_bytes(bytes(data))
    with pytest.raises(ProfileError, match="similarity.safetensors is corrupt"):
        load_profile(out)
    (out / "similarity.safetensors").write_bytes(b"garbage")
    with pytest.raises(ProfileError, match="similarity.safetensors is truncated"):
        load_profile(out)



def test_interrupted_profile_resumes_from_finished_tasks(tiny, tmp_path):
    root, _, _ = tiny
    data = tmp_path / "late.jsonl"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"max_tokens: 300\ntasks:\n"
                      f"  - {{name: first, source: {{type: jsonl, path: {root}/corpus/arithmetic/train.jsonl}}}}\n"
                      f"  - {{name: second, source: {{type: jsonl, path: {data}}}}}\n")
    out = tmp_path / "p"
    args = ["profile", "--model", str(root / "model"), "--tasks", str(recipe), "--out", str(out),
            "--batch-size", "4", "--seq-len", "64", "--threads", "1"]
    data.write_text("not json\n")  # the second task's data is broken: the run stops after the first task
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 1 and "late.jsonl:1 is not valid JSON" in res.output
    assert not out.exists() and (tmp_path / "p.partial" / "stats" / "first.safetensors").exists()
    data.write_text((root / "corpus" / "strings" / "train.jsonl").read_text())
    res = CliRunner().invoke(app, [*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert "resumed: task first already profiled" in res.output
    resumed = load_profile(out)
    fresh = CliRunner().invoke(app, [*args[:6], str(tmp_path / "fresh"), *args[7:]])
    assert fresh.exit_code == 0
    again = load_profile(tmp_path / "fresh")
    for t in ("first", "second"):
        for li in (0, 2):
            assert torch.equal(resumed.task_stats(t).layers[li].counts, again.task_stats(t).layers[li].counts)


def test_bad_input_gets_one_line(tiny, tmp_path):
    root, _, _ = tiny
    runner = CliRunner()
    cases = [
        (["--model", str(tmp_path / "nope")], "does not exist"),
        (["--model", str(root / "model"), "--tasks", str(tmp_path / "none.yaml")], "not found"),
        (["--model", str(root / "model"), "--tasks", str(root / "calib.yaml"), "--max-tokens", "0"],
         "--max-tokens must be positive"),
    ]
    for extra, message in cases:
        res = runner.invoke(app, ["profile", "--out", str(tmp_path / "o"), *extra])
        assert res.exit_code == 1 and message in res.output, res.output
        assert "Traceback" not in res.output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    (tmp_path / "r.yaml").write_text(f"tasks:\n  - {{name: e, source: {{type: jsonl, path: {empty}}}}}\n")
    res = runner.invoke(app, ["profile", "--model", str(root / "model"), "--tasks", str(tmp_path / "r.yaml"),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "task e produced no tokens" in res.output
    assert not (tmp_path / "o").exists()
