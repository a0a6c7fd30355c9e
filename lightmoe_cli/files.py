"""Atomic writes of output folders and reading of self-describing manifests (shared by every artifact)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def swap_in_dir(tmp: Path, out: Path) -> None:
    """Replace folder `out` by the finished folder `tmp` (same parent), so readers see old or new, never half."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def read_manifest(path: Path, kind: str, schema: int, error: type[Exception], what: str, fix: str,
                  missing_hint: str = "") -> dict:
    """manifest.json of an artifact folder, checked for kind and schema; `error(message)` names the fix."""
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise error(f"{path} is not a lightmoe {what} (no manifest.json){missing_hint}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise error(f"{mpath} is corrupt ({e.msg}): {fix}") from e
    if manifest.get("kind") != f"lightmoe-{what}":
        raise error(f"{path} is not a lightmoe {what} (manifest kind {manifest.get('kind')!r})")
    if manifest.get("schema_version") != schema:
        raise error(f"{path} has {what} schema {manifest.get('schema_version')}, this lightmoe reads {schema}: "
                    f"{fix}")
    return manifest
