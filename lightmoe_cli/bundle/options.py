"""What `lightmoe build-bundle` is asked for (`BuildOptions`, the defaults of its options) and the same once
checked (`ResolvedBuild`, frozen, what the build trusts). Light on purpose: the command line imports it to
build its options, so nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.options import ModelChoice, Output, option
from lightmoe_cli.policies.base import Policy, PolicyParams
from lightmoe_cli.policies.registry import get_policy

RANKINGS = ("gate_mass", "frequency", "reap")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class BuildOptions(ModelChoice, Output):
    """What build-bundle was asked for: the policy and its parameters (field name -> value; the policy's
    defaults for the rest), the budget (a fraction or a size; 0.5 when neither is given), and how experts are
    ranked. The defaults of `lightmoe build-bundle`'s options live here; `resolve()` checks them once."""

    help_overrides: ClassVar[dict[str, str]] = {
        "out": "Bundle folder (default: artifacts/bundles/<model>-<policy>-<budget>)."}

    profile: Path | None = option(None, "Profile folder (default: the demo model's).", short="-p", role="input")
    fraction: float | None = option(None, "Resident expert memory as a fraction of all expert weights "
                                    "(default 0.5).", flag="--budget")
    memory: str | None = option(None, "Resident expert memory as a size, e.g. 300MiB (instead of --budget).")
    policy: str = option("task-aware", "The policy (see `lightmoe policies`).")
    ranking: str = option("gate_mass", "Which experts stay: gate_mass | frequency | reap (REAP saliency: router "
                          "weight x expert output norm).", choices=RANKINGS)
    dtype: str = option("float32", "dtype of the expert store and runtime weights.", choices=DTYPES)
    activation: str | None = option(None, "Activation budget (fewer experts per token): topk (uniform) | lexi "
                                    "(data-free per-layer k) | alloc (Alloc-L: calibration sensitivity + DP) | "
                                    "alloc-t (Alloc-L + per-token pooling) | naee (per-token threshold).")
    active: float = option(1.0, "With --activation: share of the model's activations kept, summed over MoE layers "
                           "(e.g. 0.5).", requires="activation")
    params: dict[str, Any] = field(default_factory=dict)  # the policy's parameters given (its options)
    memory_bytes: int | None = None  # the budget as bytes, for callers that have a number, not a size text

    def output_kind(self) -> tuple[str, bool]:
        return "lightmoe-bundle", False

    def resolve(self) -> ResolvedBuild:
        """The registered policy, its validated parameters and the budget: every option checked once, before a
        model loads; the frozen record is what the build trusts."""
        from lightmoe_cli.options import check_bounds, check_io
        from lightmoe_cli.policies.budget import parse_size

        policy = get_policy(self.policy)
        if self.ranking not in RANKINGS:
            raise LightMoEError(f"unknown ranking {self.ranking!r}; use {', '.join(RANKINGS)}")
        if self.dtype not in DTYPES:
            raise LightMoEError(f"unknown --dtype {self.dtype}; use {', '.join(DTYPES)}")
        memory_bytes = parse_size(self.memory) if self.memory is not None else self.memory_bytes
        if self.fraction is not None and memory_bytes is not None:
            raise LightMoEError("give --budget or --memory, not both")
        default = 0.5 if policy.uses_budget else None  # full holds every expert whatever the budget
        fraction = None if memory_bytes is not None else (default if self.fraction is None else self.fraction)
        if fraction is not None and not (0 < fraction <= 1):  # also refuses nan
            raise LightMoEError(f"--budget {fraction} must be a fraction in (0, 1] of the expert weights")
        if self.activation is not None:
            from lightmoe_cli.policies.activation_budget import ACTIVATION_RULES

            if self.activation not in ACTIVATION_RULES:
                raise LightMoEError(f"unknown --activation {self.activation!r}; rules: {', '.join(ACTIVATION_RULES)}")
            if not (0 < self.active <= 1):
                raise LightMoEError(f"--active {self.active} must be a fraction in (0, 1] of the model's "
                                    "activations")
            if ACTIVATION_RULES.get(self.activation).per_token and policy.per_token_refusal:
                raise LightMoEError(f"--activation {self.activation} drops picks per token, which "
                                    f"{policy.per_token_refusal} (--policy {policy.name}) does not support: use "
                                    "prune, task-aware or full")
        params = policy.Params.from_options(self.params, policy.name)
        check_bounds(self)
        check_io(self, extra_inputs=params.inputs())
        return ResolvedBuild(policy, params, fraction, memory_bytes, self.ranking, self.activation, self.active,
                             self.dtype)


@dataclass(frozen=True)
class ResolvedBuild:
    """BuildOptions once checked: the policy object, its parameters and the budget as one kind of number."""

    policy: Policy
    params: PolicyParams
    fraction: float | None
    memory_bytes: int | None
    ranking: str
    activation: str | None
    active: float
    dtype: str = "float32"

    def bundle_name_tag(self) -> str:
        """The default bundle folder's tag: the budget (or the policy's own), then the activation budget."""
        if self.memory_bytes is not None:
            budget = f"{self.memory_bytes / 2**20:g}MiB"
        else:  # full holds every expert: 100
            budget = f"{int(round((self.fraction if self.fraction is not None else 1.0) * 100))}"
        tag = self.policy.bundle_tag(self.params, budget)
        return tag + (f"-{self.activation}{int(round(self.active * 100))}" if self.activation else "")


def resolved(opts: BuildOptions | ResolvedBuild) -> ResolvedBuild:
    return opts if isinstance(opts, ResolvedBuild) else opts.resolve()
