"""Options declared once: a dataclass field carries its default, help line, flag and bounds.

Why here, below everything: the request records of the library (`EvalRequest`, `ProfileRequest`, ...) are the one
place a default lives. The command line (`lightmoe_cli/cli/`) expands their fields into options, the records
check their own bounds with `check_bounds`, and shared groups (`ModelChoice`, `Threads`, `Output`) are mixin
dataclasses a request inherits, so `--model`, `--threads` and `--out` mean the same thing in every command.
Nothing here imports typer or torch.
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
           requires: str | None = None, split: bool = True, aliases: tuple[str, ...] = ()) -> Any:
    """A field with its command-line description. `flag` overrides --field-name; `cli=False` keeps a field out
    of the command line; `requires` names a field that must be set for this one to be given (e.g. --active
    only with --activation); `split=False`: a list of free text (prompts) is repeated, never split at commas;
    `aliases`: older flags still accepted."""
    meta = {"help": help, "flag": flag, "short": short, "minimum": minimum, "maximum": maximum, "above": above,
            "choices": choices, "cli": cli, "requires": requires, "split": split,
            "aliases": aliases}
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


def check_bounds(record: Any) -> None:
    """Every declared bound, choice and `requires` rule of a record's fields (lists element by element);
    None (not given) passes. One LightMoEError naming the flag."""
    for f in dataclasses.fields(record):
        v, m = getattr(record, f.name), f.metadata
        if v is None or not m:
            continue
        for item in v if isinstance(v, (list, tuple)) else [v]:
            if isinstance(item, (int, float, str)) and not isinstance(item, bool):
                _check_value(flag_of(f), item, m)
        need = m.get("requires")
        if need and v != default_of(f) and getattr(record, need) in (None, False, [], ""):
            other = next(g for g in dataclasses.fields(record) if g.name == need)
            raise LightMoEError(f"{flag_of(f)} only applies with {flag_of(other)}")


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
                               "model).", short="-m")


@dataclass
class Threads:
    threads: int | None = option(None, "torch CPU threads (default: all cores, shared between --workers).",
                                 minimum=1)


@dataclass
class Output:
    out: Path | None = option(None, "Where the result is written (default: named in each command's help).",
                              short="-o")
