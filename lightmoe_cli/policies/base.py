"""What a policy is: a registered class that declares its parameters once and turns statistics into a plan.

A policy answers three questions for a memory budget, all without touching a model or a file:
- how few expert slots a layer may have (`min_slots_per_layer`),
- which experts are resident and what a missing pick becomes (`plan`, pure: arrays in, `BundlePlan` out),
- how the runtime must serve it (`runtime`, a typed `RuntimeSpec`: pruned router, remap table, on-demand loads).
Its parameters are a dataclass whose field metadata (help, bounds, choices) generates the CLI options, the
validation and the manifest record, so a new policy is one module: no list elsewhere names it.
"""

from __future__ import annotations

import dataclasses
import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import check_bounds, inputs_of, option
from lightmoe_cli.policies.manager import ManagerParams
from lightmoe_cli.policies.redirect import redirect_table
from lightmoe_cli.policies.resident import covered_share


def param(default: Any, help: str, *, minimum: float | None = None, maximum: float | None = None,
          above: float | None = None, choices: tuple[str, ...] | None = None, role: str | None = None,
          requires: str | None = None) -> Any:
    """A policy parameter: its default, a help line and its valid range (checked by `validate`); the same kind
    of field as every other option (`lightmoe_cli.options.option`). `role="input"`: a path the build reads (a
    predictor, a recipe), which the bundle may never be written over; `requires`: a parameter that must be set
    (not 0) for this one to be given."""
    return option(default, help, minimum=minimum, maximum=maximum, above=above, choices=choices, role=role,
                  requires=requires)


@dataclass(frozen=True)
class PolicyParams:
    """Base of every policy's parameters (a frozen dataclass of `param(...)` fields)."""

    @classmethod
    def specs(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: dict[str, Any], policy: str) -> PolicyParams:
        """Parameters from user options (field name -> value); unknown names and bad values are one-line errors."""
        names = {f.name for f in cls.specs()}
        extra = sorted(set(options) - names)
        if extra:
            flags = ", ".join("--" + n.replace("_", "-") for n in extra)
            raise LightMoEError(f"{flags} is not a parameter of policy {policy}"
                             + (f" (its parameters: {', '.join('--' + n.replace('_', '-') for n in sorted(names))})"
                                if names else " (it takes none)"))
        params = cls(**options)
        params.validate()
        return params

    def validate(self) -> None:
        """The declared bounds and choices of every parameter (one error naming the flag)."""
        check_bounds(self)

    def inputs(self) -> list[tuple[str, str]]:
        """(flag, path) of every parameter declared `role="input"` that is given."""
        return [(flag, path) for flag, path in inputs_of(self) if path]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> PolicyParams:
        names = {f.name for f in cls.specs()}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class NoParams(PolicyParams):
    """For policies without parameters."""


class Serving(enum.Enum):
    """How the runtime serves a layer of a bundle (the policy chooses; the runtime has one strategy each)."""

    PRUNED_ROUTER = "pruned_router"  # router sliced to the resident experts, renormalised: they are all it knows
    REMAP = "remap"  # router whole; a missing pick is redirected, re-routed among residents or dropped
    ON_DEMAND = "on_demand"  # router whole; a missing expert is loaded before the token continues
    BACKGROUND = "background"  # router whole; a missing pick is re-routed now, its expert loaded in the background
    REPLACE = "replace"  # router whole; a replaced expert runs as its base slot + its own low-rank term


class Missing(enum.Enum):
    """REMAP: what a missing pick with no similar-enough resident becomes."""

    REROUTE = "reroute"  # the token takes top-k among the residents, as the pruned router would
    DROP = "drop"  # the pick gets weight 0 and the token's other weights are renormalised


@dataclass(frozen=True)
class RuntimeSpec:
    """Everything the runtime needs to know about a policy, typed (written to the manifest)."""

    serving: Serving
    missing: Missing = Missing.REROUTE
    eviction: str | None = None  # ON_DEMAND, BACKGROUND: "lru" | "lfu"
    max_pending: int | None = None  # BACKGROUND: expert reads queued at most
    admission: str | None = None  # BACKGROUND: "demand" (install only what beats the weakest resident) | "always"
    decay: float | None = None  # BACKGROUND: per-forward decay of the demand counts
    prefetch_width: int | None = None  # BACKGROUND with the bundle's predictor: experts prefetched per forward
    manager: ManagerParams | None = None  # REMAP: task-aware swaps at check points; None = static
    uses_similarity: bool = False  # REMAP: re-derive the redirect table from the bundle's similarity on swaps
    min_similarity: float | None = None
    task_given: bool = False  # REMAP: the caller names each request's task; its own resident set is loaded
    read_budget: float | None = None  # BACKGROUND: experts per token a layer's cache may read (None: unbounded)
    spare_slots: int = 0  # BACKGROUND: rows per layer past the residents that the loader fills (double buffering)
    prefetch_bytes: float | None = None  # BACKGROUND with a predictor: prefetch reads per token at most (bytes)
    prefetch_confidence: float | None = None  # BACKGROUND with a predictor: least probability a prefetch needs


@dataclass
class LayerPlan:
    layer_index: int
    num_experts: int
    top_k: int
    slots: int
    resident: list[int]
    redirect: list[int]  # (E,) expert -> resident expert, or -1 (no redirect target); identity for residents
    covered_mass: float  # share of calibration gate mass on the resident set
    pinned: list[int] = field(default_factory=list)  # BACKGROUND: the core a cache never evicts (subset of resident)


@dataclass
class BundlePlan:
    """A policy's output: per-layer resident sets and redirect tables, per-task sets, and how to serve it."""

    layers: list[LayerPlan]
    runtime: RuntimeSpec
    task_resident: dict[str, dict[int, list[int]]] = field(default_factory=dict)


@dataclass(frozen=True)
class PlanInputs:
    """What every policy may use. mass[layer] (E,): calibration ranking mass over all tasks (gate mass by
    default); task_mass[task][layer] (E,): gate mass per task; similarity[layer] (E, E): the chosen kind (only
    for policies with `needs_similarity`); total_slots: the budget in expert slots."""

    mass: dict[int, np.ndarray]
    task_mass: dict[str, dict[int, np.ndarray]]
    similarity: dict[int, np.ndarray]
    top_k: dict[int, int]
    total_slots: int


def layer_plans(inputs: PlanInputs, resident: dict[int, list[int]],
                min_similarity: float | None = None) -> list[LayerPlan]:
    """LayerPlans for a resident set; with `min_similarity`, missing experts redirect to a similar resident."""
    out = []
    for li in sorted(inputs.mass):
        e = len(inputs.mass[li])
        if min_similarity is None:  # no redirect: missing experts are unreachable, re-routed or loaded
            table = np.where(np.isin(np.arange(e), resident[li]), np.arange(e), -1)
        else:
            table = redirect_table(inputs.similarity[li], resident[li], min_similarity)
        out.append(LayerPlan(li, e, inputs.top_k[li], len(resident[li]), list(resident[li]), table.tolist(),
                             covered_share(inputs.mass[li], resident[li])))
    return out


class Policy(ABC):
    """A resident-set policy. Subclasses set `name`, `summary`, `Params` and implement `plan`; register with
    `@register_policy` in a module of `lightmoe_cli/policies/residency/`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[PolicyParams]] = NoParams
    needs_similarity: ClassVar[bool] = False  # plan() reads inputs.similarity (and the bundle stores it)
    uses_budget: ClassVar[bool] = True  # False: every expert resident whatever the budget (full)
    replicates: ClassVar[int] = 1  # > 1: a report builds this many bundles (seed = 0, 1, ...) and averages them
    # the bundle's expert weights are not the model's: "replace" (low-rank terms, recovered), "merge" (cluster
    # averages), "lora" (kept experts fine-tuned with low-rank terms, merged in); done at build time by the
    # bundle layer's transform of that name
    weight_transform: ClassVar[str | None] = None
    aliases: ClassVar[tuple[str, ...]] = ()  # older names still accepted by --policy and in manifests
    # why a bundle of this policy has no single set of weights an engine could load (None: it has one)
    export_refusal: ClassVar[str | None] = None
    # what its serving is called when it cannot drop picks per token (NAEE, Alloc-T), named in the refusal of such
    # an activation budget before the build starts (None: it can)
    per_token_refusal: ClassVar[str | None] = None
    # an unmanaged policy the task-shift streams also serve: the floor of the gap (prune) and the dynamic caches a
    # user would otherwise pick, which follow a shift by themselves
    stream_baseline: ClassVar[bool] = False

    def bundle_tag(self, params: PolicyParams, budget_tag: str) -> str:
        """The part of a bundle's default folder name after the policy: the budget unless the policy sets its own
        memory."""
        return budget_tag

    def predictor(self, params: PolicyParams) -> str | None:
        """The predictor folder a prefetching policy reads (None: it reads none; "" : required but not given)."""
        return None

    def min_slots_per_layer(self, params: PolicyParams, top_k: int) -> int:
        """The fewest slots a layer may get. Default top-k: one token's k picks must all be servable."""
        return top_k

    @abstractmethod
    def plan(self, inputs: PlanInputs, params: PolicyParams) -> BundlePlan:
        """Pure: statistics and a slot budget -> the bundle plan."""

    def fixed_slots(self, params: PolicyParams, expert_shape: tuple[int, int], top_k: int, num_experts: int,
                    num_layers: int) -> int | None:
        """Expert slots over all layers when the policy sets its own memory (expert replacing: from its
        compression and rank, for experts of (hidden, intermediate) size); None: the --budget decides."""
        return None

    def similarity_kind(self, params: PolicyParams) -> str | None:
        """Which similarity matrix plan() needs (None: none)."""
        return getattr(params, "similarity", None) if self.needs_similarity else None
