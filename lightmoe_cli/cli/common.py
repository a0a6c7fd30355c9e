"""What every command shares: one-line errors, the offline switch, and options expanded from a request record.

A command module declares its typer function with `@command(app, "name", Request)`: the request dataclass's
fields (their defaults, help lines and flags, declared once in `lightmoe_cli.options`) become the function's
options, the body receives the built, bounds-checked request, and a `LightMoEError` anywhere inside becomes
`error: <message>` on stderr with exit code 1, never a traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import Any, NoReturn, get_type_hints

import typer
from rich.markup import escape

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import default_of, flag_of, split_list
from lightmoe_cli.paths import offline


def fail(message: object, code: int = 1) -> NoReturn:
    """Print `error: <message>` on stderr and exit with `code`."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def _cli_type(tp: Any, flag: str, split: bool = True) -> tuple[Any, Callable[[Any], Any] | None]:
    """The type typer parses, and the converter from it to the field's type (lists: split and cast)."""
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) is list and not split:
        return list[str], lambda values: list(values or [])
    if typing.get_origin(tp) is list:
        (elem,) = typing.get_args(tp) or (str,)

        def convert(values: list[str] | None) -> list:
            items = split_list(values)
            try:
                return [elem(v) for v in items]
            except ValueError:
                raise LightMoEError(f"bad {flag} {','.join(items)!r}: each comma-separated item must be a "
                                    f"{'number' if elem in (int, float) else elem.__name__}") from None
        return list[str], convert
    return tp, None


def request_parameters(cls: type) -> tuple[list[inspect.Parameter], dict[str, Callable | None]]:
    """One typer option per command-line field of the dataclass `cls` (and its mixin groups)."""
    hints = get_type_hints(cls)
    overrides = getattr(cls, "help_overrides", {})  # a group's help line said for this command (--out's default)
    params, converters = [], {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True) or "help" not in f.metadata:
            continue
        tp, convert = _cli_type(hints[f.name], flag_of(f), f.metadata.get("split", True))
        required = f.default is MISSING and f.default_factory is MISSING
        default = ... if required else default_of(f)
        short = [f.metadata["short"]] if f.metadata.get("short") else []
        decls = [flag_of(f), *f.metadata.get("aliases", ()), *short]
        shown = default
        if convert is not None:  # a list: typer sees repeatable strings; the record keeps its own default
            shown = ",".join(str(v) for v in default) if default else None
            default = None
        if tp is bool and not f.metadata.get("flag"):
            decls = [f"{flag_of(f)}/--no-{f.name.replace('_', '-')}"]
        help_ = escape(overrides.get(f.name, f.metadata["help"]))  # help is plain text: '[ray]' is not markup
        if convert is not None and shown:
            help_ += escape(f" [default: {shown}]")
        opt = typer.Option(default, *decls, help=help_, show_default=convert is None)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt,
                                        annotation=tp | None if convert is not None or default is None else tp))
        converters[f.name] = convert
    return params, converters


def build_request(cls: type, values: dict[str, Any], converters: dict[str, Callable | None]) -> Any:
    """The request from parsed options (lists split and cast; options not given keep the record's default)."""
    kwargs = {}
    for name, value in values.items():
        convert = converters[name]
        if convert is not None:
            if value is None:
                continue
            value = convert(value)
        kwargs[name] = value
    return cls(**kwargs)  # its own validate() checks it, declared bounds included (options.check_bounds)


def command(app: typer.Typer, name: str, request: type | None = None, **kwargs: Any) -> Callable:
    """Register `func` as command `name`: offline mode on, `LightMoEError` -> one error line; with `request`,
    the dataclass's fields become options and `func` receives the built request as its first argument."""

    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        hints = get_type_hints(func)
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.name != "req"]
        extra, converters = request_parameters(request) if request is not None else ([], {})

        def wrapper(**options: Any) -> Any:
            offline()
            try:
                if request is None:
                    return func(**options)
                fields = {k: options.pop(k) for k in list(options) if k in converters}
                return func(build_request(request, fields, converters), **options)
            except LightMoEError as e:
                fail(e)

        wrapper.__signature__ = sig.replace(parameters=[*own, *extra], return_annotation=None)
        wrapper.__name__, wrapper.__doc__, wrapper.__module__ = func.__name__, func.__doc__, func.__module__
        app.command(name, **kwargs)(wrapper)
        return wrapper

    return decorate


def existing_folder(path: Path | None, flag: str) -> None:
    if path is not None and not path.parent.is_dir():
        raise LightMoEError(f"{flag} folder {path.parent} does not exist: create it or write elsewhere")
