"""The model_type -> adapter-class table that `@register_adapter` fills, and plugins extend.

Why apart from `registry.py`: the family modules register themselves on import, and the lookup imports them
(lazily) to make sure they have; with the table in the lookup's module the two would import each other.
Another package adds an adapter for its model_type through the `lightmoe.adapters` entry point group:

    [project.entry-points."lightmoe.adapters"]
    my_moe = "my_package.adapter:MyAdapter"     # a subclass of lightmoe_cli.models.adapter.MoEAdapter
"""

from __future__ import annotations

from collections.abc import Callable

from lightmoe_cli.models.adapter import MoEAdapter
from lightmoe_cli.registry import Registry

ADAPTERS: Registry[type[MoEAdapter]] = Registry("adapter", base=MoEAdapter, entry_point_group="lightmoe.adapters")


def register_adapter(*model_types: str) -> Callable[[type[MoEAdapter]], type[MoEAdapter]]:
    """Class decorator: use this adapter for models whose config.model_type is one of `model_types`."""

    def decorate(cls: type[MoEAdapter]) -> type[MoEAdapter]:
        for name in model_types:
            ADAPTERS.register(name, cls)
        return cls

    return decorate


def registered_adapter(model_types: list[str]) -> type[MoEAdapter] | None:
    """The adapter class registered for the first of `model_types` that has one."""
    return next((ADAPTERS.get(t) for t in model_types if t in ADAPTERS), None)
