"""Bad inputs, edited artifacts, signals and two writers: every case ends in one line naming the fix (never a
traceback, never a hang), and artifacts that existed before are byte-identical afterwards.

Each case is a row of a table (id, what is done, the message expected), run through the real command line."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lightmoe_cli.cli import app

RUNNER = CliRunner()


def folder_digest(folder: Path) -> str:
    """sha256 over every file's relative path and bytes: 'byte-identical afterwards' made checkable."""
    h = hashlib.sha256()
    for p in sorted(Path(folder).rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def one_line_error(res, message: str, code: int = 1) -> None:
    text = res.output
    assert res.exit_code == code, text
    assert "Traceback" not in text, text
    errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, text
    assert message in " ".join(text.split()), text


@pytest.fixture(scope="module")
def made(tiny_moe, tmp_path_factory):
    """A profile and a lightmoe bundle of the tiny model, plus a second model's bundle (other weights)."""
    import copy

    import torch

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root, model, tok = tiny_moe
    work = tmp_path_factory.mktemp("bad")
    prof = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), work / "profile",
                       ProfileSettings(batch_size=4, seq_len=64, sample_tokens=64))
    bundle = build_bundle(prof, model, tok, str(root / "model"), work / "bundle", BuildOptions(fraction=0.5))
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    other.save_pretrained(work / "other-model")
    tok.save_pretrained(work / "other-model")
    other_prof = run_profile(other, tok, str(work / "other-model"), load_recipe(root / "calib.yaml"),
                             work / "other-profile", ProfileSettings(batch_size=4, seq_len=64, sample_tokens=64))
    other_bundle = build_bundle(other_prof, other, tok, str(work / "other-model"), work / "other-bundle",
                                BuildOptions(fraction=0.5))
    return {"root": root, "profile": prof.path, "bundle": bundle.path, "other_bundle": other_bundle.path}


@pytest.fixture
def pristine(made):
    """Digests of the module's artifacts before a case; checked unchanged after it."""
    before = {k: folder_digest(made[k]) for k in ("profile", "bundle", "other_bundle")}
    yield
    assert before == {k: folder_digest(made[k]) for k in ("profile", "bundle", "other_bundle")}


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


def _rehash(folder: Path, rel: str) -> None:
    """Rewrite a file's size and sha256 in the manifest, as an editor covering their tracks would."""
    from lightmoe_cli.files import sha256_file

    def edit(m):
        m["files"][rel] = {"sha256": sha256_file(folder / rel), "bytes": (folder / rel).stat().st_size}
    _edit_manifest(folder, edit)


def _bundle_edits():
    def first_layer(m):
        return m["layers"][0]

    return [
        ("files-absolute", lambda b, o: _edit_manifest(b, lambda m: m["files"].update(
            {"/etc/hostname": {"sha256": "0" * 64, "bytes": 1}})), "outside the bundle"),
        ("files-dotdot", lambda b, o: _edit_manifest(b, lambda m: m["files"].update(
            {"../bundle/manifest.json": {"sha256": "0" * 64, "bytes": 1}})), "outside the bundle"),
        ("files-dev-zero", lambda b, o: _edit_manifest(b, lambda m: m["files"].update(
            {"/dev/zero": {"sha256": "0" * 64, "bytes": 0}})), "outside the bundle"),
        ("files-symlink", lambda b, o: (os.symlink("/dev/zero", b / "zero"), _edit_manifest(
            b, lambda m: m["files"].update({"zero": {"sha256": "0" * 64, "bytes": 0}}))), "outside the bundle"),
        ("no-files", lambda b, o: _edit_manifest(b, lambda m: m.pop("files")), "manifest lists no files"),
        ("no-model", lambda b, o: _edit_manifest(b, lambda m: m.pop("model")), "field 'model' is missing"),
        ("wrong-type", lambda b, o: _edit_manifest(b, lambda m: m.update(layers="all")), "expected a list"),
        ("corrupt-json", lambda b, o: (b / "manifest.json").write_text("{"), "manifest.json is corrupt"),
        ("schema-1", lambda b, o: _edit_manifest(b, lambda m: m.update(schema_version=1)),
         "this lightmoe reads 2: build the bundle again"),
        ("resident-99", lambda b, o: _edit_manifest(b, lambda m: first_layer(m)["resident"].__setitem__(0, 99)),
         "names experts outside 0..7"),
        ("redirect-40", lambda b, o: _edit_manifest(b, lambda m: first_layer(m)["redirect"].__setitem__(0, 40)),
         "redirect target that is not resident"),
        ("edited-fingerprint", lambda b, o: _edit_manifest(b, lambda m: m["model"].update(fingerprint="0" * 16)),
         "belongs to model fingerprint"),
        ("swapped-weights", lambda b, o: (shutil.copy(o / "model" / "non_expert.safetensors",
                                                      b / "model" / "non_expert.safetensors"),
                                          _rehash(b, "model/non_expert.safetensors")),
         "belongs to model fingerprint"),
        ("swapped-experts", lambda b, o: (shutil.copy(o / "experts" / "layer_0.safetensors",
                                                      b / "experts" / "layer_0.safetensors"),
                                          _rehash(b, "experts/layer_0.safetensors")),
         "belongs to model fingerprint"),
        ("truncated-store", lambda b, o: (b / "experts" / "layer_2.safetensors").write_bytes(
            (b / "experts" / "layer_2.safetensors").read_bytes()[:-10]), "is truncated or changed"),
    ]


@pytest.mark.parametrize("case, edit, message", _bundle_edits(), ids=[c[0] for c in _bundle_edits()])
def test_edited_bundles_are_refused_by_run(made, pristine, tmp_path, case, edit, message):
    b = tmp_path / "b"
    shutil.copytree(made["bundle"], b)
    edit(b, made["other_bundle"])
    t0 = time.perf_counter()
    res = RUNNER.invoke(app, ["run", "--bundle", str(b), "--prompt", "12 + 7 = ", "--max-new-tokens", "2"])
    one_line_error(res, message)
    assert time.perf_counter() - t0 < 60  # never a hang (the /dev/zero case used to read forever)


def test_a_bundle_whose_router_weights_are_not_its_model_is_refused_at_load(made, pristine, tmp_path):
    """Files and fingerprints all consistent, but the router rows in the weights edited: run recomputes the
    fingerprint from the weights it loads."""
    import torch
    from safetensors.torch import load_file, save_file

    from lightmoe_cli.files import safetensors_metadata

    b = tmp_path / "b"
    shutil.copytree(made["bundle"], b)
    path = b / "model" / "non_expert.safetensors"
    meta = safetensors_metadata(path)
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.endswith("mlp.gate.weight"))
    tensors[key] = tensors[key] + torch.randn_like(tensors[key])
    save_file(tensors, str(path), metadata=meta)
    _rehash(b, "model/non_expert.safetensors")
    res = RUNNER.invoke(app, ["run", "--bundle", str(b), "--prompt", "12 + 7 = ", "--max-new-tokens", "2"])
    one_line_error(res, "its weights are model")


def _profile_edits():
    return [
        ("edited-fingerprint", lambda p: _edit_manifest(p, lambda m: m["model"].update(fingerprint="0" * 16)),
         "belongs to model fingerprint"),
        ("no-files", lambda p: _edit_manifest(p, lambda m: m.pop("files")), "manifest lists no files"),
        ("files-dotdot", lambda p: _edit_manifest(p, lambda m: m["files"].update(
            {"../x": {"sha256": "0" * 64, "bytes": 1}})), "outside the profile"),
        ("old-file-map", lambda p: _edit_manifest(p, lambda m: m.update(files={k: v["sha256"] for k, v in
                                                                               m["files"].items()})),
         "expected an object"),
    ]


@pytest.mark.parametrize("case, edit, message", _profile_edits(), ids=[c[0] for c in _profile_edits()])
def test_edited_profiles_are_refused_by_build_bundle(made, pristine, tmp_path, case, edit, message):
    p = tmp_path / "p"
    shutil.copytree(made["profile"], p)
    edit(p)
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(p), "--out", str(tmp_path / "out")])
    one_line_error(res, message)
    assert not (tmp_path / "out").exists()


def _run_cases(tmp: Path):
    latin1 = tmp / "latin1.jsonl"
    latin1.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    as_list = tmp / "list.jsonl"
    as_list.write_text('["12 + 7 = "]\n')
    as_number = tmp / "number.jsonl"
    as_number.write_text('{"prompt": 42}\n')
    return [
        ("empty-prompt", ["--prompt", ""], "--prompt is empty"),
        ("no-prompt", [], "nothing to run"),
        ("input-missing", ["--input", str(tmp / "none.jsonl")], "not found"),
        ("input-not-utf8", ["--input", str(latin1)], "is not UTF-8"),
        ("input-json-list", ["--input", str(as_list)], "list.jsonl:1 is not a JSON object"),
        ("input-prompt-number", ["--input", str(as_number)], "number.jsonl:1 is not a JSON object"),
        ("stats-json-missing-folder", ["--prompt", "x", "--stats-json", str(tmp / "no" / "s.json")],
         "folder"),
        ("max-new-tokens-0", ["--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens must be between"),
        ("max-new-tokens-negative", ["--prompt", "x", "--max-new-tokens", "-5"], "--max-new-tokens must be between"),
        ("max-new-tokens-1e9", ["--prompt", "x", "--max-new-tokens", "1000000000"],
         "--max-new-tokens must be between"),
        ("max-new-tokens-past-positions", ["--prompt", "x", "--max-new-tokens", "999999"], "positions"),
        ("io-bandwidth", ["--prompt", "x", "--io-bandwidth", "fast"], "cannot read size"),
        ("bundle-missing", ["--prompt", "x", "--bundle", str(tmp / "nope")], "not a lightmoe bundle"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _run_cases(Path("/tmp"))])
def test_bad_run_options(made, pristine, tmp_path, case):
    args, message = next((a, m) for c, a, m in _run_cases(tmp_path) if c == case)
    if "--bundle" not in args:
        args = ["--bundle", str(made["bundle"]), *args]
    one_line_error(RUNNER.invoke(app, ["run", *args]), message)


def _build_cases():
    return [
        ("budget-nan", ["--budget", "nan"], "must be a fraction"),
        ("budget-inf", ["--budget", "inf"], "must be a fraction"),
        ("budget-zero", ["--budget", "0"], "must be a fraction"),
        ("budget-and-memory", ["--budget", "0.5", "--memory", "1MiB"], "not both"),
        ("memory-too-big", ["--memory", "1000GiB"], "more than all experts take"),
        ("memory-too-small", ["--memory", "1KiB"], "use at least --memory"),
        ("memory-unreadable", ["--memory", "lots"], "cannot read size"),
        ("threshold-negative", ["--threshold", "-3"], "--threshold must be at least 0.0"),
        ("window-zero", ["--window", "0"], "--window must be at least 1"),
        ("max-swap-negative", ["--max-swap", "-1"], "--max-swap must be at least 1"),
        ("cooldown-negative", ["--cooldown", "-5"], "--cooldown must be at least 0"),
        ("min-similarity-7", ["--min-similarity", "7"], "--min-similarity must be at most 1.0"),
        ("missing-choice", ["--missing", "maybe"], "--missing must be one of reroute, drop"),
        ("option-of-another-policy", ["--policy", "prune", "--eviction", "lfu"],
         "--eviction is not a parameter of policy prune"),
        ("unknown-policy", ["--policy", "magic"], "unknown policy 'magic'"),
        ("unknown-ranking", ["--ranking", "vibes"], "unknown ranking 'vibes'"),
        ("unknown-dtype", ["--dtype", "float8"], "unknown --dtype"),
        ("profile-missing", ["--profile", "/nonexistent/profile"], "not a lightmoe profile"),
        ("compression-too-large", ["--policy", "replace", "--compression", "0.9", "--rank", "2"],
         "leaves fewer than top-k"),
        ("compression-zero", ["--policy", "replace", "--compression", "0"], "--compression must be greater than 0.0"),
        ("rank-negative", ["--policy", "replace", "--rank", "-1"], "--rank must be at least 0"),
        ("recover-tasks-missing", ["--policy", "replace", "--recover-tasks", "/nonexistent/r.yaml"], "not found"),
    ]


@pytest.mark.parametrize("case, args, message", _build_cases(), ids=[c[0] for c in _build_cases()])
def test_bad_build_options(made, pristine, tmp_path, case, args, message):
    base = [] if "--profile" in args else ["--profile", str(made["profile"])]
    res = RUNNER.invoke(app, ["build-bundle", *base, *args, "--out", str(tmp_path / "out")])
    one_line_error(res, message)
    assert not (tmp_path / "out").exists()


def _profile_cases(root: Path, tmp: Path):
    bad = tmp / "bad.jsonl"
    bad.write_bytes(b'{"text": "caf\xe9"}\n')
    (tmp / "latin1.yaml").write_text(f"tasks:\n  - {{name: b, source: {{type: jsonl, path: {bad}}}}}\n")
    (tmp / "missing.yaml").write_text(f"tasks:\n  - {{name: m, source: {{type: jsonl, path: {tmp}/none.jsonl}}}}\n")
    model = ["--model", str(root / "model")]
    return [
        ("calibration-not-utf8", [*model, "--tasks", str(tmp / "latin1.yaml")], "bad.jsonl:1 is not UTF-8"),
        # the data file is checked before the model: a bad model path does not even get looked at
        ("calibration-file-missing", ["--model", str(tmp / "nope"), "--tasks", str(tmp / "missing.yaml")],
         "none.jsonl not found"),
        ("batch-size-0", [*model, "--batch-size", "0"], "--batch-size must be positive"),
        ("recipe-missing", [*model, "--tasks", str(tmp / "none.yaml")], "not found"),
        ("model-missing", ["--model", str(tmp / "nope")], "does not exist"),
        ("workers-0", [*model, "--workers", "0"], "--workers and --shards must be positive"),
        ("device-map-unknown", [*model, "--device-map", "weird"], "use auto, balanced or sequential"),
        ("max-memory-without-device-map", [*model, "--max-memory", "cpu=1GiB"],
         "--max-memory only applies with --device-map"),
        ("max-memory-unreadable", [*model, "--device-map", "auto", "--max-memory", "lots"],
         "must look like cpu=200GiB"),
        ("ray-unreachable", [*model, "--ray-address", "127.0.0.1:1"], "cannot reach a Ray cluster"),
    ]


@pytest.mark.parametrize("case", [c[0] for c in _profile_cases(Path("/r"), Path("/tmp"))])
def test_bad_profile_inputs(made, pristine, tmp_path, case):
    args, message = next((a, m) for c, a, m in _profile_cases(made["root"], tmp_path) if c == case)
    res = RUNNER.invoke(app, ["profile", *args, "--out", str(tmp_path / "out")])
    one_line_error(res, message)
    assert not (tmp_path / "out").exists()


def test_resume_with_changed_settings_says_it_starts_over(made, tmp_path):
    root = made["root"]
    out = tmp_path / "p"
    (tmp_path / "p.partial").mkdir()
    (tmp_path / "p.partial" / "progress.key").write_text("settings of another run")
    res = RUNNER.invoke(app, ["profile", "--model", str(root / "model"), "--tasks", str(root / "calib.yaml"),
                              "--out", str(out), "--batch-size", "4", "--seq-len", "64", "--resume"])
    assert res.exit_code == 0, res.output
    assert "cannot be resumed" in " ".join(res.output.split())


@pytest.mark.parametrize("args, message", [
    (["--tasks", ""], "--tasks is empty"), (["--limit", "0"], "--limit must be"),
    (["--limit", "-3"], "--limit must be"), (["--budgets", "nan"], "budgets are fractions"),
    (["--budgets", "half"], "bad --budgets"), (["--compare", "magic"], "unknown policy"),
    (["--block-requests", "0"], "must be positive"), (["--include-path", "/nonexistent"], "--include-path"),
])
def test_bad_eval_options(args, message, tmp_path):
    one_line_error(RUNNER.invoke(app, ["eval", *args, "--out", str(tmp_path / "e")]), message)


@pytest.mark.parametrize("case", ["missing-bundle", "dynamic-policy", "managed-without-task", "unknown-task",
                                  "unknown-format", "no-out-folder", "ot-without-memory"])
def test_bad_export_inputs(made, pristine, tmp_path, case):
    b = str(made["bundle"])  # a lightmoe bundle: a manager, task sets
    args, message = {
        "missing-bundle": (["--bundle", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], "not a lightmoe bundle"),
        "dynamic-policy": None,
        "managed-without-task": (["--bundle", b, "--out", str(tmp_path / "o")], "export --task T"),
        "unknown-task": (["--bundle", b, "--task", "klingon", "--out", str(tmp_path / "o")],
                         "no resident set for task 'klingon'"),
        "unknown-format": (["--bundle", b, "--format", "onnx", "--out", str(tmp_path / "o")], "unknown --format"),
        "no-out-folder": (["--bundle", b, "--out", str(tmp_path / "nodir" / "o")], "does not exist"),
        "ot-without-memory": (["--bundle", b, "--format", "llamacpp-ot", "--static", "--out",
                               str(tmp_path / "o.json")], "needs --gpu-memory"),
    }[case] or (["--bundle", b, "--out", str(tmp_path / "o")], "")
    if case == "dynamic-policy":
        from lightmoe_cli.bundle.build import BuildOptions, build_bundle
        from lightmoe_cli.profile.artifact import load_profile

        root = made["root"]
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model, tok = AutoModelForCausalLM.from_pretrained(root / "model"), AutoTokenizer.from_pretrained(root / "model")
        lru = build_bundle(load_profile(made["profile"]), model, tok, str(root / "model"), tmp_path / "lru",
                           BuildOptions(policy="lru", fraction=0.5))
        args, message = ["--bundle", str(lru.path), "--out", str(tmp_path / "o")], "loads experts at run time"
    one_line_error(RUNNER.invoke(app, ["export", *args]), message)
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.json").exists()


def test_an_empty_demo_task_file_is_named(tmp_path, monkeypatch):
    import lightmoe_cli.evaluation.run as run

    (tmp_path / "items" / "ppl").mkdir(parents=True)
    (tmp_path / "items" / "arithmetic.jsonl").write_text("")
    (tmp_path / "items" / "ppl" / "arithmetic.jsonl").write_text('{"text": "1"}\n')
    monkeypatch.setattr(run, "ITEMS_DIR", tmp_path / "items")
    (tmp_path / "bundle").mkdir()
    res = RUNNER.invoke(app, ["eval", "--bundle", str(tmp_path / "bundle"), "--tasks", "demo", "--out",
                              str(tmp_path / "e")])
    one_line_error(res, "arithmetic.jsonl is empty")


def test_no_pickle_in_the_package():
    root = Path(__file__).resolve().parent.parent / "lightmoe_cli"
    for p in root.rglob("*.py"):
        text = p.read_text()
        assert "torch.load(" not in text and "import pickle" not in text, p


def test_a_second_writer_of_the_same_output_is_refused(made, pristine, tmp_path):
    import fcntl

    out = tmp_path / "b"
    with (tmp_path / ".b.lock").open("a+") as lock:  # another process holds the output
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        res = RUNNER.invoke(app, ["build-bundle", "--profile", str(made["profile"]), "--out", str(out)])
        one_line_error(res, "another lightmoe process is writing")
    assert not out.exists()
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(made["profile"]), "--out", str(out)])
    assert res.exit_code == 0, res.output


# ---- signals and concurrent processes: real subprocesses ----------------------------------------------------
def _cli(*args: str) -> subprocess.Popen:
    code = "from lightmoe_cli.cli import app; app()"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "120"}
    # a shell's background job starts with SIGINT ignored, and Python then never installs its handler: restore
    # the default, as a terminal's foreground process has it
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 120) -> None:
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process ended early: {proc.stdout.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out")
        time.sleep(0.05)


def _interruptible_profile(made, tmp_path: Path) -> tuple[list[str], Path, str, subprocess.Popen]:
    """A six-task profile over an earlier profile at the same path, started and waited for until its first
    task is saved: (its arguments, the output, the output's digest before, the running process)."""
    root = made["root"]
    out = tmp_path / "p"
    shutil.copytree(made["profile"], out)  # an earlier profile at the same path must survive
    recipe = tmp_path / "r.yaml"
    data = root / "corpus" / "arithmetic" / "train.jsonl"
    recipe.write_text("max_tokens: 4000\ntasks:\n" + "".join(
        f"  - {{name: t{i}, source: {{type: jsonl, path: {data}}}}}\n" for i in range(6)))
    args = ["profile", "--model", str(root / "model"), "--tasks", str(recipe), "--out", str(out),
            "--batch-size", "2", "--seq-len", "32", "--threads", "1"]
    before = folder_digest(out)
    proc = _cli(*args)
    _wait_for(lambda: (tmp_path / "p.partial" / "stats" / "t0.safetensors").exists(), proc)
    return args, out, before, proc


def _resume_finds_the_first_task(args: list[str]) -> None:
    done = _cli(*args, "--resume")  # the lock of an interrupted or killed run is free again
    text = done.communicate(timeout=300)[0]
    assert done.returncode == 0 and "resumed: task t0 already profiled" in text, text


def test_sigint_mid_profile_keeps_finished_tasks_and_says_how_to_continue(made, pristine, tmp_path):
    args, out, before, proc = _interruptible_profile(made, tmp_path)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "--resume" in text and "p.partial" in " ".join(text.split())
    assert folder_digest(out) == before
    _resume_finds_the_first_task(args)


def test_sigkill_mid_profile_keeps_the_earlier_profile_and_resume_works(made, pristine, tmp_path):
    args, out, before, proc = _interruptible_profile(made, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    assert folder_digest(out) == before
    _resume_finds_the_first_task(args)


def test_sigint_mid_build_says_no_bundle_was_written(made, pristine, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(made["bundle"], out)
    before = folder_digest(out)
    proc = _cli("build-bundle", "--profile", str(made["profile"]), "--out", str(out), "--policy", "prune")
    t0 = time.time()
    while not any(tmp_path.glob("b.tmp-*")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert "Traceback" not in text, text
    if proc.returncode == 130:
        assert "no bundle was written" in text and folder_digest(out) == before
    else:  # the build finished before the signal arrived
        assert proc.returncode == 0, text


def test_sigkill_mid_build_leaves_a_complete_bundle_and_the_next_build_cleans_up(made, pristine, tmp_path):
    """Killed while writing, a build leaves the earlier bundle (or, if it had already swapped in, the new one)
    complete and verified, never half of one; its temp folder is removed by the next writer."""
    from lightmoe_cli.bundle.artifact import load_bundle

    out = tmp_path / "b"
    shutil.copytree(made["bundle"], out)
    before = folder_digest(out)
    proc = _cli("build-bundle", "--profile", str(made["profile"]), "--out", str(out), "--policy", "prune")
    t0 = time.time()
    while not any(tmp_path.glob("b.tmp-*")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.001)
    proc.kill()
    proc.wait(timeout=30)
    policy = load_bundle(out).policy  # complete and verified either way
    assert (folder_digest(out) == before) == (policy == "task-aware")
    stale = tmp_path / "b.tmp-4242-dead00"  # what a writer killed earlier leaves behind
    (stale / "experts").mkdir(parents=True, exist_ok=True)
    (stale / "experts" / "layer_0.safetensors").write_bytes(b"half")
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(made["profile"]), "--out", str(out),
                              "--policy", "prune"])
    assert res.exit_code == 0, res.output
    assert load_bundle(out).policy == "prune" and not list(tmp_path.glob("b.tmp-*"))


def test_two_builds_started_together_never_crash_or_mix(made, pristine, tmp_path):
    from lightmoe_cli.bundle.artifact import load_bundle

    out = tmp_path / "b"
    procs = [_cli("build-bundle", "--profile", str(made["profile"]), "--out", str(out), "--policy", p)
             for p in ("prune", "task-aware")]
    results = [(p.wait(timeout=300), p.stdout.read()) for p in procs]
    for code, text in results:
        assert "Traceback" not in text, text
        assert code == 0 or "another lightmoe process is writing" in text, text
    assert any(code == 0 for code, _ in results)
    assert load_bundle(out).policy in ("prune", "task-aware")  # one complete bundle, verified


# ---- outputs never destroy what lightmoe did not write; every numeric option bounded; checks before work -------
def _digest(path: Path) -> str | None:
    """sha256 of a file, or `folder_digest` of a folder; None when nothing is there."""
    path = Path(path)
    if path.is_dir():
        return folder_digest(path)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture(scope="module")
def io(made, tmp_path_factory):
    """Inputs of every writing command on the tiny model: a traced profile (router inputs), a predictor trained
    on it, a static bundle with a uniform activation budget (top-k 1 of 2), a recipe and a prompt file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lightmoe_cli.bundle.build import BuildOptions, build_bundle
    from lightmoe_cli.predict.data import examples_from_traces, load_profile_traces
    from lightmoe_cli.predict.model import save_predictor
    from lightmoe_cli.predict.train import TrainSettings, train_predictor
    from lightmoe_cli.profile.artifact import load_profile
    from lightmoe_cli.profile.run import ProfileSettings, run_profile
    from lightmoe_cli.recipes import load_recipe

    root = made["root"]
    work = tmp_path_factory.mktemp("io")
    model, tok = AutoModelForCausalLM.from_pretrained(root / "model"), AutoTokenizer.from_pretrained(root / "model")
    traced = run_profile(model, tok, str(root / "model"), load_recipe(root / "calib.yaml"), work / "traced",
                         ProfileSettings(batch_size=4, seq_len=32, sample_tokens=64, save_traces=True,
                                         save_router_inputs=True))
    data = examples_from_traces(load_profile_traces(load_profile(traced.path)), traced.layer_indices)
    pm = train_predictor(data, 8, 2, TrainSettings(epochs=1, d_model=8, layers=1))
    save_predictor(pm, work / "predictor", traced.model, {"epochs": 1})
    static = build_bundle(load_profile(made["profile"]), model, tok, str(root / "model"), work / "static",
                          BuildOptions(policy="prune", fraction=0.5, params={"uniform": True}, activation="topk",
                                       active=0.5))
    (work / "prompts.jsonl").write_text('{"prompt": "12 + 7 = "}\n')
    (work / "tasks").mkdir()
    (work / "tasks" / "t.yaml").write_text("task: mine\n")
    return {**made, "traced": traced.path, "predictor": work / "predictor", "static": static.path,
            "prompts": work / "prompts.jsonl", "include": work / "tasks", "recipe": root / "calib.yaml",
            "data": root / "corpus" / "arithmetic" / "train.jsonl", "model": root / "model", "work": work}


def _inputs(io: dict) -> dict[str, str | None]:
    keys = ("profile", "bundle", "other_bundle", "traced", "predictor", "static", "prompts", "include", "recipe",
            "data", "model")
    return {k: _digest(io[k]) for k in keys}


def refused(res, message: str, io: dict, before: dict, code: int = 1) -> None:
    """One error line naming the fix, no traceback, and every input byte-identical."""
    one_line_error(res, message, code)
    assert _inputs(io) == before


# writing command -> (its arguments but --out, the flag its output goes to, its inputs: name -> (flag, path key))
WRITERS = {
    "profile": (lambda io: ["profile", "--model", str(io["model"]), "--tasks", str(io["recipe"]), "--batch-size", "4",
                            "--seq-len", "32", "--threads", "1"], "--out",
                {"model": "model", "recipe": "recipe", "data": "data"}),
    "build-bundle": (lambda io: ["build-bundle", "--profile", str(io["profile"]), "--model", str(io["model"])],
                     "--out", {"profile": "profile", "model": "model"}),
    "build-bundle-predict": (lambda io: ["build-bundle", "--profile", str(io["profile"]), "--policy", "predict",
                                         "--predictor", str(io["predictor"])], "--out", {"predictor": "predictor"}),
    "build-bundle-replace": (lambda io: ["build-bundle", "--profile", str(io["profile"]), "--policy", "replace",
                                         "--recover-tasks", str(io["recipe"])], "--out", {"recipe": "recipe"}),
    "eval": (lambda io: ["eval", "--bundle", str(io["bundle"]), "--include-path", str(io["include"]), "--tasks",
                         "demo_arithmetic", "--limit", "2"], "--out", {"bundle": "bundle", "include": "include"}),
    "simulate": (lambda io: ["simulate", "--heldout", str(io["traced"]), "--profile", str(io["profile"]),
                             "--predictor", str(io["predictor"])], "--out",
                 {"heldout": "traced", "profile": "profile", "predictor": "predictor"}),
    "predict-train": (lambda io: ["predict", "train", "--profile", str(io["traced"]), "--heldout",
                                  str(io["profile"]), "--epochs", "1", "--d-model", "8"], "--out",
                      {"profile": "traced", "heldout": "profile"}),
    "export-hf": (lambda io: ["export", "--bundle", str(io["static"]), "--format", "hf"], "--out",
                  {"bundle": "static"}),
    "export-gguf": (lambda io: ["export", "--bundle", str(io["static"]), "--format", "gguf", "--converter",
                                str(io["include"])], "--out", {"bundle": "static", "converter": "include"}),
    "export-llamacpp-ot": (lambda io: ["export", "--bundle", str(io["static"]), "--format", "llamacpp-ot",
                                       "--gpu-memory", "1MiB"], "--out", {"bundle": "static"}),
    "export-vllm-profile": (lambda io: ["export", "--bundle", str(io["static"]), "--format", "vllm-profile"],
                            "--out", {"bundle": "static"}),
    "run": (lambda io: ["run", "--bundle", str(io["bundle"]), "--input", str(io["prompts"]), "--max-new-tokens",
                        "1"], "--stats-json", {"bundle": "bundle", "input": "prompts"}),
}
ONE_FILE = {"export-gguf", "export-llamacpp-ot", "export-vllm-profile", "run"}
FOLDER_WRITERS = ["profile", "build-bundle", "eval", "simulate", "predict-train", "export-hf"]
OVERLAPS = [(w, name, rel) for w, (_, _, inputs) in WRITERS.items() for name in inputs
            for rel in ("is", "lies inside", "contains")]


@pytest.mark.parametrize("writer", list(WRITERS))
def test_a_folder_holding_a_foreign_file_is_never_an_output(io, pristine, tmp_path, writer):
    """Every writing command pointed at a folder with a file of the user's in it: refused in one line (naming
    --force, or that a file output cannot be a folder), the file and every input intact."""
    args, flag, _ = WRITERS[writer]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own notes")
    before = _inputs(io)
    res = RUNNER.invoke(app, [*args(io), flag, str(mine)])
    refused(res, "is a folder, and a" if writer in ONE_FILE else "pass --force to replace it", io, before)
    assert (mine / "notes.txt").read_text() == "my own notes" and sorted(p.name for p in mine.iterdir()) == \
        ["notes.txt"]
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob("*.old*"))


@pytest.mark.parametrize("writer", sorted(ONE_FILE))
def test_a_file_of_the_users_is_never_replaced_by_a_file_output(io, pristine, tmp_path, writer):
    args, flag, _ = WRITERS[writer]
    mine = tmp_path / "mine.json"
    mine.write_text('{"mine": true}')
    before = _inputs(io)
    refused(RUNNER.invoke(app, [*args(io), flag, str(mine)]), "pass --force to replace it", io, before)
    assert mine.read_text() == '{"mine": true}' and not (tmp_path / "mine.json.old").exists()


@pytest.mark.parametrize("writer", FOLDER_WRITERS)
def test_a_regular_file_is_never_renamed_by_a_folder_output(io, pristine, tmp_path, writer):
    args, flag, _ = WRITERS[writer]
    mine = tmp_path / "mine"
    mine.write_text("my file")
    before = _inputs(io)
    refused(RUNNER.invoke(app, [*args(io), flag, str(mine)]), "is a file, and a", io, before)
    assert mine.read_text() == "my file" and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


@pytest.mark.parametrize("writer, name, rel", OVERLAPS, ids=[f"{w}-{n}-{r.replace(' ', '-')}" for w, n, r in OVERLAPS])
def test_an_output_never_overlaps_an_input(io, pristine, tmp_path, writer, name, rel):
    """Each writing command's output pointed at each of its inputs (the input itself, a path inside it, a folder
    holding it): refused whatever --force says, the input intact."""
    args, flag, inputs = WRITERS[writer]
    src = Path(io[inputs[name]])
    out = {"is": src, "lies inside": src / "out", "contains": src.parent}[rel]
    before = _inputs(io)
    refused(RUNNER.invoke(app, [*args(io), flag, str(out), "--force"]), f"{rel} ", io, before)


def test_an_output_through_a_symlink_to_an_input_is_refused(io, pristine, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(io["profile"], target_is_directory=True)
    before = _inputs(io)
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(io["profile"]), "--out", str(link / "b")])
    refused(res, "lies inside", io, before)
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(io["profile"]), "--out", str(link), "--force"])
    refused(res, "--out " + str(link) + " is --profile", io, before)


def test_force_replaces_a_foreign_folder_and_writers_leave_no_lock(io, pristine, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("replace me")
    res = RUNNER.invoke(app, ["export", "--bundle", str(io["static"]), "--format", "vllm-profile", "--out",
                              str(tmp_path / "v.json")])
    assert res.exit_code == 0, res.output
    res = RUNNER.invoke(app, ["export", "--bundle", str(io["static"]), "--format", "vllm-profile", "--out",
                              str(tmp_path / "v.json")])  # its own kind: replaced without --force
    assert res.exit_code == 0, res.output
    res = RUNNER.invoke(app, ["build-bundle", "--profile", str(io["profile"]), "--policy", "prune", "--out",
                              str(mine), "--force"])
    assert res.exit_code == 0, res.output
    assert not (mine / "notes.txt").exists() and (mine / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "v.json"]  # no .lock, .old or .tmp left


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _issue_cases(io: dict, tmp: Path):
    """(id, arguments, the message) of every other bad input: exports that would drop a bundle's meaning, an
    unverified predictor, the last tracebacks, silent accepts, checks that came after the work."""
    b, st, traced = str(io["bundle"]), str(io["static"]), str(io["traced"])
    ot = ["export", "--bundle", st, "--format", "llamacpp-ot", "--gpu-memory", "1MiB", "--out", str(tmp / "o.json")]

    def copy(key: str, name: str) -> Path:
        shutil.copytree(io[key], tmp / name)
        return tmp / name

    def ragged() -> str:  # the static bundle with a per-layer k (1 and 2)
        c = copy("static", "ragged")
        _edit_json(c / "manifest.json", lambda m: m["activation"]["k"].update(
            {k: 1 + i % 2 for i, k in enumerate(sorted(m["activation"]["k"]))}))
        return str(c)

    def predictor(edit) -> str:
        c = copy("predictor", "pred")
        edit(c)
        return str(c)

    def truncate(c: Path) -> None:
        f = c / "predictor.safetensors"
        f.write_bytes(f.read_bytes()[:-100])

    def overwrite(c: Path) -> None:
        f = c / "predictor.safetensors"
        data = bytearray(f.read_bytes())
        data[-8:] = b"\x00" * 8
        f.write_bytes(bytes(data))

    def manifest(edit) -> str:
        c = copy("bundle", "edited")
        _edit_json(c / "manifest.json", edit)
        return str(c)

    def unknown_arch() -> str:  # a model llama.cpp's converter names no architecture for
        c = copy("static", "mystery")
        _edit_json(c / "manifest.json", lambda m: m["model"].update(architecture="MysteryMoeForCausalLM"))
        return str(c)

    def a_file(name: str) -> str:
        (tmp / name).write_text("mine")
        return str(tmp / name)

    sim = ["simulate", "--heldout", traced, "--profile", str(io["profile"])]
    return [
        # exports carry every part of the plan they can express, and refuse by name what they cannot
        ("export-ot-per-layer-budget", lambda: [*ot[:2], ragged(), *ot[3:]],
         "gives layers different k ([1, 2]), which llama.cpp's experts-per-token override"),
        ("export-hf-per-layer-budget", lambda: ["export", "--bundle", ragged(), "--out", str(tmp / "h")],
         "which a transformers config"),
        ("export-task-and-static", lambda: ["export", "--bundle", b, "--task", "arithmetic", "--static", "--out",
                                            str(tmp / "h")], "--static and --task cannot be given together"),
        ("export-ot-option-with-hf", lambda: ["export", "--bundle", st, "--gpu-memory", "1GiB", "--out",
                                              str(tmp / "h")], "--gpu-memory only applies with --format llamacpp-ot"),
        ("export-outtype-with-vllm", lambda: ["export", "--bundle", st, "--format", "vllm-profile", "--outtype",
                                              "f16", "--out", str(tmp / "v.json")],
         "--outtype only applies with --format gguf"),
        ("export-unknown-arch", lambda: [*ot[:2], unknown_arch(), *ot[3:]], "does not know the GGUF architecture"),
        # the predictor is an artifact: manifest, sha256 per file, fingerprint, verified on load
        ("predictor-truncated", lambda: [*sim, "--predictor", predictor(truncate)], "is truncated or changed"),
        ("predictor-overwritten", lambda: [*sim, "--predictor", predictor(overwrite)], "sha256 mismatch"),
        ("predictor-other-model", lambda: [*sim, "--predictor", predictor(lambda c: _edit_json(
            c / "manifest.json", lambda m: m["model"].update(fingerprint="0" * 16)))], "belongs to model fingerprint"),
        ("predictor-no-manifest", lambda: [*sim, "--predictor", predictor(lambda c: (c / "manifest.json").unlink())],
         "not a lightmoe predictor"),
        ("bundle-predictor-truncated", lambda: ["build-bundle", "--profile", str(io["profile"]), "--policy",
                                                "predict", "--predictor", predictor(truncate), "--out",
                                                str(tmp / "pb")], "is truncated or changed"),
        # tracebacks that were
        ("weight-bits-nan", lambda: [*ot, "--weight-bits", "nan"], "--weight-bits must be a finite number"),
        ("weight-bits-inf", lambda: [*ot, "--weight-bits", "inf"], "--weight-bits must be a finite number"),
        ("manifest-activation-k-0", lambda: ["run", "--bundle", manifest(lambda m: m.update(activation={
            "rule": "topk", "active": 0.5, "budget": 2, "k": {str(lp["layer_index"]): 0 for lp in m["layers"]}})),
            "--prompt", "x"], "is not 1..top-k"),
        ("predict-threads-0", lambda: ["predict", "train", "--profile", traced, "--threads", "0", "--out",
                                       str(tmp / "p")], "--threads must be at least 1"),
        ("predict-out-is-a-file", lambda: ["predict", "train", "--profile", traced, "--out", a_file("p")],
         "is a file, and a predictor is a folder"),
        ("simulate-out-is-a-file", lambda: [*sim, "--out", a_file("s")], "is a file, and a simulation is a folder"),
        ("vllm-out-is-a-folder", lambda: ["export", "--bundle", st, "--format", "vllm-profile", "--out", str(tmp)],
         "is a folder, and a expert-selection is one file"),
        ("vllm-out-empty", lambda: ["export", "--bundle", st, "--format", "vllm-profile", "--out", ""],
         "names no file"),
        ("max-memory-gpu-on-cpu", lambda: ["profile", "--model", str(io["model"]), "--device-map", "auto",
                                           "--max-memory", "0=1GiB", "--out", str(tmp / "p")],
         "--max-memory names GPU 0, but torch sees 0 GPU(s)"),
        ("max-memory-size-unreadable", lambda: ["profile", "--model", str(io["model"]), "--device-map", "auto",
                                                "--max-memory", "cpu=lots", "--out", str(tmp / "p")],
         "must look like cpu=200GiB"),
        # silent accepts
        ("active-without-activation", lambda: ["build-bundle", "--profile", str(io["profile"]), "--active", "0.5",
                                               "--out", str(tmp / "o")], "--active only applies with --activation"),
        ("replace-rank-0-with-recovery", lambda: ["build-bundle", "--profile", str(io["profile"]), "--policy",
                                                  "replace", "--rank", "0", "--recover-steps", "50", "--out",
                                                  str(tmp / "o")], "--recover-steps only applies with --rank above 0"),
        ("prefetch-width-above-experts", lambda: [*sim, "--predictor", str(io["predictor"]), "--prefetch-width", "9",
                                                  "--out", str(tmp / "s")],
         "--prefetch-width 9 is above the model's 8"),
        ("io-bandwidth-0", lambda: ["run", "--bundle", b, "--prompt", "x", "--io-bandwidth", "0"],
         "--io-bandwidth 0 must be above 0"),
        ("manifest-unknown-policy", lambda: ["run", "--bundle", manifest(lambda m: m.update(policy="magic")),
                                             "--prompt", "x"],
         "names policy 'magic', which this lightmoe does not know"),
        ("weight-bits-0", lambda: [*ot, "--weight-bits", "0"], "--weight-bits must be greater than 0"),
        ("weight-bits-negative", lambda: [*ot, "--weight-bits", "-4"], "--weight-bits must be greater than 0"),
        ("shards-above-tokens", lambda: ["profile", "--model", str(io["model"]), "--tasks", str(io["recipe"]),
                                         "--max-tokens", "64", "--shards", "100000", "--out", str(tmp / "p")],
         "--shards 100000 is more than the 64 tokens of task"),
        ("heldout-share-with-heldout", lambda: ["predict", "train", "--profile", traced, "--heldout", traced,
                                                "--heldout-share", "0.5", "--out", str(tmp / "p")],
         "--heldout-share and --heldout cannot be given together"),
        ("eval-active-without-activations", lambda: ["eval", "--active", "0.5", "--out", str(tmp / "e")],
         "--active only applies with --activations"),
        ("eval-blocks-without-task-shift", lambda: ["eval", "--no-task-shift", "--block-requests", "4", "--out",
                                                    str(tmp / "e")], "--block-requests only applies with --task-shift"),
        ("manager-loads-unmanaged-bundle", lambda: ["run", "--bundle", st, "--prompt", "x", "--manager-loads",
                                                    "background"], "this prune bundle has no manager"),
        ("manager-loads-with-no-manager", lambda: ["run", "--bundle", b, "--prompt", "x", "--manager-loads",
                                                   "background", "--no-manager"], "cannot be given together"),
        ("manager-loads-unknown", lambda: ["run", "--bundle", b, "--prompt", "x", "--manager-loads", "eager"],
         "--manager-loads must be one of blocking, background"),
        ("offload-folder-without-device-map", lambda: ["profile", "--model", str(io["model"]), "--offload-folder",
                                                       str(tmp / "off"), "--out", str(tmp / "p")],
         "--offload-folder only applies with --device-map"),
        # checks that came after the work: now before any model loads (loading would fail the test)
        ("per-token-rule-with-lru", lambda: ["build-bundle", "--profile", str(io["profile"]), "--policy", "lru",
                                             "--activation", "naee", "--active", "0.5", "--out", str(tmp / "o")],
         "--activation naee drops picks per token, which on-demand loading (--policy lru) does not support"),
        ("per-token-rule-with-replace", lambda: ["build-bundle", "--profile", str(io["profile"]), "--policy",
                                                 "replace", "--activation", "alloc-t", "--active", "0.5", "--out",
                                                 str(tmp / "o")], "which expert replacing (--policy replace)"),
        ("eval-unknown-task", lambda: ["eval", "--tasks", "klingon", "--out", str(tmp / "e")],
         "unknown task(s) klingon"),
        ("eval-unknown-demo-task", lambda: ["eval", "--tasks", "demo,demo_klingon", "--out", str(tmp / "e")],
         "unknown task demo_klingon"),
        # papercuts
        ("predict-no-traces-hint", lambda: ["predict", "train", "--profile", str(io["profile"]), "--out",
                                            str(tmp / "p")], "profile with `lightmoe profile --save-router-inputs`"),
        ("predict-epochs-0", lambda: ["predict", "train", "--profile", traced, "--epochs", "0", "--out",
                                      str(tmp / "p")], "--epochs must be at least 1"),
        ("predict-d-model-6", lambda: ["predict", "train", "--profile", traced, "--d-model", "6", "--out",
                                       str(tmp / "p")], "--d-model must be a multiple of 4"),
    ]


ISSUE_CASES = [c[0] for c in _issue_cases({k: Path("/x") for k in ("bundle", "static", "traced", "profile")},
                                          Path("/tmp"))]


@pytest.mark.parametrize("case", ISSUE_CASES)
def test_bad_inputs_are_one_line_before_any_work(io, pristine, tmp_path, monkeypatch, case):
    import lightmoe_cli.loading as loading
    import lightmoe_cli.predict.train as train

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the refusal")

    monkeypatch.setattr(loading, "load_model_and_tokenizer", no_model)
    monkeypatch.setattr(train, "train_predictor", no_training)
    argv, message = next((a, m) for c, a, m in _issue_cases(io, tmp_path) if c == case)
    before = _inputs(io)
    refused(RUNNER.invoke(app, argv()), message, io, before)
    assert not list(tmp_path.glob(".*.lock"))


@pytest.mark.parametrize("case", ["missing", "corrupt", "unknown-arg", "unknown-task"])
def test_lm_eval_with_a_bad_bundle_or_argument_is_one_line(io, pristine, tmp_path, case):
    """lm-eval's own command line (a real process: lm-eval installs its own logging): a missing or corrupt
    bundle, a model argument the lightmoe model does not take, a task lm-eval does not know."""
    corrupt = tmp_path / "corrupt"
    shutil.copytree(io["bundle"], corrupt)
    (corrupt / "manifest.json").write_text("{")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "probe.yaml").write_text(
        "task: lightmoe_probe\ndataset_path: json\noutput_type: loglikelihood\ntest_split: train\n"
        "doc_to_text: '{{text}}'\ndoc_to_target: '{{text}}'\n")
    args = {"missing": f"bundle={tmp_path / 'nope'}", "corrupt": f"bundle={corrupt}",
            "unknown-arg": f"bundle={io['bundle']},temperature=2", "unknown-task": f"bundle={io['bundle']}"}[case]
    message = {"missing": "not a lightmoe bundle", "corrupt": "manifest.json is corrupt",
               "unknown-arg": "unknown lightmoe model argument(s) temperature",
               "unknown-task": "Tasks not found: klingon"}[case]
    before = _inputs(io)
    proc = _cli("lm-eval", "--model", "lightmoe", "--model_args", args, "--tasks",
                "klingon" if case == "unknown-task" else "lightmoe_probe", "--include_path", str(tmp_path / "tasks"),
                "--limit", "1")
    text = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1, text
    assert "Traceback" not in text, text
    assert [ln for ln in text.splitlines() if ln.startswith("error:")] == [next(
        ln for ln in text.splitlines() if ln.startswith("error:"))], text
    assert message in " ".join(text.split()), text
    assert _inputs(io) == before


def test_papercuts_in_help(io):
    """[ray] survives rich markup; a parameter several policies take shows each one's default."""
    res = RUNNER.invoke(app, ["profile", "--help"], env={"COLUMNS": "300"})
    assert "pip install 'lightmoe[ray]'" in res.output
    res = RUNNER.invoke(app, ["build-bundle", "--help"], env={"COLUMNS": "300"})
    text = " ".join(res.output.replace("│", " ").split())
    assert "(default 4 for prune-lora, 8 for replace)" in text
    assert "(default output for task-aware, output for merge, weight for replace)" in text


def test_default_outputs_of_user_runs_go_to_the_untracked_work_folder(io):
    """eval, simulate and predict train never write into the shipped reports or into their input profile."""
    from lightmoe_cli.paths import REPO_ROOT, RUNS_DIR, default_cache_dir, default_eval_dir
    from lightmoe_cli.predict.request import PredictTrainRequest

    assert "runs/" in (REPO_ROOT / ".gitignore").read_text().splitlines()
    for path in (default_eval_dir("demo-moe"), default_eval_dir(None), default_cache_dir("demo-moe"),
                 PredictTrainRequest(profile=io["traced"]).folder):
        assert path.is_relative_to(RUNS_DIR), path
    assert not PredictTrainRequest(profile=io["traced"]).folder.is_relative_to(io["traced"])


def test_sigint_mid_export_says_nothing_was_written(io, pristine, tmp_path):
    out = tmp_path / "hf"
    proc = _cli("export", "--bundle", str(io["static"]), "--format", "hf", "--out", str(out))
    t0 = time.time()
    while not any(tmp_path.glob("hf.tmp-*")) and proc.poll() is None and time.time() - t0 < 120:
        time.sleep(0.001)
    proc.send_signal(signal.SIGINT)
    text = proc.communicate(timeout=60)[0]
    assert "Traceback" not in text, text
    if proc.returncode == 130:
        assert "interrupted: nothing was written" in text and not out.exists()
    else:  # the export finished before the signal arrived
        assert proc.returncode == 0, text
    assert not list(tmp_path.glob(".*.lock")) and not list(tmp_path.glob("hf.tmp-*"))
