"""The serving scheduler, the task matcher and the text classifier: pure logic on small inputs."""

import numpy as np

from lightmoe_cli.bundle.task_classifier import chunks, load_text_classifier, train_text_classifier
from lightmoe_cli.demo.generators import generate_documents
from lightmoe_cli.serve.detect import gate_mass, match_signature
from lightmoe_cli.serve.scheduler import FifoScheduler, TaskScheduler, Waiting


def _w(i, task, t):
    return Waiting(i, task, t)


def test_fifo_admits_in_arrival_order_up_to_the_free_slots():
    s = FifoScheduler(max_batch=3)
    plan = s.plan([_w(1, "a", 2.0), _w(2, "b", 1.0), _w(3, "a", 3.0), _w(4, "b", 0.5)], None, running=1, now=4)
    assert plan.admit == [4, 2] and plan.switch_to is None


def test_task_scheduler_keeps_the_current_set_while_its_task_has_work():
    s = TaskScheduler(max_batch=4, max_wait_s=10)
    waiting = [_w(1, "b", 0.0), _w(2, "b", 0.1), _w(3, "a", 0.2), _w(4, None, 0.3)]
    # idle, current task a has one request: stay on a (no swap), unknown-task requests ride along
    plan = s.plan(waiting, "a", running=0, now=1.0)
    assert plan.switch_to is None and plan.admit == [3, 4]
    # running on a: only a's and unknown requests join
    assert s.plan(waiting, "a", running=2, now=1.0).admit == [3, 4]


def test_task_scheduler_moves_to_the_largest_group_then_to_the_overdue_one():
    s = TaskScheduler(max_batch=8, max_wait_s=1.0)
    waiting = [_w(1, "c", 0.0), _w(2, "b", 0.5), _w(3, "b", 0.6), _w(4, "b", 0.7)]
    plan = s.plan(waiting, "a", running=0, now=0.8)
    assert plan.switch_to == "b" and plan.admit == [2, 3, 4]
    # request 1 (task c) has waited past max_wait: c is served next, whatever the group sizes
    plan = s.plan(waiting, "a", running=0, now=1.2)
    assert plan.switch_to == "c" and plan.admit == [1]
    # while a batch of b runs, an overdue c stops new b requests from joining, so the batch drains
    assert s.plan(waiting + [_w(5, "b", 1.1)], "b", running=2, now=1.2).admit == []


def test_unknown_tasks_are_never_refused():
    s = TaskScheduler(max_batch=2, max_wait_s=0.5)
    plan = s.plan([_w(1, None, 0.0), _w(2, None, 0.1), _w(3, None, 0.2)], "a", running=0, now=5.0)
    assert plan.admit == [1, 2] and plan.switch_to is None


def test_match_signature_picks_the_closest_task_and_handles_no_mass():
    sig = {"a": np.array([0.7, 0.1, 0.1, 0.1]), "b": np.array([0.1, 0.1, 0.1, 0.7])}
    mass = gate_mass(np.array([[3, 2], [3, 1]]), np.array([[0.6, 0.4], [0.9, 0.1]]), 4)
    assert np.isclose(mass.sum(), 1.0) and np.isclose(mass[3], 1.5 / 2)
    assert match_signature(mass, sig)[0] == "b"
    assert match_signature(np.zeros(4), sig) == (None, float("inf"))
    # a signature with a zero where the prompt has mass still scores finitely (smoothed)
    task, kl = match_signature(np.array([0.0, 1.0, 0.0, 0.0]), {"z": np.array([1.0, 0.0, 0.0, 0.0])})
    assert task == "z" and np.isfinite(kl)


def test_text_classifier_names_held_out_documents_and_round_trips_without_pickle(tmp_path):
    domains = ("arithmetic", "strings", "algebra")
    train = {d: chunks(generate_documents(d, 60, seed=1)) for d in domains}
    clf = train_text_classifier(train)
    clf.save(tmp_path / "task_classifier")
    assert sorted(p.name for p in (tmp_path / "task_classifier").iterdir()) == ["classifier.json",
                                                                                 "weights.safetensors"]
    loaded = load_text_classifier(tmp_path)
    held_out = [(d, doc[:200]) for d in domains for doc in generate_documents(d, 20, seed=99)]
    right = sum(loaded.predict(text)[0] == d for d, text in held_out)
    assert right / len(held_out) >= 0.9
    for _, t in held_out[:5]:  # stored in float32: the same answer, the same probability to 1e-6
        (a, p), (b, q) = clf.predict(t), loaded.predict(t)
        assert a == b and abs(p - q) < 1e-6
    assert loaded.predict("   ") == (None, 0.0)


def test_training_chunks_take_every_documents_start_first():
    from lightmoe_cli.bundle.task_classifier import CHUNK_CHARS

    docs = ["a" * (3 * CHUNK_CHARS), "b" * CHUNK_CHARS, "   ", "c" * (2 * CHUNK_CHARS)]
    got = chunks(iter(docs), max_chunks=5)  # a generator is read as far as needed
    assert [c[0] for c in got] == ["a", "b", "c", "a", "c"]
    assert all(len(c) == CHUNK_CHARS for c in got)
    assert [c[0] for c in chunks(docs)] == ["a", "b", "c", "a", "c", "a"]  # everything when under the cap
    assert chunks([]) == [] and chunks(["  "]) == []


def test_two_class_classifier_gives_probabilities_that_sum_to_one():
    clf = train_text_classifier({d: chunks(generate_documents(d, 30, seed=2)) for d in ("arithmetic", "strings")})
    task, p = clf.predict(generate_documents("arithmetic", 1, seed=7)[0])
    assert task == "arithmetic" and 0.5 < p <= 1.0
