"""Task groups sharing one resident set (serve/task_groups.py), and `serve --task-groups` on a tiny bundle."""

import numpy as np
import pytest

from lightmoe_cli.policies.resident import mean_covered_share
from lightmoe_cli.serve.task_groups import group_set, group_tasks


def _signatures():
    """Four tasks over 8 experts in 2 layers, 3 slots a layer: a and b favour experts 0-3, c and d experts 4-7
    (their own sets differ by one expert within each pair), so pairing a+b and c+d loses least."""
    def sig(hot, lean):
        m = np.full(8, 0.01)
        m[hot] = 1.0
        m[lean] += 0.5
        return {0: m / m.sum(), 1: m / m.sum()}

    return {"a": sig([0, 1, 2], 3), "b": sig([1, 2, 3], 0), "c": sig([4, 5, 6], 7), "d": sig([5, 6, 7], 4)}


def _own_sets(signatures, slots=3):
    return {t: {li: sorted(np.argsort(-m)[:slots].tolist()) for li, m in s.items()} for t, s in signatures.items()}


def test_tasks_whose_sets_overlap_are_grouped_and_share_one_set_of_the_same_size():
    sig = _signatures()
    groups = group_tasks(sig, _own_sets(sig), 2)
    assert [g.members for g in groups] == [("a", "b"), ("c", "d")]
    for g in groups:
        assert g.name == "+".join(g.members)
        assert all(len(v) == 3 for v in g.resident.values())  # the bundle's size per layer: no extra memory
        assert g.resident == group_set(sig, g.members, {0: 3, 1: 3})
        assert 0 < g.coverage_lost < 0.2  # each member keeps most of its own mass
    # the shared set serves both members better than the other pair's set does
    ab, cd = groups
    assert mean_covered_share(sig["a"], ab.resident) > mean_covered_share(sig["a"], cd.resident) + 0.5


def test_as_many_groups_as_tasks_keeps_each_tasks_own_set():
    sig = _signatures()
    own = _own_sets(sig)
    groups = group_tasks(sig, own, 4)
    assert [g.members for g in groups] == [("a",), ("b",), ("c",), ("d",)]
    assert all(g.resident == own[g.members[0]] and g.coverage_lost == 0 for g in groups)
    assert len(group_tasks(sig, own, 1)) == 1
    with pytest.raises(ValueError):
        group_tasks(sig, own, 0)


@pytest.fixture(scope="module")
def bundle(tiny_moe, tiny_profile, tmp_path_factory):
    from lightmoe_cli.bundle.build import BuildOptions, build_bundle

    root, model, tok = tiny_moe
    return build_bundle(tiny_profile, model, tok, str(root / "model"), tmp_path_factory.mktemp("groups") / "b",
                        BuildOptions(policy="lightmoe", fraction=0.5, ranking="gate_mass", params={}))


def test_serve_task_groups_serves_both_tasks_with_one_set(bundle):
    """The tiny bundle's two tasks in one group: after the first move to the shared set, alternating tasks
    moves nothing; with a set per task the same requests move the set."""
    import torch

    from lightmoe_cli.serve.server import ServeRequest, ThreadedServer, build_server

    openai = pytest.importorskip("openai")
    tasks = sorted(bundle.manifest.task_resident)
    assert len(tasks) == 2 and bundle.manifest.task_resident[tasks[0]] != bundle.manifest.task_resident[tasks[1]]
    swaps = {}
    for groups in (None, 1):
        srv = build_server(ServeRequest(bundle=bundle.path, schedule="task", task_groups=groups, threads=1), bundle)
        assert torch.get_num_threads() == 1  # the loading thread never forms an OpenMP team of its own
        with ThreadedServer(srv) as running:
            client = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
            seen = []
            for i in range(4):
                r = client.completions.create(model=running.server.context.model_name, prompt="12 + 7 = ",
                                              max_tokens=2, extra_body={"task": tasks[i % 2]})
                seen.append(r.model_extra["lightmoe"]["task"])
            assert seen == [tasks[i % 2] for i in range(4)]  # the meter names the request's own task
            swaps[groups] = srv.engine.swaps
            if groups == 1:
                assert srv.info["task_groups"] == ["+".join(tasks)]
                assert srv.runtime.shared_sets["+".join(tasks)][0] == group_set(
                    {t: {int(li): np.asarray(v) for li, v in bundle.manifest.task_signatures[t].items()}
                     for t in tasks}, tuple(tasks), {li: len(v) for li, v in bundle.manifest.task_resident[
                         tasks[0]].items()})
    assert swaps[None] > swaps[1]


def test_task_groups_without_the_task_schedule_is_one_clear_error(bundle):
    from lightmoe_cli.errors import LightMoEError
    from lightmoe_cli.serve.server import ServeRequest, build_server

    with pytest.raises(LightMoEError, match="--task-groups .* needs --schedule task"):
        build_server(ServeRequest(bundle=bundle.path, schedule="fifo", task_groups=2, threads=1), bundle)
