"""The policy registry: every registered policy plans valid bundles on small arrays, declares its parameters
once (CLI options, validation and manifest come from them), and bad values are one-line errors."""

import dataclasses
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.cli.policy_options import policy_options
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.manifest import record_from_json, to_json
from lightmoe_cli.policies.base import PlanInputs, RuntimeSpec, Serving
from lightmoe_cli.policies.registry import get_policy, policies


def _inputs(total_slots=10, layers=(0, 2, 3), e=8, k=2, seed=0) -> PlanInputs:
    rng = np.random.default_rng(seed)
    mass = {li: rng.gamma(0.5, size=e) for li in layers}
    task_mass = {t: {li: rng.gamma(0.5, size=e) for li in layers} for t in ("a", "b")}
    sim = {li: np.corrcoef(rng.normal(size=(e, 16))) for li in layers}
    return PlanInputs(mass, task_mass, sim, {li: k for li in layers}, total_slots)


def test_the_registry_lists_every_builtin_policy():
    assert {"task-aware", "prune", "lru", "full"} <= set(policies()) and "lightmoe" not in policies()
    assert get_policy("lightmoe").name == "task-aware"  # the name before the rename is an accepted alias
    with pytest.raises(LightMoEError, match="unknown policy 'magic'; policies: task-aware, prune, lru, full"):
        get_policy("magic")


@pytest.mark.parametrize("name", list(policies()))
def test_every_policy_plans_a_valid_bundle_within_its_budget(name):
    policy = get_policy(name)
    params = policy.Params()
    params.validate()  # defaults are valid
    inputs = _inputs()
    plan = policy.plan(inputs, params)
    assert [lp.layer_index for lp in plan.layers] == [0, 2, 3]
    total = sum(lp.slots for lp in plan.layers)
    assert total == (24 if not policy.uses_budget else inputs.total_slots)
    for lp in plan.layers:
        assert len(lp.resident) == lp.slots >= policy.min_slots_per_layer(params, 2)
        assert len(set(lp.resident)) == lp.slots and all(0 <= e < 8 for e in lp.resident)
        assert all(t == -1 or t in lp.resident for t in lp.redirect)
        assert all(lp.redirect[e] == e for e in lp.resident)
        assert 0 <= lp.covered_mass <= 1
    assert isinstance(plan.runtime, RuntimeSpec)
    # the runtime spec survives the manifest round trip, typed
    assert record_from_json(RuntimeSpec, to_json(plan.runtime)) == plan.runtime


def test_policy_parameters_become_cli_options_once_each():
    options = {o.name: o for o in policy_options()}
    for cls in policies().values():
        for f in dataclasses.fields(cls.Params):
            assert cls.name in options[f.name].owners
    res = CliRunner().invoke(app, ["build-bundle", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for o in options.values():
        assert o.flag in res.output
    res = CliRunner().invoke(app, ["policies"], env={"COLUMNS": "200"})
    assert res.exit_code == 0 and all(name in res.output for name in policies())
    assert "--min-similarity [1.0]" in res.output and "--eviction [lru]" in res.output


@pytest.mark.parametrize("args, message", [
    (["--threshold", "-3"], "--threshold must be at least 0.0"),
    (["--window", "0"], "--window must be at least 1"),
    (["--max-swap", "-1"], "--max-swap must be at least 1"),
    (["--cooldown", "-5"], "--cooldown must be at least 0"),
    (["--min-similarity", "7"], "--min-similarity must be at most 1.0"),
    (["--missing", "maybe"], "--missing must be one of reroute, drop"),
    (["--policy", "prune", "--eviction", "lfu"], "--eviction is a parameter of policy lru, not prune"),
    (["--policy", "magic"], "unknown policy 'magic'"),
    (["--budget", "nan"], "--budget nan must be a fraction"),
    (["--budget", "1.5"], "must be a fraction in (0, 1]"),
    (["--ranking", "vibes"], "unknown ranking 'vibes'"),
])
def test_bad_policy_options_are_refused_before_any_model_loads(args, message, tmp_path):
    # the profile does not exist: an option error must come first, as one line
    res = CliRunner().invoke(app, ["build-bundle", "--profile", str(tmp_path / "none"), *args])
    assert res.exit_code == 1
    assert message.replace("--eviction is a parameter of policy lru, not prune",
                           "--eviction is not a parameter of policy prune") in res.output, res.output
    assert "Traceback" not in res.output


def test_params_from_options_keep_policy_defaults():
    policy = get_policy("lightmoe")
    p = policy.Params.from_options({"threshold": 0.1}, "lightmoe")
    assert p.threshold == 0.1 and p.window == 256 and p.manager().miss_threshold == 0.1
    assert not math.isnan(p.min_similarity)
    assert get_policy("lightmoe").plan(_inputs(), p).runtime.serving == Serving.REMAP
