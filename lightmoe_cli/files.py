"""Atomic writes and the write rules every command's output follows (the one place they live).

Why atomic: an interrupted run must leave either the old output or the new one, never half of it. Files are
written to `<name>.tmp` beside the target and renamed; folders are built under `<name>.tmp-*`/`.partial` and
swapped in.

Why write rules: an output must never destroy what lightmoe did not write. `check_output` is the rule, used by
every writer before any work (through the request records, `options.check_bounds`) and again at the moment of
replacing (`swap_in_dir`, `write_output`):
- an existing output is replaced only if it is a lightmoe artifact of the same kind (its manifest says so; a
  single file says so in its JSON or GGUF metadata); anything else is refused in one line naming `--force`;
- an output may never lie inside, or contain, an input of the same command (resolved paths, symlinks included),
  `--force` or not;
- a folder output is never a file and a file output never a folder.
Locks (`.<name>.lock` beside an output) keep a second writer out and are removed when the writer ends.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError


def atomic_write(path: Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write `data` (text, bytes, or a writer called with the temp path) to `path` via a temp file + rename.

    The parent folder must exist: a missing folder is the caller's error to report, not ours to invent. The temp
    file (`.<name>.tmp-<pid>-<random>`) is this process's own, so no file of the user's is ever written over.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        elif isinstance(data, str):
            tmp.write_text(data)
        else:
            data(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_json(path: Path, payload: Any) -> Path:
    return atomic_write(path, json.dumps(payload, indent=1))


def save_tensors(tensors: dict, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """safetensors file written atomically (contiguous copies, so views and slices save); `metadata` goes in
    its header (artifacts record their model's fingerprint there)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous() for k, v in tensors.items()},
                                                    str(tmp), metadata=metadata))


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file's header, read without loading any tensor."""
    with Path(path).open("rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("too short for a safetensors header")
        n = int.from_bytes(head, "little")
        if n > 100_000_000:
            raise ValueError("header length out of range")
        header = json.loads(f.read(n))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def sha256_file(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def swap_in_dir(tmp: Path, out: Path, force: bool = False) -> None:
    """Replace `out` by the finished folder `tmp` (same parent), so readers see old or new, never half.

    When `tmp` says what it is (a manifest with a kind), an existing `out` must be an artifact of that kind (or an
    empty folder) unless `force`: the write rule checked again at the moment of replacing, whatever was checked
    before the work began. The old output is moved to a name of this process's own, never to one a user could
    have (`NAME.old` of the user's stays untouched)."""
    out = Path(out)
    kind = output_kind(tmp)
    if kind is not None and (out.exists() or out.is_symlink()):
        check_output(out, kind, force=force)
    old = out.with_name(f".{out.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
    if out.exists() or out.is_symlink():
        os.replace(out, old)
    os.replace(tmp, out)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file under `folder` (relative POSIX paths) but its own manifest.json, for an
    artifact's manifest (an artifact inside it, such as a bundle's predictor, has its manifest hashed too)."""
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).rglob("*"))
            if p.is_file() and p.relative_to(folder).as_posix() != "manifest.json"}



# ---- the write rules ---------------------------------------------------------------------------------------

# the files in which a folder artifact says what it is, and the kind a file without a "kind" field means (an hf
# export's selection file predates the field)
KIND_FILES = {"manifest.json": None, "lightmoe_selection.json": "lightmoe-hf-export"}
GGUF_KIND_KEY = "lightmoe.kind"  # a GGUF written by lightmoe says its kind in its metadata
_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}


def gguf_metadata(path: Path, wanted: set[str] | None = None) -> dict[str, Any]:
    """A GGUF file's metadata, key -> value (scalars and strings; arrays are skipped), read from its header
    without loading a tensor; with `wanted`, reading stops once those keys are found."""
    import struct

    out: dict[str, Any] = {}
    with Path(path).open("rb") as f:
        def read(n: int) -> bytes:
            b = f.read(n)
            if len(b) != n:
                raise ValueError("truncated GGUF header")
            return b

        def value(t: int) -> Any:
            if t in _GGUF_SCALARS:
                fmt = _GGUF_SCALARS[t]
                return struct.unpack(fmt, read(struct.calcsize(fmt)))[0]
            if t == 8:  # string: u64 length + bytes
                (n,) = struct.unpack("<Q", read(8))
                if n > 1 << 30:
                    raise ValueError("GGUF string length out of range")
                return read(n).decode("utf-8", "replace")
            if t == 9:  # array: element type, u64 count, elements (skipped)
                et, n = struct.unpack("<IQ", read(12))
                if et in _GGUF_SCALARS:
                    f.seek(n * struct.calcsize(_GGUF_SCALARS[et]), 1)
                else:
                    for _ in range(n):
                        value(et)
                return None
            raise ValueError(f"unknown GGUF value type {t}")

        if read(4) != b"GGUF":
            raise ValueError("not a GGUF file")
        _version, _tensors, n_kv = struct.unpack("<IQQ", read(20))
        for _ in range(n_kv):
            key = value(8)
            (t,) = struct.unpack("<I", read(4))
            v = value(t)
            if t != 9:
                out[key] = v
            if wanted and wanted <= out.keys():
                break
    return out


def _json_kind(path: Path, default: str | None = None) -> str | None:
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("kind") or data.get("format") or default
    return kind if isinstance(kind, str) and kind.startswith("lightmoe-") else None


def output_kind(path: Path) -> str | None:
    """The kind of lightmoe artifact an existing path says it is ("lightmoe-bundle", "lightmoe-gguf", ...): a
    folder in its manifest, a JSON file in its "kind" field, a GGUF in its metadata; None for anything else."""
    path = Path(path)
    try:
        if path.is_dir():
            for name, default in KIND_FILES.items():
                if (path / name).is_file():
                    return _json_kind(path / name, default)
            return None
        if path.is_file():
            with path.open("rb") as f:
                magic = f.read(4)
            if magic == b"GGUF":
                return gguf_metadata(path, {GGUF_KIND_KEY}).get(GGUF_KIND_KEY)
            if path.stat().st_size <= 64 << 20:
                return _json_kind(path)
    except (OSError, ValueError):
        return None
    return None


def describe_kind(kind: str | None) -> str:
    return (kind or "output").removeprefix("lightmoe-")


def check_output(out: Path, kind: str, inputs: Iterable[tuple[str, Path | str | None]] = (), force: bool = False,
                 single_file: bool = False, flag: str = "--out") -> None:
    """The write rules for output `out`, a lightmoe `kind` artifact (a folder, or one file with `single_file`),
    of a command that reads `inputs` ((flag, path) pairs; paths that do not exist are skipped). One LightMoEError
    naming the fix: an overlap with an input is refused whatever `force` says; an existing output that is not of
    this kind is refused unless `force`."""
    what = describe_kind(kind)
    shape = "file" if single_file else "folder"
    p = Path(out).expanduser()
    if not p.name or p.name == "..":
        raise LightMoEError(f"{flag} {str(out)!r} names no {shape}: give the {what} {shape} a name")
    target = p.resolve()
    for name, given in inputs:
        if given is None or str(given) == "":
            continue
        src = Path(given).expanduser()
        if not (src.exists() or src.is_symlink()):
            continue
        src = src.resolve()
        rel = "is" if target == src else "lies inside" if target.is_relative_to(src) else \
            "contains" if src.is_relative_to(target) else None
        if rel:
            raise LightMoEError(f"{flag} {out} {rel} {name} {given}, an input of this command: writing there would "
                                "destroy it; write elsewhere")
    if single_file and p.is_dir():
        raise LightMoEError(f"{flag} {out} is a folder, and a {what} is one file: give a file name")
    if force or not (p.exists() or p.is_symlink()):
        return
    if not single_file and not p.is_dir():
        raise LightMoEError(f"{flag} {out} is a file, and a {what} is a folder: write elsewhere, or pass --force to "
                            "replace the file")
    found = output_kind(p)
    if found == kind or (p.is_dir() and not any(p.iterdir())):
        return
    now = f"a lightmoe {describe_kind(found)}" if found else \
        f"a {'folder' if p.is_dir() else 'file'} lightmoe did not write"
    raise LightMoEError(f"{flag} {out} exists and is {now}, not a lightmoe {what}: write elsewhere, or pass --force "
                        "to replace it")


def write_output(path: Path, data: str | bytes | Callable[[Path], None], kind: str, force: bool = False,
                 flag: str = "--out") -> Path:
    """A single-file output, under its lock: the write rules checked again at the moment of writing (the file
    may have appeared since the command began), then written atomically."""
    with lock_output(Path(path)):
        check_output(path, kind, force=force, single_file=True, flag=flag)
        return atomic_write(path, data)


@contextmanager
def lock_output(out: Path) -> Iterator[None]:
    """Hold the exclusive lock on output `out`: `.<name>.lock` beside it, released by the kernel if the process
    dies, removed when the writer ends. A second writer is refused in one line.

    Why the inode check: the file is removed while still locked, so a writer that opened it just before sees
    another file at the path once it gets the lock, and takes the lock of the new one instead."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    while True:
        f = path.open("a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise LightMoEError(f"another lightmoe process is writing {out} right now: wait for it to finish or "
                                "write elsewhere with --out") from None
        try:
            mine = os.fstat(f.fileno())
            now = os.stat(path)
            if (mine.st_ino, mine.st_dev) == (now.st_ino, now.st_dev):
                break
        except FileNotFoundError:
            pass
        f.close()  # the writer that held it removed it meanwhile: lock the file now at the path
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still locked (see above)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


_OWN_TEMP = re.compile(r"\.tmp-\d+-[0-9a-f]{6}")  # what `exclusive_output` names its work folders


@contextmanager
def exclusive_output(out: Path, work_suffix: str | None = None) -> Iterator[Path]:
    """Hold the lock on output folder `out` (`lock_output`) and yield the folder to build it in.

    Why: two processes writing the same output would share one temp folder and one of them would crash, or both
    would report success and the last one win silently. The work folder is unique per process
    (`<out>.tmp-<pid>-<random>`), or `<out><work_suffix>` for resumable work (the profile's `.partial`); stale
    temp folders of dead writers (that name pattern only) are removed once the lock is ours."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with lock_output(out):
        for stale in out.parent.glob(f"{out.name}.tmp-*"):
            if _OWN_TEMP.fullmatch(stale.name[len(out.name):]):
                shutil.rmtree(stale, ignore_errors=True)
        work = out.with_name(out.name + work_suffix) if work_suffix else \
            out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            yield work
        finally:
            if not work_suffix:
                shutil.rmtree(work, ignore_errors=True)


def throttle(started: float, nbytes: int, bandwidth: float | None) -> None:
    """Sleep until `nbytes` read since `started` (time.perf_counter) took as long as they would at `bandwidth`
    bytes/s: a slow link reproduced for real. No-op without a bandwidth."""
    import time

    if bandwidth:
        left = nbytes / bandwidth - (time.perf_counter() - started)
        if left > 0:
            time.sleep(left)



def optimizer_tensors(opt) -> dict:
    """An optimizer's per-parameter state as flat tensors ("opt.{index}.{name}") for a safetensors checkpoint
    (never pickle: a loaded checkpoint cannot run code); its param_groups go in the JSON beside it."""
    import torch

    out = {}
    for idx, st in opt.state_dict()["state"].items():
        for name, v in st.items():
            out[f"opt.{idx}.{name}"] = v.detach().clone().contiguous() if torch.is_tensor(v) else torch.tensor(v)
    return out


def restore_optimizer(opt, tensors: dict, param_groups: list) -> None:
    """The inverse of `optimizer_tensors` (keys not starting with "opt." are ignored)."""
    state: dict = {"state": {}, "param_groups": param_groups}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, idx, name = k.split(".", 2)
            state["state"].setdefault(int(idx), {})[name] = v
    opt.load_state_dict(state)
