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
