"""The policy registry: the built-in policies of `lightmoe_cli/policies/residency/`, then those of plugins.

Like lm-eval's `@register_model` or mergekit's merge-method list: the CLI (`--policy`, `lightmoe policies`,
`build-bundle --help`), the bundle builder and the evaluation read this registry instead of repeating the list.
A built-in policy is one module plus one line in `_BUILTIN` (a lazy "module:Class" entry: naming it imports
nothing); another package adds its own through the `lightmoe.policies` entry point group:

    [project.entry-points."lightmoe.policies"]
    my-policy = "my_package.policy:MyPolicy"     # a subclass of lightmoe_cli.policies.base.Policy
"""

from __future__ import annotations

from lightmoe_cli.policies.base import Policy
from lightmoe_cli.registry import Registry

POLICIES: Registry[type[Policy]] = Registry("policy", base=Policy, entry_point_group="lightmoe.policies")

# the baselines first (the order of listings and of `--policy` help), then by name
_BUILTIN = {
    "task-aware": "lightmoe:LightMoE",
    "prune": "prune:Prune",
    "lru": "lru:LRU",
    "full": "full:Full",
    "merge": "merge:Merge",
    "oracle": "oracle:Oracle",
    "predict": "predict:Predict",
    "prune-lora": "prune_lora:PruneLora",
    "random": "random:RandomResidents",
    "replace": "replace:Replace",
    "swap": "swap:Swap",
}
for _name, _ref in _BUILTIN.items():
    POLICIES.register(_name, f"lightmoe_cli.policies.residency.{_ref}")


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make `cls` available as `--policy cls.name` (and as each of its `aliases`, old names
    kept after a rename)."""
    return POLICIES.register(cls.name, cls, aliases=tuple(getattr(cls, "aliases", ())))


def policies() -> dict[str, type[Policy]]:
    """Name -> policy class: the built-in baselines first, then the other built-ins by name, then plugins."""
    return dict(POLICIES.items())


def get_policy(name: str) -> Policy:
    """An instance of the policy called `name` (or an alias of it); an unknown name is a one-line error listing
    the known ones."""
    return POLICIES.get(name)()
