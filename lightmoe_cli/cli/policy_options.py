"""Command-line options generated from the policy registry: each policy's parameter fields become options.

Why generated: the policies declare their parameters once (a dataclass with help and bounds); `build-bundle
--help`, `lightmoe policies` and the validation read them, so a new policy adds options by existing.
Options shared by several policies (same field name) appear once; a value given to a policy that does not
take it is an error, not silently ignored.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import typer

from lightmoe_cli.cli.common import fail
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.policies.registry import policies


@dataclass(frozen=True)
class PolicyOption:
    name: str  # the field name; the flag is --name-with-dashes
    type: type
    help: str
    owners: tuple[str, ...]  # policies that take it

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _describe(per_owner: dict[str, tuple[str, object]]) -> str:
    """One help line for a parameter several policies take: the help once if they agree, else each policy's; the
    default once if they agree, else each policy's (replace's --rank is 8, prune-lora's 4)."""
    helps = {h for h, _ in per_owner.values()}
    text = next(iter(helps)) if len(helps) == 1 else "; ".join(f"{o}: {h}" for o, (h, _) in per_owner.items())
    defaults = {repr(d) for _, d in per_owner.values()}
    if defaults == {"''"}:  # an empty text: "not given", said by the help line itself
        return text
    if len(defaults) == 1:
        return f"{text} (default {next(iter(per_owner.values()))[1]})"
    return f"{text} (default " + ", ".join(f"{d} for {o}" for o, (_, d) in per_owner.items()) + ")"


def policy_options() -> list[PolicyOption]:
    """Every distinct parameter over all registered policies, in registry order."""
    found: dict[str, tuple[type, dict[str, tuple[str, object]]]] = {}
    for name, cls in policies().items():
        hints = get_type_hints(cls.Params)
        for f in dataclasses.fields(cls.Params):
            tp, owners = found.setdefault(f.name, (hints[f.name], {}))
            owners[name] = (f.metadata.get("help", ""), f.default)
    return [PolicyOption(n, tp, _describe(owners), tuple(owners)) for n, (tp, owners) in found.items()]


def with_policy_options(func: Callable) -> Callable:
    """Add one typer option per policy parameter to `func`'s signature; `func` receives them in
    `policy_params` (name -> value, only those the user gave)."""
    try:
        options, broken = policy_options(), None
    except LightMoEError as e:  # a broken plugin: every command but this one still works; this one says why
        options, broken = [], e
    sig = inspect.signature(func)
    base = [p for p in sig.parameters.values() if p.name != "policy_params"]
    extra = [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=o.type | None,
                               default=typer.Option(None, o.flag, help=f"({', '.join(o.owners)}) {o.help}",
                                                    rich_help_panel="Policy parameters"))
             for o in options]
    names = {o.name for o in options}

    def wrapper(**kwargs: Any) -> Any:
        if broken is not None:
            fail(broken)
        given = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        return func(**kwargs, policy_params={k: v for k, v in given.items() if v is not None})

    wrapper.__signature__ = sig.replace(parameters=[*base, *extra])
    wrapper.__name__, wrapper.__doc__ = func.__name__, func.__doc__
    return wrapper


def policy_help() -> str:
    return " | ".join(policies())
