"""An outside package adds a policy and a model adapter through entry points, as `pip install` would set it up.

The plugin is written into tmp_path as a package plus the `*.dist-info` folder pip writes (METADATA and
entry_points.txt); putting tmp_path on the path is then exactly an installed plugin, without pip or a network.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lightmoe_cli.models.registration import ADAPTERS
from lightmoe_cli.policies.registry import POLICIES

PLUGIN = textwrap.dedent('''
    """A lightmoe plugin: one policy and one model adapter, registered by entry points only."""

    from lightmoe_cli.models.adapter import MoEAdapter
    from lightmoe_cli.policies.base import BundlePlan, Policy, RuntimeSpec, Serving, layer_plans


    class KeepFirst(Policy):
        name = "plugin-keep-first"
        summary = "keeps experts 0..N-1 of every layer (N = the budget split evenly); a plugin's demo"

        def plan(self, inputs, params):
            n = max(max(inputs.top_k.values()), inputs.total_slots // len(inputs.mass))
            resident = {li: list(range(min(n, len(m)))) for li, m in inputs.mass.items()}
            return BundlePlan(layer_plans(inputs, resident), RuntimeSpec(Serving.PRUNED_ROUTER))


    class DemoAdapter(MoEAdapter):
        """The generic adapter, for a model_type lightmoe does not know."""
''')


def install_plugin(root: Path) -> Path:
    (root / "lightmoe_plugin_demo").mkdir()
    (root / "lightmoe_plugin_demo" / "__init__.py").write_text(PLUGIN)
    dist = root / "lightmoe_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lightmoe-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lightmoe.policies]\n"
                                           "plugin-keep-first = lightmoe_plugin_demo:KeepFirst\n\n"
                                           "[lightmoe.adapters]\n"
                                           "demo_moe = lightmoe_plugin_demo:DemoAdapter\n")
    return root


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plugin installed for this test only: the registries read it afresh and forget it afterwards."""
    monkeypatch.syspath_prepend(str(install_plugin(tmp_path)))  # also invalidates importlib's caches
    POLICIES.reset_plugins()
    ADAPTERS.reset_plugins()
    yield tmp_path
    sys.modules.pop("lightmoe_plugin_demo", None)
    POLICIES.reset_plugins()
    ADAPTERS.reset_plugins()


def test_lightmoe_policies_lists_an_installed_plugin(tmp_path):
    install_plugin(tmp_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]), "HF_HUB_OFFLINE": "1",
           "COLUMNS": "300"}
    res = subprocess.run([sys.executable, "-c", "from lightmoe_cli.cli import app; app()", "policies"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "plugin-keep-first" in res.stdout
    assert "keeps experts 0..N-1 of every layer" in res.stdout
    assert "task-aware" in res.stdout  # the built-ins are still there


def test_a_plugin_policy_plans_like_a_builtin(plugin):
    from lightmoe_cli.policies.base import PlanInputs, Serving
    from lightmoe_cli.policies.registry import get_policy, policies

    assert list(policies())[-1] == "plugin-keep-first"  # after the built-ins
    policy = get_policy("plugin-keep-first")
    rng = np.random.default_rng(0)
    mass = {li: rng.gamma(0.5, size=8) for li in (0, 2, 3)}
    inputs = PlanInputs(mass, {}, {}, {li: 2 for li in mass}, total_slots=9)
    plan = policy.plan(inputs, policy.Params())
    assert [lp.resident for lp in plan.layers] == [[0, 1, 2]] * 3
    assert plan.runtime.serving is Serving.PRUNED_ROUTER
    assert all(lp.redirect[3:] == [-1] * 5 for lp in plan.layers)


def test_a_plugin_adapter_serves_its_model_type(plugin):
    from lightmoe_cli.models import get_adapter
    from lightmoe_cli.models.architectures import find_architecture
    from lightmoe_cli.models.registration import registered_adapter
    from lightmoe_cli.models.tiny_configs import tiny_config

    assert "demo_moe" in ADAPTERS
    cls = registered_adapter(["demo_moe"])
    assert cls.__module__ == "lightmoe_plugin_demo" and cls.__name__ == "DemoAdapter"
    info = find_architecture("mixtral")
    config = tiny_config(info)
    config.model_type = "demo_moe"
    model = info.load_class()(config)
    adapter = get_adapter(model)
    assert type(adapter) is cls and adapter.moe_layers(model)
    assert "dbrx" in ADAPTERS  # next to the built-in overrides (registered once get_adapter imported them)


def test_the_plugin_is_gone_once_uninstalled():
    importlib.invalidate_caches()
    assert "plugin-keep-first" not in POLICIES and "demo_moe" not in ADAPTERS
