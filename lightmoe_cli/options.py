"""Options declared once: a dataclass field carries its default, help line, flag and bounds.

Why here, below everything: the request records of the library (`EvalRequest`, `ProfileRequest`, ...) are the one
place a default lives. The command line (`lightmoe_cli/cli/`) expands their fields into options, the records
check their own bounds with `check_bounds`, and shared groups (`ModelChoice`, `Threads`, `Output`) are mixin
dataclasses a request inherits, so `--model`, `--threads`, `--out` and `--force` mean the same thing in every
command. A field also says its role: `role="input"` (a path the command reads) or `role="output"` (where it
writes); `check_bounds` then applies the write rules of `lightmoe_cli.files` to every record with an output, so
no command checks its own. Nothing here imports typer or torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

from lightmoe_cli.errors import LightMoEError


def option(default: Any = MISSING, help: str = "", *, default_factory: Any = MISSING, flag: str | None = None,
           short: str | None = None, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, choices: tuple[str, ...] | None = None, cli: bool = True,
           requires: str | tuple[str, tuple[str, ...]] | None = None, excludes: str | None = None,
           role: str | None = None, split: bool = True, aliases: tuple[str, ...] = ()) -> Any:
    """A field with its command-line description. `flag` overrides --field-name; `cli=False` keeps a field out
    of the command line; `requires` names a field that must be set for this one to be given (e.g. --active
    only with --activation), or (field, values) when that field must have one of the values (e.g. --gpu-memory
    only with --format llamacpp-ot); `excludes` names a field that may not be given with this one (--static and
    --task); `role`: "input" (a path the command reads) or "output" (where it writes), for the write rules;
    `split=False`: a list of free text (prompts) is repeated, never split at commas; `aliases`: older flags
    still accepted."""
    meta = {"help": help, "flag": flag, "short": short, "minimum": minimum, "maximum": maximum, "above": above,
            "choices": choices, "cli": cli, "requires": requires, "excludes": excludes, "role": role,
            "split": split, "aliases": aliases}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None if f.default is MISSING else f.default


def _check_value(flag: str, v: Any, m: dataclasses.Field.metadata) -> None:
    if isinstance(v, float) and not math.isfinite(v):
        raise LightMoEError(f"{flag} must be a finite number, not {v}")
    if m.get("choices") and v not in m["choices"]:
        raise LightMoEError(f"{flag} must be one of {', '.join(m['choices'])}, not {v!r}")
    if m.get("minimum") is not None and v < m["minimum"]:
        raise LightMoEError(f"{flag} must be at least {m['minimum']}, not {v}")
    if m.get("maximum") is not None and v > m["maximum"]:
        raise LightMoEError(f"{flag} must be at most {m['maximum']}, not {v}")
    if m.get("above") is not None and v <= m["above"]:
        raise LightMoEError(f"{flag} must be greater than {m['above']}, not {v}")


def _given(record: Any, f: dataclasses.Field) -> bool:
    return getattr(record, f.name) != default_of(f)


def _field(record: Any, name: str) -> dataclasses.Field:
    return next(g for g in dataclasses.fields(record) if g.name == name)


def check_bounds(record: Any) -> None:
    """Every declared rule of a record's fields: bounds and choices (lists element by element; None, not given,
    passes), `requires` and `excludes`, then the write rules of its output (`check_io`). One LightMoEError
    naming the flag."""
    for f in dataclasses.fields(record):
        v, m = getattr(record, f.name), f.metadata
        if v is None or not m:
            continue
        for item in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(item, (int, float, str)) and not isinstance(item, bool):
                _check_value(flag_of(f), item, m)
        need = m.get("requires")
        if need and _given(record, f):
            name, values = (need, None) if isinstance(need, str) else need
            other = getattr(record, name)
            if values is None and other in (None, False, [], ""):
                above = " above 0" if other == 0 and other is not False else ""  # a count: --rank 0 is "none"
                raise LightMoEError(f"{flag_of(f)} only applies with {flag_of(_field(record, name))}{above}")
            if values is not None and other not in values:
                raise LightMoEError(f"{flag_of(f)} only applies with {flag_of(_field(record, name))} "
                                    f"{' or '.join(values)}, not {other}")
        if m.get("excludes") and _given(record, f) and _given(record, other := _field(record, m["excludes"])):
            raise LightMoEError(f"{flag_of(f)} and {flag_of(other)} cannot be given together: choose one")
    check_io(record)


def inputs_of(record: Any) -> list[tuple[str, Any]]:
    """(flag, path) of every field declared `role="input"` that is given (lists: each path)."""
    out = []
    for f in dataclasses.fields(record):
        if f.metadata.get("role") == "input":
            v = getattr(record, f.name)
            out += [(flag_of(f), p) for p in (v if isinstance(v, (list, tuple)) else [v]) if p is not None]
    return out


def check_io(record: Any, out: Path | None = None, extra_inputs: list[tuple[str, Any]] = ()) -> None:
    """The write rules (`lightmoe_cli.files.check_output`) for a record's output: the field declared
    `role="output"` (or `out`, a default resolved by the caller), against every declared input and
    `extra_inputs` (inputs resolved later: the model folder, a default profile). A record says what it writes
    with `output_kind()` -> (kind, single file); a record without one has nothing to check."""
    from lightmoe_cli.files import check_output

    field_ = next((f for f in dataclasses.fields(record) if f.metadata.get("role") == "output"), None)
    kind = getattr(record, "output_kind", None)
    if field_ is None or kind is None:
        return
    out = out if out is not None else getattr(record, field_.name)
    if out is None:
        return
    name, single_file = kind()
    check_output(Path(out), name, [*inputs_of(record), *extra_inputs], force=getattr(record, "force", False),
                 single_file=single_file, flag=flag_of(field_))


def split_list(values: list[str] | str | None) -> list[str]:
    """One list convention: values may be repeated, comma-separated, or both (`--budgets 0.25,0.5`)."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else values
    return [part.strip() for v in items for part in str(v).split(",") if part.strip()]


def default_threads(workers: int = 1) -> int:
    """All cores, shared out between `workers` processes."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


# ---- shared option groups: mixins a request inherits, so one flag means one thing everywhere ----

@dataclass
class ModelChoice:
    model: str | None = option(None, "Model folder, cached hub id, or demo / demo-upcycled (default: the demo "
                               "model).", short="-m", role="input")


@dataclass
class Threads:
    threads: int | None = option(None, "torch CPU threads (default: all cores, shared between --workers).",
                                 minimum=1)


@dataclass
class Force:
    force: bool = option(False, "Replace an existing output that is not a lightmoe output of this kind (never an "
                         "input of the command).", flag="--force")


@dataclass
class Output(Force):
    """Where a command writes: `--out` (its kind and default named by the request) and `--force`."""

    out: Path | None = option(None, "Where the result is written (default: named in each command's help).",
                              short="-o", role="output")
