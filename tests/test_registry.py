"""The one registry type: names mean one thing, lazy entries import on use, bases are checked, aliases resolve,
and entry points add entries (a broken one is a one-line error naming its plugin)."""

from __future__ import annotations

import enum
import importlib
import importlib.metadata
import pkgutil
import sys
from pathlib import Path

import pytest

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.registry import Registry


class Widget:
    pass


class Gear(Widget):
    pass


class Cog(Widget):
    pass


def test_register_as_call_and_decorator_in_registration_order():
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("gear", Gear)

    @reg.register("cog")
    class Local(Widget):
        pass

    assert reg.get("gear") is Gear and reg["cog"] is Local
    assert reg.names() == list(reg) == ["gear", "cog"]
    assert reg.items() == [("gear", Gear), ("cog", Local)]
    assert "gear" in reg and "sprocket" not in reg


def test_a_name_taken_by_another_object_is_an_error_the_same_object_is_a_no_op():
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("gear", Gear)
    reg.register("gear", Gear)  # a module imported twice
    with pytest.raises(LightMoEError, match=r"widget 'gear' is registered twice \(.*Gear and .*Cog\)"):
        reg.register("gear", Cog)
    assert reg.get("gear") is Gear


def test_base_class_is_checked():
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    with pytest.raises(LightMoEError, match="widget 'int' is builtins.int, not a subclass of Widget"):
        reg.register("int", int)
    with pytest.raises(LightMoEError, match="not a subclass of Widget"):
        reg.register("gear", Gear())  # an instance, not a class
    assert reg.names() == []


def test_unknown_name_lists_the_known_ones():
    reg: Registry[type[Widget]] = Registry("policy", base=Widget)
    reg.register("gear", Gear)
    reg.register("cog", Cog)
    with pytest.raises(LightMoEError) as err:
        reg.get("sprocket")
    assert str(err.value) == "unknown policy 'sprocket'; policies: gear, cog"


def test_aliases_resolve_to_the_canonical_name_and_stay_out_of_listings():
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("gear", Gear, aliases=("old-gear",))
    assert reg.get("old-gear") is Gear and reg.canonical("old-gear") == "gear"
    assert "old-gear" in reg and reg.names() == ["gear"]
    with pytest.raises(LightMoEError, match="alias 'old-gear' of 'cog' is already a name or alias of 'gear'"):
        reg.register("cog", Cog, aliases=("old-gear",))
    with pytest.raises(LightMoEError, match="'old-gear' is already an alias of 'gear'"):
        reg.register("old-gear", Cog)


def test_an_enum_member_is_looked_up_by_its_value():
    class Kind(enum.Enum):
        GEAR = "gear"

    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("gear", Gear)
    assert reg[Kind.GEAR] is Gear and Kind.GEAR in reg


def _module(tmp_path: Path, monkeypatch, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)


def test_a_lazy_entry_is_imported_on_first_get_only(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "lazy_widgets_demo", f"from {__name__} import Widget\n"
                                                        "class Far(Widget):\n    pass\n")
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("far", "lazy_widgets_demo:Far")
    assert reg.names() == ["far"] and "far" in reg
    assert "lazy_widgets_demo" not in sys.modules  # naming and listing import nothing
    cls = reg.get("far")
    assert cls.__name__ == "Far" and "lazy_widgets_demo" in sys.modules
    assert reg.get("far") is cls


def test_a_lazy_entry_is_base_checked_when_imported(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "lazy_widgets_wrong", "class NotAWidget:\n    pass\n")
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    reg.register("wrong", "lazy_widgets_wrong:NotAWidget")
    with pytest.raises(LightMoEError, match="widget 'wrong' is lazy_widgets_wrong.NotAWidget, not a subclass"):
        reg.get("wrong")


def test_a_lazy_entry_whose_module_registers_it_is_one_entry(tmp_path, monkeypatch):
    reg: Registry[type[Widget]] = Registry("widget", base=Widget)
    monkeypatch.setattr(sys.modules[__name__], "SHARED_REGISTRY", reg, raising=False)
    _module(tmp_path, monkeypatch, "lazy_widgets_self", f"from {__name__} import SHARED_REGISTRY, Widget\n"
                                                        "@SHARED_REGISTRY.register('self', aliases=('me',))\n"
                                                        "class Self(Widget):\n    pass\n")
    reg.register("self", "lazy_widgets_self:Self")
    assert reg.get("me").__name__ == "Self"  # an unknown name imports the lazy entries: their aliases count
    assert reg.names() == ["self"]


def test_a_lazy_reference_must_name_an_attribute():
    with pytest.raises(LightMoEError, match="lazy widget 'x' must be 'module:attr'"):
        Registry("widget").register("x", "just_a_module")


def _entry_points(monkeypatch, group: str, *eps: importlib.metadata.EntryPoint) -> None:
    real = importlib.metadata.entry_points

    def fake(**kw):
        return [ep for ep in eps if ep.group == kw.get("group")] if kw.get("group") == group else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_entry_points_are_added_after_the_builtins_on_first_access(tmp_path, monkeypatch):
    _module(tmp_path, monkeypatch, "plugin_widgets_demo", f"from {__name__} import Widget\n"
                                                          "class Plug(Widget):\n    pass\n")
    group = "lightmoe.test_widgets"
    _entry_points(monkeypatch, group, importlib.metadata.EntryPoint("plug", "plugin_widgets_demo:Plug", group))
    reg: Registry[type[Widget]] = Registry("widget", base=Widget, entry_point_group=group)
    reg.register("gear", Gear)
    assert reg.names() == ["gear", "plug"] and "plugin_widgets_demo" not in sys.modules
    assert reg.get("plug").__name__ == "Plug"
    reg.reset_plugins()
    _entry_points(monkeypatch, group)
    assert reg.names() == ["gear"]


def test_a_plugin_taking_a_builtin_name_is_an_error_naming_it(monkeypatch):
    group = "lightmoe.test_widgets"
    _entry_points(monkeypatch, group, importlib.metadata.EntryPoint("gear", "elsewhere:Gear", group))
    reg: Registry[type[Widget]] = Registry("widget", base=Widget, entry_point_group=group)
    reg.register("gear", Gear)
    with pytest.raises(LightMoEError, match=r"plugin 'elsewhere': widget 'gear' is registered twice"):
        reg.names()


def test_a_broken_plugin_is_one_line_naming_the_plugin(tmp_path, monkeypatch):
    """A real dist-info (what pip writes) whose module raises on import."""
    dist = tmp_path / "broken_widgets-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-widgets\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lightmoe.test_broken]\nbad = broken_widgets_mod:Thing\n")
    _module(tmp_path, monkeypatch, "broken_widgets_mod", "raise RuntimeError('boom\\nsecond line')\n")
    importlib.invalidate_caches()
    reg: Registry[type[Widget]] = Registry("widget", base=Widget, entry_point_group="lightmoe.test_broken")
    assert reg.names() == ["bad"]
    with pytest.raises(LightMoEError) as err:
        reg.get("bad")
    assert str(err.value) == ("plugin 'broken-widgets': cannot load widget 'bad' from 'broken_widgets_mod:Thing': "
                              "RuntimeError: boom")


def test_every_builtin_policy_module_is_in_the_registry():
    """The built-in policies are lazy entries: a module under residency/ missing from the list would be unused."""
    from lightmoe_cli.policies import residency
    from lightmoe_cli.policies.registry import _BUILTIN, POLICIES

    listed = {ref.partition(":")[0] for ref in _BUILTIN.values()}
    assert listed == {i.name for i in pkgutil.iter_modules(residency.__path__)}
    for name in _BUILTIN:
        assert POLICIES.get(name).name == name


def test_the_renamed_policy_keeps_its_old_name_as_an_alias():
    from lightmoe_cli.policies.registry import POLICIES, get_policy, policies

    assert type(get_policy("lightmoe")) is type(get_policy("task-aware"))
    assert POLICIES.canonical("lightmoe") == "task-aware"
    assert list(policies())[:4] == ["task-aware", "prune", "lru", "full"] and "lightmoe" not in policies()


def test_the_other_tables_are_registries():
    from lightmoe_cli.evaluation.cache_replay import SIM_POLICIES
    from lightmoe_cli.export.run import FORMATS
    from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES
    from lightmoe_cli.policies.base import Serving
    from lightmoe_cli.runtime.strategies import STRATEGIES

    assert list(FORMATS) == ["hf", "gguf", "llamacpp-ot", "vllm-profile"]
    assert list(SIM_POLICIES) == ["lru", "lfu", "belady", "static", "task", "predict", "swap", "pinned"]
    assert {"topk", "lexi", "alloc", "alloc-t", "naee"} <= set(ACTIVATION_RULES)
    assert all(STRATEGIES[s].serving is s for s in Serving)
