"""Which MoE causal-LM architectures the installed transformers ships.

Why scan source text first: importing all ~450 modeling modules takes minutes, but a regex over their source
takes a fraction of a second and picks the ~60 that define an `*Experts` class or an MoE router. Only those are
imported, to read each class's config class and `model_type`.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

_MOE_CLASS = re.compile(r"^class \w*(?:Experts|Router)\(", re.MULTILINE)
_CAUSAL_LM_CLASS = re.compile(r"^class (\w*ForCausalLM)\(", re.MULTILINE)


@dataclass(frozen=True)
class ArchInfo:
    """One MoE `*ForCausalLM` class of the installed transformers."""

    class_name: str  # e.g. "MixtralForCausalLM"
    model_type: str  # the config's model_type, e.g. "mixtral" (nested text configs: "gemma4_text")
    family: str  # the transformers.models sub-package, e.g. "gemma4"
    module: str  # e.g. "transformers.models.mixtral.modeling_mixtral"
    config_class_name: str  # e.g. "MixtralConfig"

    def load_class(self) -> type:
        """The model class itself (imports its modeling module)."""
        return getattr(importlib.import_module(self.module), self.class_name)

    def load_config_class(self) -> type:
        """The config class the model class is built from."""
        return self.load_class().config_class

    @property
    def config_class(self) -> type:
        """The config class (imports the modeling module)."""
        return self.load_config_class()

    def matches(self, name: str) -> bool:
        """Whether a user-given name (model_type, family or class name, any case) means this architecture."""
        name = name.lower().replace("-", "_")
        return name in {self.model_type.lower(), self.family.lower(), self.class_name.lower()}


def scan_sources() -> list[tuple[str, str, str]]:
    """(family, module, class name) of every *ForCausalLM class in a modeling file that defines MoE classes."""
    import transformers

    models_dir = Path(transformers.__file__).parent / "models"
    found = []
    for path in sorted(models_dir.glob("*/modeling_*.py")):
        source = path.read_text(encoding="utf-8", errors="replace")
        if not _MOE_CLASS.search(source):
            continue
        family = path.parent.name
        module = f"transformers.models.{family}.{path.stem}"
        found.extend((family, module, m.group(1)) for m in _CAUSAL_LM_CLASS.finditer(source))
    return found


def list_moe_architectures() -> list[ArchInfo]:
    """Every MoE `*ForCausalLM` class of the installed transformers, sorted by class name.

    A module that fails to import (a missing optional dependency) is still listed, with model_type "?", so the
    user sees it exists rather than having it silently vanish.
    """
    return list(_architectures())


@functools.cache
def _architectures() -> tuple[ArchInfo, ...]:
    infos = []
    for family, module, class_name in scan_sources():
        try:
            config_class = getattr(importlib.import_module(module), class_name).config_class
            model_type, config_name = config_class.model_type, config_class.__name__
        except Exception:  # an optional dependency missing: list it, unusable
            model_type, config_name = "?", "?"
        infos.append(ArchInfo(class_name, model_type, family, module, config_name))
    return tuple(sorted(infos, key=lambda a: a.class_name.lower()))


def find_architecture(name: str) -> ArchInfo:
    """The architecture a user means by `name` (model_type, family or class name)."""
    from lightmoe_cli.errors import LightMoEError

    for info in list_moe_architectures():
        if info.matches(name):
            return info
    known = ", ".join(sorted({a.model_type for a in list_moe_architectures()}))
    raise LightMoEError(f"unknown MoE architecture {name!r}; known model types: {known}")
