"""Typed manifests: artifacts (profiles, bundles) are dataclass records read and written through one converter.

Why: a manifest read as a plain dict fails deep inside a later stage with a KeyError; a record checks every
field once, at load time, and names the file and the field that is missing or of the wrong type
(as transformers' PretrainedConfig or mergekit's config classes do). `Record.from_json` walks the dataclass's
type hints: nested records, lists, dicts (JSON keys converted to int where the hint says so), optionals, enums.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args, get_origin, get_type_hints

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import atomic_write_json, file_entries, safetensors_metadata, sha256_file, swap_in_dir

FINGERPRINT_KEY = "lightmoe_fingerprint"  # safetensors header metadata: the model an artifact file belongs to

R = TypeVar("R", bound="Record")


class ManifestError(LightMoEError):
    """A manifest field is missing or of the wrong type; the message names the file and the field."""


def _convert(value: Any, hint: Any, where: str) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return _convert(value, a, where)
            except ManifestError as e:
                errors.append(str(e))
        raise ManifestError(errors[0] if errors else f"{where}: unexpected {type(value).__name__}")
    if dataclasses.is_dataclass(hint):
        return record_from_json(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError as e:
            raise ManifestError(f"{where}: {value!r} is not one of {[m.value for m in hint]}") from e
    if origin is list:
        if not isinstance(value, list):
            raise ManifestError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(v, args[0] if args else Any, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ManifestError(f"{where}: expected an object, got {type(value).__name__}")
        kt, vt = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            try:
                key = int(k) if kt is int else k
            except ValueError as e:
                raise ManifestError(f"{where}: key {k!r} is not an integer") from e
            out[key] = _convert(v, vt, f"{where}.{k}")
        return out
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ManifestError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ManifestError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ManifestError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def _to_json(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if dataclasses.is_dataclass(value):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def record_from_json(cls: type, data: Any, where: str = "") -> Any:
    """Any dataclass from JSON, checked field by field against its type hints (pure dataclasses of the policy
    core, such as RuntimeSpec, need no base class for this)."""
    where = where or cls.__name__
    if not isinstance(data, dict):
        raise ManifestError(f"{where}: expected an object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ManifestError(f"{where}: field {f.name!r} is missing")
            continue
        kwargs[f.name] = _convert(data[f.name], hints[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def to_json(value: Any) -> Any:
    """Plain JSON of a record, dataclass, enum or container."""
    return _to_json(value)


@dataclass
class Record:
    """Base of typed JSON records: `from_json(d, where)` checks fields and types, `to_json()` is plain JSON."""

    @classmethod
    def from_json(cls: type[R], data: Any, where: str = "") -> R:
        return record_from_json(cls, data, where)

    def to_json(self) -> dict:
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}


@dataclass
class FileEntry(Record):
    sha256: str
    bytes: int


@dataclass
class ModelIdentity(Record):
    """What lets a later stage refuse an artifact made for another model."""

    name_or_path: str
    architecture: str
    model_type: str
    config_hash: str
    fingerprint: str
    moe_layers: list[int]
    num_layers: int
    num_experts: list[int]
    top_k: list[int]
    bytes_per_expert: list[int]
    parameters: int
    dtype: str
    torch: str


@dataclass
class ArtifactManifest(Record):
    """Fields every artifact manifest has. Subclasses set KIND and SCHEMA_VERSION and add their own fields."""

    KIND: ClassVar[str] = ""
    SCHEMA_VERSION: ClassVar[int] = 0
    REBUILD: ClassVar[str] = ""  # the command that rebuilds this kind of artifact

    kind: str
    schema_version: int
    created: str
    model: ModelIdentity
    versions: dict[str, str]
    files: dict[str, FileEntry] = field(default_factory=dict)

    @staticmethod
    def now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z")

    @classmethod
    def read(cls: type[R], folder: Path, missing_hint: str = "") -> R:
        """manifest.json of `folder`, checked for kind, schema and every field; one-line errors name the fix."""
        what = cls.KIND.removeprefix("lightmoe-")
        path = Path(folder) / "manifest.json"
        if not path.exists():
            raise ManifestError(f"{folder} is not a lightmoe {what} (no manifest.json){missing_hint}")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ManifestError(f"{path} is corrupt ({getattr(e, 'msg', e)}): {cls.REBUILD}") from e
        if not isinstance(data, dict) or data.get("kind") != cls.KIND:
            kind = data.get("kind") if isinstance(data, dict) else None
            raise ManifestError(f"{folder} is not a lightmoe {what} (manifest kind {kind!r})")
        if data.get("schema_version") != cls.SCHEMA_VERSION:
            raise ManifestError(f"{folder} has {what} schema {data.get('schema_version')}, this lightmoe reads "
                                f"{cls.SCHEMA_VERSION}: {cls.REBUILD}")
        try:
            return cls.from_json(data, str(path))
        except ManifestError as e:
            raise ManifestError(f"{e}: {cls.REBUILD}") from e

    def verify_files(self, folder: Path, hashes: bool = True) -> None:
        """Every listed file exists inside `folder` with its size (and sha256); paths may not leave the folder."""
        folder = Path(folder)
        what = self.KIND.removeprefix("lightmoe-")
        if not self.files:
            raise ManifestError(f"{folder}: manifest lists no files: {self.REBUILD}")
        root = folder.resolve()
        for rel, entry in self.files.items():
            p = Path(rel)
            if p.is_absolute() or ".." in p.parts or not (folder / p).resolve().is_relative_to(root):
                raise ManifestError(f"{folder}: manifest names file {rel!r} outside the {what}: {self.REBUILD}")
            f = folder / p
            if not f.exists():
                raise ManifestError(f"{folder}: file {rel} is missing: {self.REBUILD}")
            if not f.is_file() or f.is_symlink():
                raise ManifestError(f"{folder}: {rel} is not a regular file: {self.REBUILD}")
            if f.stat().st_size != entry.bytes:
                raise ManifestError(f"{folder}: file {rel} is truncated or changed (size {f.stat().st_size}, "
                                    f"expected {entry.bytes}): {self.REBUILD}")
            if hashes and sha256_file(f) != entry.sha256:
                raise ManifestError(f"{folder}: file {rel} is corrupt (sha256 mismatch): {self.REBUILD}")
            if rel.endswith(".safetensors") and not rel.startswith("traces/"):
                self._check_file_model(folder, rel, f)

    def _check_file_model(self, folder: Path, rel: str, f: Path) -> None:
        """A weights or statistics file must carry this manifest's model fingerprint in its header: a file from
        another model (or an edited fingerprint in the manifest) is refused by name."""
        try:
            mine = safetensors_metadata(f).get(FINGERPRINT_KEY)
        except (OSError, ValueError) as e:
            raise ManifestError(f"{folder}: file {rel} is not a safetensors file ({e}): {self.REBUILD}") from e
        if mine != self.model.fingerprint:
            raise ManifestError(f"{folder}: file {rel} belongs to model fingerprint {mine}, the manifest says "
                                f"{self.model.fingerprint}: {self.REBUILD}")


def write_artifact(work: Path, out: Path, manifest: ArtifactManifest, force: bool = False) -> None:
    """Finish an artifact built in folder `work`: hash its files into `manifest.files`, write manifest.json,
    swap the folder in as `out` (readers see the old artifact or the new one, never half of one; an existing
    `out` of another kind is replaced only with `force`)."""
    manifest.files = {k: FileEntry(**v) for k, v in file_entries(work).items()}
    atomic_write_json(work / "manifest.json", manifest.to_json())
    swap_in_dir(work, out, force)
