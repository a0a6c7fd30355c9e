"""Atomic writes of files and artifact folders (shared by every command that writes output).

Why: an interrupted run must leave either the old output or the new one, never half of it. Files are written
to `<name>.tmp` beside the target and renamed; folders are built under `<name>.tmp`/`.partial` and swapped in.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError


def atomic_write(path: Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write `data` (text, bytes, or a writer called with the temp path) to `path` via a temp file + rename.

    The parent folder must exist: a missing folder is the caller's error to report, not ours to invent.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
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


def swap_in_dir(tmp: Path, out: Path) -> None:
    """Replace folder `out` by the finished folder `tmp` (same parent), so readers see old or new, never half."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def file_entries(folder: Path) -> dict[str, dict]:
    """sha256 and size of every file under `folder` (relative POSIX paths), for an artifact's manifest."""
    return {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != "manifest.json"}



@contextmanager
def exclusive_output(out: Path, work_suffix: str | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on output folder `out` and yield the folder to build it in.

    Why: two processes writing the same output would share one temp folder and one of them would crash, or both
    would report success and the last one win silently. The lock (`.<name>.lock` beside `out`, released by the
    kernel if the process dies) refuses a second writer in one line. The work folder is unique per process
    (`<out>.tmp-<pid>-<random>`), or `<out><work_suffix>` for resumable work (the profile's `.partial`); stale
    temp folders of dead writers are removed once the lock is ours."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_file = (out.parent / f".{out.name}.lock").open("a+")
    try:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LightMoEError(f"another lightmoe process is writing {out} right now: wait for it to finish or "
                                "write elsewhere with --out") from None
        for stale in out.parent.glob(f"{out.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        work = out.with_name(out.name + work_suffix) if work_suffix else \
            out.with_name(f"{out.name}.tmp-{os.getpid()}-{secrets.token_hex(3)}")
        try:
            yield work
        finally:
            if not work_suffix:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        lock_file.close()


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
