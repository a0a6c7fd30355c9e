"""The runtime on CUDA: every serving strategy gives the CPU run's logits (tables live on the model's device).

Run with `pytest -m gpu` on a machine with a CUDA device; skipped elsewhere."""

import pytest
import torch

from lightmoe_cli.bundle.build import BuildOptions, build_bundle
from lightmoe_cli.profile.run import ProfileSettings, run_profile
from lightmoe_cli.recipes import load_recipe
from lightmoe_cli.runtime.generate import run_requests
from lightmoe_cli.runtime.loader import build_runtime

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def prof(tiny_moe, tmp_path_factory):
    root, model, tok = tiny_moe
    return run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"),
                       tmp_path_factory.mktemp("gpu") / "p", ProfileSettings(batch_size=4, seq_len=64))


@pytest.mark.parametrize("policy, params", [("full", {}), ("prune", {}), ("lightmoe", {}),
                                            ("lightmoe", {"min_similarity": -1.0}), ("lru", {})])
def test_cuda_logits_equal_cpu_logits(prof, tiny_moe, tmp_path, policy, params):
    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / policy,
                     BuildOptions(policy=policy, fraction=0.5, params=params))
    ids = tok("12 + 7 = 19\nreverse lamp -> pmal\n45 - 3 = 42", return_tensors="pt").input_ids
    logits = {}
    for device in ("cpu", "cuda"):
        rt = build_runtime(b, device=device)
        assert all(m.slot_of.device.type == device for m in rt.layers)
        with torch.no_grad():
            logits[device] = rt.model(input_ids=ids.to(device)).logits.float().cpu()
        stats = run_requests(rt, ["12 + 7 = "], max_new_tokens=4)  # decode + check points on the device
        assert stats.requests[0].new_tokens >= 1
    assert torch.allclose(logits["cpu"], logits["cuda"], atol=1e-4, rtol=1e-4)


def test_cuda_background_loads_pinned_copy_stream_match_cpu(prof, tiny_moe, tmp_path):
    """swap on CUDA: reads land in pinned memory and are copied on the loader's stream; with the loader drained
    between forwards the residency follows the CPU run's exactly, and so do the logits."""
    root, model, tok = tiny_moe
    b = build_bundle(prof, model, tok, str(root / "model"), tmp_path / "swap",
                     BuildOptions(policy="swap", fraction=0.25))
    texts = ["12 + 7 = 19\n45 - 3 = 42", "reverse lamp -> pmal\nupper dog -> DOG", "88 * 2 = 176\n"]
    runs = {}
    for device in ("cpu", "cuda"):
        rt = build_runtime(b, device=device)
        assert (rt.loader._stream is not None) == (device == "cuda")
        out, sets = [], []
        for t in texts:
            with torch.no_grad():
                out.append(rt.model(input_ids=tok(t, return_tensors="pt").input_ids.to(device)).logits.float().cpu())
            rt.loader.wait_idle()
            sets.append([m.resident for m in rt.layers])
        runs[device] = (out, sets, sum(m.stats.loads for m in rt.layers))
        rt.close()
    assert runs["cpu"][1] == runs["cuda"][1] and runs["cuda"][2] > 0
    for a, c in zip(runs["cpu"][0], runs["cuda"][0], strict=True):
        assert torch.allclose(a, c, atol=1e-4, rtol=1e-4)
