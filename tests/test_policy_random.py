"""`random`: the floor row. Its resident sets are uniform draws at prune's slot counts, reproducible per seed,
and build-bundle, run and eval accept it like any registered policy."""

import numpy as np
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.evaluation.run import EvalRequest
from lightmoe_cli.policies.base import PlanInputs, Serving
from lightmoe_cli.policies.registry import get_policy


def _inputs(seed=0) -> PlanInputs:
    rng = np.random.default_rng(seed)
    mass = {li: rng.gamma(0.5, size=16) for li in (0, 1, 2)}
    return PlanInputs(mass, {}, {}, {li: 2 for li in mass}, 18)


def test_random_sets_have_prunes_slot_counts_and_depend_on_the_seed():
    rand, prune = get_policy("random"), get_policy("prune")
    inputs = _inputs()
    a = rand.plan(inputs, rand.Params(seed=1))
    again = rand.plan(inputs, rand.Params(seed=1))
    b = rand.plan(inputs, rand.Params(seed=2))
    p = prune.plan(inputs, prune.Params())
    assert [lp.slots for lp in a.layers] == [lp.slots for lp in p.layers]
    assert [lp.resident for lp in a.layers] == [lp.resident for lp in again.layers]
    assert [lp.resident for lp in a.layers] != [lp.resident for lp in b.layers]
    assert a.runtime.serving == Serving.PRUNED_ROUTER


def test_random_resident_sets_are_uniform_over_experts():
    rand = get_policy("random")
    counts = np.zeros(16)
    for seed in range(300):
        for lp in rand.plan(_inputs(), rand.Params(seed=seed)).layers:
            counts[lp.resident] += 1
    share = counts / counts.sum()
    assert np.abs(share - 1 / 16).max() < 0.02  # frequency does not leak into the choice


def test_build_bundle_run_and_eval_accept_random(tiny_moe, tmp_path):
    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root, model, tok = tiny_moe
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), tmp_path / "p",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=64))
    out = tmp_path / "b"
    runner = CliRunner()
    res = runner.invoke(app, ["build-bundle", "--profile", str(prof.path), "--policy", "random", "--seed", "3",
                              "--budget", "0.5", "--out", str(out)])
    assert res.exit_code == 0, res.output
    bundle = load_bundle(out)
    assert bundle.policy == "random" and bundle.manifest.params == {"seed": 3}
    res = runner.invoke(app, ["run", "--bundle", str(out), "--prompt", "12 + 7 = ", "--max-new-tokens", "4"])
    assert res.exit_code == 0, res.output
    EvalRequest(policies=["full", "random"], budgets=[0.5]).validate()
