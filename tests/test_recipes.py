"""Calibration recipe validation: bad files are refused with a message naming the key; shipped recipes load."""

import json
from pathlib import Path

import pytest

from lightmoe_cli.recipes import RecipeError, iter_task_texts, load_recipe

REPO = Path(__file__).resolve().parent.parent


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("taks: []\n", "unknown key 'taks'"),
    ("tasks: []\n", "'tasks' must be a non-empty list"),
    ("tasks:\n  - {name: a, source: {type: jsonl, path: x.jsonl}, max_token: 5}\n", "unknown key 'max_token'"),
    ("tasks:\n  - {name: a, source: {type: csv, path: x}}\n", "'type' must be one of"),
    ("tasks:\n  - {name: a, source: {type: jsonl}}\n", "missing key 'path'"),
    ("tasks:\n  - {name: a, source: {type: jsonl, path: x, colum: t}}\n", "unknown key 'colum'"),
    ("tasks:\n  - {name: a, source: {type: text, path: x}, max_tokens: 0}\n", "max_tokens must be a positive"),
    ("tasks:\n  - {name: a, source: {type: text, path: x}}\n  - {name: a, source: {type: text, path: y}}\n",
     "duplicate task name 'a'"),
    ("tasks: [1, 2\n", "not valid YAML"),
])
def test_bad_recipes_name_the_problem(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message) as err:
        load_recipe(_write(tmp_path, text))
    assert "\n" not in str(err.value) and "r.yaml" in str(err.value)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_shipped_calibration_recipe_validates():
    paths = sorted((REPO / "recipes" / "calibration").glob("*.yaml"))
    assert paths
    for p in paths:
        r = load_recipe(p)
        assert r.tasks and all(t.max_tokens > 0 for t in r.tasks)
    demo = load_recipe(REPO / "recipes" / "calibration" / "demo.yaml")
    assert len(demo.tasks) >= 5 and {"arithmetic", "python_code"} <= {t.name for t in demo.tasks}


def test_jsonl_and_text_sources_stream_documents(tmp_path):
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": f"doc {i}"}) for i in range(3)))
    (tmp_path / "b.txt").write_text("first block\nline two\n\nsecond block\n")
    r = load_recipe(_write(tmp_path, "max_tokens: 100\ntasks:\n"
                           "  - {name: a, source: {type: jsonl, path: a.jsonl, field: body}}\n"
                           "  - {name: b, source: {type: text, path: b.txt}, max_tokens: 7}\n"))
    assert [t.max_tokens for t in r.tasks] == [100, 7]
    assert list(iter_task_texts(r, r.tasks[0])) == ["doc 0", "doc 1", "doc 2"]
    assert list(iter_task_texts(r, r.tasks[1])) == ["first block\nline two\n", "second block\n"]
    assert load_recipe(r.path, max_tokens_override=5).tasks[1].max_tokens == 5


def test_missing_file_and_field_are_clear(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    r = load_recipe(_write(tmp_path, "tasks:\n  - {name: a, source: {type: jsonl, path: a.jsonl, field: body}}\n"
                           "  - {name: b, source: {type: jsonl, path: missing.jsonl}}\n"))
    with pytest.raises(RecipeError, match="has no field 'body'; fields: text"):
        list(iter_task_texts(r, r.tasks[0]))
    with pytest.raises(RecipeError, match="missing.jsonl not found"):
        list(iter_task_texts(r, r.tasks[1]))


def test_datasets_source_reads_a_local_dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "train.jsonl").write_text("\n".join(json.dumps({"q": f"row {i}"}) for i in range(4)))
    r = load_recipe(_write(tmp_path, f"tasks:\n  - {{name: d, source: {{type: datasets, name: {folder}, "
                                     f"split: train, field: q}}}}\n"))
    assert list(iter_task_texts(r, r.tasks[0])) == [f"row {i}" for i in range(4)]


def test_lm_eval_source_reads_a_local_task(tmp_path):
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"{i} + 1 =", "answer": str(i + 1)}) for i in range(3)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tiny_qa.yaml").write_text(
        "task: tiny_qa\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{question}}'\n"
        "doc_to_target: '{{answer}}'\nmetric_list:\n  - metric: exact_match\n")
    r = load_recipe(_write(tmp_path, f"tasks:\n  - {{name: qa, source: {{type: lm_eval, task: tiny_qa, "
                                     f"include_path: {tasks}}}}}\n"))
    assert list(iter_task_texts(r, r.tasks[0])) == ["0 + 1 = 1", "1 + 1 = 2", "2 + 1 = 3"]
