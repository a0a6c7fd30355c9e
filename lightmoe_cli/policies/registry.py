"""The policy registry: every module in `lightmoe_cli/policies/residency/` registers its policy by name.

Like lm-eval's `@register_model` or mergekit's merge-method list: the CLI (`--policy`, `lightmoe policies`,
`build-bundle --help`), the bundle builder and the evaluation read this registry instead of repeating the list.
Modules are discovered, so adding a policy means adding one module (and its tests).
"""

from __future__ import annotations

import importlib
import pkgutil

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.base import Policy

_POLICIES: dict[str, type[Policy]] = {}
_loaded = False


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make `cls` available as `--policy cls.name`."""
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"policy {cls.name!r} is registered twice ({_POLICIES[cls.name].__module__}, "
                         f"{cls.__module__})")
    _POLICIES[cls.name] = cls
    return cls


def _discover() -> None:
    global _loaded
    if _loaded:
        return
    from lightmoe_cli.policies import residency

    for info in sorted(pkgutil.iter_modules(residency.__path__), key=lambda i: i.name):
        importlib.import_module(f"{residency.__name__}.{info.name}")
    _loaded = True


def policies() -> dict[str, type[Policy]]:
    """Name -> policy class, in a stable order (the built-in baselines first, then by name)."""
    _discover()
    order = ["lightmoe", "prune", "lru", "full"]
    return {n: _POLICIES[n] for n in sorted(_POLICIES, key=lambda n: (order.index(n) if n in order else 99, n))}


def get_policy(name: str) -> Policy:
    """An instance of the policy called `name`; an unknown name is a one-line error listing the known ones."""
    known = policies()
    if name not in known:
        raise LightMoEError(f"unknown policy {name!r}; policies: {', '.join(known)}")
    return known[name]()
