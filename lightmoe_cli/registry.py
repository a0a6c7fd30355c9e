"""One registry type for every table of variants: policies, model adapters, activation rules, strategies, ...

Why one type (after lm-evaluation-harness's `lm_eval/api/registry.py`): each table had grown its own dict and
its own half of the same rules. Here every table gets all of them:
- a name means one thing: registering a different object under a taken name (or alias) is an error, never a
  silent overwrite; registering the same object again (a module imported twice) is a no-op;
- lazy entries, "module:attr", imported on first `get`, so naming a variant costs no import;
- a base-class check, so a wrong object fails with its name when it is loaded, not later inside a run;
- aliases, so an old name keeps working after a rename without showing up in listings;
- entry points: an installed package adds variants under `[project.entry-points."<group>"]` (as pytest plugins
  and vLLM's out-of-tree models do), and a broken one is a one-line error naming the plugin, not a traceback.
Bottom layer: only the standard library and `lightmoe_cli.errors`.
"""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from lightmoe_cli.errors import LightMoEError

T = TypeVar("T")


def _plural(kind: str) -> str:
    return kind[:-1] + "ies" if kind.endswith("y") else kind + "s"


class Registry(Generic[T]):
    """Name -> T, in registration order. A `str` object is a lazy "module:attr" reference, resolved on `get`."""

    def __init__(self, kind: str, base: type | None = None, entry_point_group: str | None = None):
        self.kind, self.base, self.entry_point_group = kind, base, entry_point_group
        self._entries: dict[str, Any] = {}  # canonical name -> T, or "module:attr" not imported yet
        self._aliases: dict[str, str] = {}  # alias -> canonical name
        self._origin: dict[str, str] = {}  # canonical name -> "plugin 'dist'" (entries from entry points)
        self._loading: set[str] = set()  # lazy entries being imported: their module may register the object
        self._plugins_read = entry_point_group is None

    def register(self, name: str, obj: T | str | None = None, *, aliases: tuple[str, ...] = ()) -> Any:
        """`REG.register("name", obj)` or `@REG.register("name")`; returns `obj` (the decorated object)."""
        if obj is None:
            return lambda o: self.register(name, o, aliases=aliases)
        self._add(name, obj, aliases)
        return obj

    def _add(self, name: str, obj: Any, aliases: tuple[str, ...] = (), origin: str | None = None) -> None:
        where = f"{origin}: " if origin else ""
        if isinstance(obj, str) and ":" not in obj:
            raise LightMoEError(f"{where}lazy {self.kind} {name!r} must be 'module:attr', not {obj!r}")
        if not isinstance(obj, str):
            self._check_base(name, obj, where)
        if name in self._aliases:
            raise LightMoEError(f"{where}{self.kind} {name!r} is already an alias of {self._aliases[name]!r}")
        old = self._entries.get(name)
        if old is None:
            self._entries[name] = obj
            if origin:
                self._origin[name] = origin
        elif not self._same(name, old, obj):
            raise LightMoEError(f"{where}{self.kind} {name!r} is registered twice ({_describe(old)} and "
                                f"{_describe(obj)})")
        elif isinstance(old, str) and not isinstance(obj, str):
            self._entries[name] = obj  # the lazy entry's module registered it while being imported
        for alias in aliases:
            if alias in self._entries or self._aliases.get(alias, name) != name:
                raise LightMoEError(f"{where}{self.kind} alias {alias!r} of {name!r} is already a name or alias "
                                    f"of {self._aliases.get(alias, alias)!r}")
            self._aliases[alias] = name

    def _same(self, name: str, old: Any, new: Any) -> bool:
        """Same object, same reference, or a lazy reference and the object its module defines."""
        if old is new or (isinstance(old, str) and isinstance(new, str) and old == new):
            return True
        if isinstance(old, str) and name in self._loading:
            return True  # checked against getattr once the import is done
        lazy, real = (old, new) if isinstance(old, str) else (new, old)
        return isinstance(lazy, str) and not isinstance(real, str) and \
            lazy.partition(":")[0] == getattr(real, "__module__", None)

    def _check_base(self, name: str, obj: Any, where: str = "") -> None:
        if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
            raise LightMoEError(f"{where}{self.kind} {name!r} is {_describe(obj)}, not a subclass of "
                                f"{self.base.__name__}")

    def _read_plugins(self) -> None:
        """Add the entry points of the group as lazy entries (sorted: the order must not depend on sys.path)."""
        if self._plugins_read:
            return
        self._plugins_read = True
        for ep in sorted(importlib.metadata.entry_points(group=self.entry_point_group), key=lambda e: e.name):
            dist = getattr(ep.dist, "name", None) or ep.value.partition(":")[0]
            self._add(ep.name, ep.value, origin=f"plugin {dist!r}")

    def reset_plugins(self) -> None:
        """Forget the entries that came from entry points; the next access reads them again (tests, or a
        package installed while the process runs)."""
        for name in self._origin:
            self._entries.pop(name, None)
        self._aliases = {a: n for a, n in self._aliases.items() if n not in self._origin}
        self._origin.clear()
        self._plugins_read = self.entry_point_group is None

    def _materialise(self, name: str) -> T:
        ref = self._entries[name]
        if not isinstance(ref, str):  # imported meanwhile, by another entry's module
            return ref
        module, _, attr = ref.partition(":")
        where = f"{self._origin[name]}: " if name in self._origin else ""
        self._loading.add(name)
        try:
            obj: Any = importlib.import_module(module.strip())
            for part in attr.strip().split("."):
                obj = getattr(obj, part)
        except Exception as e:  # a plugin may fail in any way; the user gets one line naming it
            detail = (str(e).splitlines() or [""])[0]
            raise LightMoEError(f"{where}cannot load {self.kind} {name!r} from {ref!r}: "
                                f"{type(e).__name__}: {detail}") from e
        finally:
            self._loading.discard(name)
        registered = self._entries[name]
        if not isinstance(registered, str) and registered is not obj:
            raise LightMoEError(f"{where}{self.kind} {name!r} is registered twice ({ref!r} and "
                                f"{_describe(registered)})")
        self._check_base(name, obj, where)
        self._entries[name] = obj
        return obj

    def _lookup(self, key: object) -> str | None:
        """The canonical name of `key`, or None. A miss first imports the lazy entries: their objects may
        declare aliases (a renamed class keeps its old name there, the one place that knows it)."""
        self._read_plugins()
        if key not in self._entries and key not in self._aliases:
            for n in [n for n, o in self._entries.items() if isinstance(o, str)]:
                self._materialise(n)
        return key if key in self._entries else self._aliases.get(key)  # type: ignore[arg-type]

    def canonical(self, name: str | enum.Enum) -> str:
        """The registered name of `name` or of its alias (an Enum member is looked up by its value, so a table
        keyed by an enum's values is indexed by the member); unknown: a one-line error listing the names."""
        key = name.value if isinstance(name, enum.Enum) else name
        found = self._lookup(key)
        if found is None:
            raise LightMoEError(f"unknown {self.kind} {key!r}; {_plural(self.kind)}: {', '.join(self._entries)}")
        return found

    def get(self, name: str | enum.Enum) -> T:
        key = self.canonical(name)
        obj = self._entries[key]
        return self._materialise(key) if isinstance(obj, str) else obj

    __getitem__ = get

    def names(self) -> list[str]:
        """Canonical names in registration order (built-ins first, then plugins); imports nothing."""
        self._read_plugins()
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(n, self.get(n)) for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return self._lookup(name.value if isinstance(name, enum.Enum) else name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"


def _describe(obj: Any) -> str:
    if isinstance(obj, str):
        return repr(obj)
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


