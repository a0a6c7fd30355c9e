"""Atomic writes of files and artifact folders (shared by every command that writes output).

Why: an interrupted run must leave either the old output or the new one, never half of it. Files are written
to `<name>.tmp` beside the target and renamed; folders are built under `<name>.tmp`/`.partial` and swapped in.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def save_tensors(tensors: dict, path: Path) -> Path:
    """safetensors file written atomically (contiguous copies, so views and slices save)."""
    from safetensors.torch import save_file

    return atomic_write(path, lambda tmp: save_file({k: v.detach().contiguous() for k, v in tensors.items()},
                                                    str(tmp)))


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

