"""Profiling past one process: calibration shards on local worker processes (or Ray) merge into statistics
byte-identical to a single-process run of the same shards; an unreachable Ray address fails in one line within
seconds; a model spread over CPU and disk by accelerate is profiled with every expert call seen."""

import importlib.util
import time

import pytest
import torch
from typer.testing import CliRunner

from lightmoe_cli.cli import app
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.profile.artifact import load_profile
from lightmoe_cli.profile.scaleout import check_ray_address


@pytest.fixture(scope="module")
def tiny(tiny_moe):
    return tiny_moe


def _profile(root, out, *extra):
    args = ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"), "--out", str(out),
            "--batch-size", "4", "--seq-len", "64", "--threads", "1", *extra]
    res = CliRunner().invoke(app, args)
    if res.exc_info and res.exit_code:
        import traceback

        traceback.print_exception(*res.exc_info)
    assert res.exit_code == 0, res.output
    return load_profile(out)


def _same_statistics(a, b) -> None:
    from safetensors.torch import load_file

    assert a.manifest.tasks == b.manifest.tasks
    for t in a.manifest.tasks:
        x = load_file(str(a.path / "stats" / f"{t}.safetensors"))
        y = load_file(str(b.path / "stats" / f"{t}.safetensors"))
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), t
    sx, sy = load_file(str(a.path / "similarity.safetensors")), load_file(str(b.path / "similarity.safetensors"))
    assert all(torch.equal(sx[k], sy[k]) for k in sx)


def test_two_local_workers_give_byte_identical_statistics(tiny, tmp_path):
    root, _, _ = tiny
    one = _profile(root, tmp_path / "one")
    two = _profile(root, tmp_path / "two", "--workers", "2")
    _same_statistics(one, two)
    res = CliRunner().invoke(app, ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"),
                                   "--out", str(tmp_path / "t"), "--workers", "2", "--save-traces"])
    assert res.exit_code == 1 and "drop --workers" in res.output and "Traceback" not in res.output


def test_an_unreachable_ray_address_fails_in_one_line_within_seconds(tiny, tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(LightMoEError, match="cannot reach a Ray cluster at 127.0.0.1:1"):
        check_ray_address("127.0.0.1:1")
    root, _, _ = tiny
    res = CliRunner().invoke(app, ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"),
                                   "--out", str(tmp_path / "r"), "--ray-address", "ray://127.0.0.1:1"])
    assert res.exit_code == 1 and "cannot reach a Ray cluster" in res.output and "Traceback" not in res.output
    assert time.perf_counter() - t0 < 15


def test_a_model_offloaded_to_cpu_and_disk_profiles_like_the_whole_model(tiny, tmp_path):
    root, _, _ = tiny
    whole = _profile(root, tmp_path / "whole")
    split = _profile(root, tmp_path / "split", "--device-map", "auto", "--max-memory", "cpu=60KiB",
                     "--offload-folder", str(tmp_path / "offload"))
    assert any((tmp_path / "offload").iterdir())  # some weights really lived on disk
    for t in whole.manifest.tasks:
        for li in (0, 2):
            a, b = whole.task_stats(t).layers[li], split.task_stats(t).layers[li]
            assert torch.equal(a.counts, b.counts) and torch.allclose(a.gate_mass, b.gate_mass, atol=1e-9)
    res = CliRunner().invoke(app, ["profile", "--model", str(root / "model"), "--out", str(tmp_path / "x"),
                                   "--max-memory", "cpu=1GiB"])
    assert res.exit_code == 1 and "--max-memory only applies with --device-map" in res.output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs Ray: pip install 'lightmoe[ray]'")
def test_a_local_ray_of_two_workers_gives_the_same_statistics(tiny, tmp_path):
    root, _, _ = tiny
    one = _profile(root, tmp_path / "one")
    ray = _profile(root, tmp_path / "ray", "--workers", "2", "--ray-address", "local")
    _same_statistics(one, ray)
