"""Options declared once: list convention, bounds and `requires` rules, the resolved build record, and policies
that describe themselves (no code outside policies/ tests a policy's name)."""

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lightmoe_cli.bundle.options import BuildOptions, ResolvedBuild
from lightmoe_cli.cli.common import build_request, request_parameters
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.evaluation.run import EvalRequest
from lightmoe_cli.options import check_bounds, split_list
from lightmoe_cli.policies.registry import get_policy, policies
from lightmoe_cli.predict.data import split_traces, window_starts

PACKAGE = Path(__file__).resolve().parent.parent / "lightmoe_cli"


def test_one_list_convention_repeated_and_comma_separated():
    assert split_list(["0.25", "0.5,0.75"]) == ["0.25", "0.5", "0.75"]
    assert split_list(None) == [] and split_list("a, b") == ["a", "b"]
    _, conv = request_parameters(EvalRequest)
    req = build_request(EvalRequest, {"budgets": ["0.25", "0.5,0.75"]}, conv)
    assert req.budgets == [0.25, 0.5, 0.75] and req.block_requests == [1, 2, 8, 30]  # not given: the default
    with pytest.raises(LightMoEError, match="bad --budgets 'half'"):
        build_request(EvalRequest, {"budgets": ["half"]}, conv)


def test_declared_bounds_and_requires_rules():
    with pytest.raises(LightMoEError, match="--budgets must be at most 1"):
        check_bounds(EvalRequest(budgets=[0.5, 1.5]))
    with pytest.raises(LightMoEError, match="--active only applies with --activation"):
        BuildOptions(active=0.5).resolve()
    assert BuildOptions(active=0.5, activation="topk").resolve().active == 0.5


def test_build_options_resolve_once_into_a_frozen_record():
    r = BuildOptions(policy="lightmoe").resolve()  # the old name is an alias
    assert isinstance(r, ResolvedBuild) and r.policy.name == "task-aware" and r.fraction == 0.5
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.fraction = 0.7
    assert BuildOptions(policy="full").resolve().fraction is None  # every expert resident whatever the budget
    assert BuildOptions(policy="full").resolve().bundle_name_tag() == "100"
    assert BuildOptions(policy="replace", params={"compression": 0.3, "rank": 8}).resolve().bundle_name_tag() \
        == "c30-r8"
    assert BuildOptions(fraction=0.25, activation="topk", active=0.5).resolve().bundle_name_tag() == "25-topk50"
    with pytest.raises(LightMoEError, match="give --budget or --memory, not both"):
        BuildOptions(fraction=0.5, memory="10MiB").resolve()


def test_policies_describe_what_export_and_the_streams_need():
    assert [n for n, c in policies().items() if c.export_refusal] == ["lru", "merge", "predict", "replace", "swap"]
    assert {n for n, c in policies().items() if c.stream_baseline} == {"prune", "lru", "swap", "predict"}
    assert get_policy("predict").predictor(get_policy("predict").Params(predictor="p")) == "p"


def _policy_name_tests(path: Path, names: set[str]) -> list[str]:
    """Comparisons with a policy name literal and `hasattr(params, ...)` in one module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            consts = [c for c in [node.left, *node.comparators] if isinstance(c, (ast.Constant, ast.Tuple))]
            for c in consts:
                values = [e.value for e in (c.elts if isinstance(c, ast.Tuple) else [c])
                          if isinstance(e, ast.Constant)]
                if any(v in names for v in values if isinstance(v, str)):
                    found.append(f"{path.name}:{node.lineno}")
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "hasattr" and node.args \
                and getattr(node.args[0], "id", "") == "params":
            found.append(f"{path.name}:{node.lineno} hasattr(params)")
    return found


# the floors that act on what a policy can do (build, serve, export, the commands): they ask the policy, never test
# its name. (Reports may still pick their reference rows, full and prune, by name.)
ACTING = ("bundle", "runtime", "export", "cli", "models", "profile", "replace")


def test_no_policy_name_is_tested_where_capabilities_decide():
    names = set(policies()) | {"lightmoe"}
    bad = [hit for pkg in ACTING for p in (PACKAGE / pkg).rglob("*.py") for hit in _policy_name_tests(p, names)]
    assert not bad, bad


def test_the_name_scan_finds_a_name_test(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f(p, params):\n    return p in ('lru', 'swap') or hasattr(params, 'rank')\n")
    assert len(_policy_name_tests(f, {"lru"})) == 2


def _traces(windows: int, size: int = 4) -> dict:
    pos = np.tile(np.arange(size), windows)
    return {"t": {"positions": pos, "router_input": {0: np.arange(len(pos))[:, None] * 1.0},
                  "ids": {0: np.arange(len(pos))[:, None]}}}


def test_predict_holds_out_whole_windows_by_default():
    train, test = split_traces(_traces(10), 0.2)
    assert len(window_starts(train["t"]["positions"])) == 8 and len(window_starts(test["t"]["positions"])) == 2
    assert test["t"]["ids"][0][0, 0] == 32  # the held-out part starts at a window boundary, nothing overlaps
    with pytest.raises(ValueError, match="too few"):
        split_traces(_traces(1), 0.2)
