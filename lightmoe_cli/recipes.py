"""Calibration recipes: which tasks to profile a model on, and where their text comes from.

Why a schema of our own: a typo in a YAML key must fail at once with a message naming the key and the file, not
an hour into profiling. Three kinds of source cover local use and users who have the hub:

    tasks:
      - name: code
        max_tokens: 16384                 # per-task token cap (optional; default: recipe max_tokens)
        source: {type: jsonl, path: data/corpus/python_code/train.jsonl, field: text}
      - name: notes
        source: {type: text, path: notes.txt}          # one document per blank-line-separated block
      - name: wiki
        source: {type: datasets, name: wikitext, config: wikitext-2-raw-v1, split: test, field: text}
      - name: arc
        source: {type: lm_eval, task: arc_easy}        # the documents' text of an lm-eval task
                                                       # (+ include_path: DIR for local task YAMLs)

Relative paths resolve against the recipe file's folder first, then the working directory.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from lightmoe_cli.errors import LightMoEError

SOURCE_KEYS = {
    "jsonl": ({"type", "path"}, {"field"}),
    "text": ({"type", "path"}, set()),
    "datasets": ({"type", "name"}, {"config", "split", "field"}),
    "lm_eval": ({"type", "task"}, {"include_path"}),
}
TASK_KEYS = {"name", "source", "max_tokens"}
RECIPE_KEYS = {"tasks", "max_tokens", "description"}


class RecipeError(LightMoEError):
    """A calibration recipe is malformed; the message names the file and the bad key."""


@dataclass(frozen=True)
class TaskSource:
    type: str
    path: str | None = None
    field: str = "text"
    name: str | None = None
    config: str | None = None
    split: str | None = None
    task: str | None = None
    include_path: str | None = None  # a folder of local lm-eval task YAMLs (lm_eval sources only)


@dataclass(frozen=True)
class CalibrationTask:
    name: str
    source: TaskSource
    max_tokens: int


@dataclass(frozen=True)
class CalibrationRecipe:
    tasks: list[CalibrationTask]
    max_tokens: int
    path: str = ""
    description: str = ""
    base_dir: str = field(default=".", compare=False)

    def resolved(self) -> dict:
        """JSON-able form with absolute data paths, as stored in a profile's manifest."""
        d = asdict(self)
        d.pop("base_dir")
        for t, task in zip(d["tasks"], self.tasks, strict=True):
            if task.source.path:
                t["source"]["path"] = str(resolve_path(self, task.source.path))
        return d

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.resolved(), sort_keys=True).encode()).hexdigest()[:16]


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecipeError(f"{where} must be a positive integer, got {value!r}")
    return value


def load_recipe(path: Path, max_tokens_override: int | None = None) -> CalibrationRecipe:
    """Parse and validate a recipe; every error is one line naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise RecipeError(f"calibration recipe {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from e
    if not isinstance(raw, dict):
        raise RecipeError(f"{path}: expected a mapping with a 'tasks' list")
    bad = sorted(set(raw) - RECIPE_KEYS)
    if bad:
        raise RecipeError(f"{path}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(RECIPE_KEYS))}")
    default_cap = _positive_int(raw.get("max_tokens", 32768), f"{path}: max_tokens")
    if max_tokens_override is not None:
        default_cap = _positive_int(max_tokens_override, "--max-tokens")
    tasks_raw = raw.get("tasks")
    if not isinstance(tasks_raw, list) or not tasks_raw:
        raise RecipeError(f"{path}: 'tasks' must be a non-empty list")
    tasks, names = [], set()
    for i, t in enumerate(tasks_raw):
        where = f"{path}: tasks[{i}]"
        if not isinstance(t, dict):
            raise RecipeError(f"{where} must be a mapping with name and source")
        bad = sorted(set(t) - TASK_KEYS)
        if bad:
            raise RecipeError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(TASK_KEYS))}")
        name = t.get("name")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise RecipeError(f"{where}: 'name' must be a non-empty string without '/'")
        if name in names:
            raise RecipeError(f"{where}: duplicate task name {name!r}")
        names.add(name)
        src = t.get("source")
        if not isinstance(src, dict) or src.get("type") not in SOURCE_KEYS:
            raise RecipeError(f"{where}.source: 'type' must be one of {', '.join(SOURCE_KEYS)}")
        required, optional = SOURCE_KEYS[src["type"]]
        missing = sorted(required - set(src))
        if missing:
            raise RecipeError(f"{where}.source: missing key {missing[0]!r} for type {src['type']}")
        bad = sorted(set(src) - required - optional)
        if bad:
            raise RecipeError(f"{where}.source: unknown key {bad[0]!r} for type {src['type']}; "
                              f"allowed: {', '.join(sorted(required | optional))}")
        cap = default_cap if max_tokens_override is not None else t.get("max_tokens", default_cap)
        cap = _positive_int(cap, f"{where}.max_tokens")
        tasks.append(CalibrationTask(name, TaskSource(**src), cap))
    return CalibrationRecipe(tasks, default_cap, str(path), str(raw.get("description", "")), str(path.parent))


def resolve_path(recipe: CalibrationRecipe, p: str) -> Path:
    """Relative to the recipe's folder, else the working directory, else the lightmoe checkout (shipped recipes
    name data/corpus/... which `just corpus` builds there)."""
    from lightmoe_cli.paths import REPO_ROOT

    candidate = Path(p).expanduser()
    if candidate.is_absolute():
        return candidate
    for base in (Path(recipe.base_dir), Path.cwd(), REPO_ROOT):
        if (base / candidate).exists():
            return (base / candidate).resolve()
    return candidate.resolve()


def check_sources(recipe: CalibrationRecipe) -> None:
    """Every local data file a recipe names exists (checked before a model is loaded)."""
    for task in recipe.tasks:
        if task.source.type in ("jsonl", "text"):
            path = resolve_path(recipe, task.source.path)
            if not path.is_file():
                hint = " (build the demo corpus with `just corpus`)" if "data/corpus" in str(path) else ""
                raise RecipeError(f"task {task.name}: data file {path} not found{hint}")


def iter_task_texts(recipe: CalibrationRecipe, task: CalibrationTask) -> Iterator[str]:
    """The task's documents as strings, streamed; missing files and fields get a message naming the fix."""
    src = task.source
    if src.type in ("jsonl", "text"):
        path = resolve_path(recipe, src.path)
        if not path.exists():
            hint = " (build the demo corpus with `just corpus`)" if "data/corpus" in str(path) else ""
            raise RecipeError(f"task {task.name}: data file {path} not found{hint}")
        if src.type == "text":
            block: list[str] = []
            with path.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.strip():
                        block.append(line)
                    elif block:
                        yield "".join(block)
                        block = []
            if block:
                yield "".join(block)
            return
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise RecipeError(f"task {task.name}: {path}:{n} is not UTF-8 (byte {e.start}): save the file "
                                      "as UTF-8") from e
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise RecipeError(f"task {task.name}: {path}:{n} is not valid JSON ({e.msg})") from e
                if src.field not in row:
                    raise RecipeError(f"task {task.name}: {path}:{n} has no field {src.field!r}; "
                                      f"fields: {', '.join(row)}")
                yield str(row[src.field])
        return
    if src.type == "datasets":
        import datasets

        try:
            ds = datasets.load_dataset(src.name, src.config, split=src.split or "train", streaming=True)
        except Exception as e:  # datasets raises many types; the user needs one line
            raise RecipeError(f"task {task.name}: cannot load dataset {src.name!r} offline "
                              f"({str(e).splitlines()[0][:160]})") from e
        for row in ds:
            if src.field not in row:
                raise RecipeError(f"task {task.name}: dataset {src.name} has no field {src.field!r}; "
                                  f"fields: {', '.join(row)}")
            yield str(row[src.field])
        return
    yield from _lm_eval_texts(recipe, task)


def _lm_eval_texts(recipe: CalibrationRecipe, task: CalibrationTask) -> Iterator[str]:
    """Documents of an lm-eval task rendered as the text the model would see (context + target)."""
    from lm_eval.tasks import TaskManager

    src = task.source
    # with only a local folder, skip scanning lm-eval's ~200 bundled task folders (about 14 s)
    manager = TaskManager(include_path=str(resolve_path(recipe, src.include_path)), include_defaults=False) \
        if src.include_path else TaskManager()
    try:
        loaded = manager.load([src.task])["tasks"]
    except Exception as e:  # unknown task or data not cached
        raise RecipeError(f"task {task.name}: lm-eval task {src.task!r} unavailable "
                          f"({str(e).splitlines()[0][:160]})") from e
    for t in loaded.values():  # a group expands to its tasks
        yield from _task_doc_texts(t)


def _task_doc_texts(t) -> Iterator[str]:
    docs = t.test_docs() if t.has_test_docs() else t.validation_docs()
    for doc in docs:
        target = t.doc_to_target(doc)
        choices = t.doc_to_choice(doc) if t.config.doc_to_choice else None
        if isinstance(target, int) and choices:
            target = choices[target]
        yield f"{t.doc_to_text(doc)} {target}"


def recipe_from_resolved(d: dict) -> CalibrationRecipe:
    """The recipe a profile's manifest stored (absolute data paths), to read its calibration text again."""
    tasks = [CalibrationTask(t["name"], TaskSource(**t["source"]), int(t["max_tokens"])) for t in d["tasks"]]
    return CalibrationRecipe(tasks, int(d["max_tokens"]), d.get("path", ""), d.get("description", ""))
