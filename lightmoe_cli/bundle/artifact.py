"""The Bundle artifact: what `lightmoe run` needs to execute a model with only some experts in memory.

    manifest.json                  BundleManifest: schema, policy and its parameters, how it is served
                                   (RuntimeSpec), model identity, budget, per-layer plan (resident experts,
                                   redirect table), per-task resident sets and signatures, sha256 of every file
    model/config.json, tokenizer   the model's own config and tokenizer
    model/non_expert.safetensors   every weight except the routed experts (routers included, whole)
    experts/layer_<i>.safetensors  one key per expert ("e<id>"), all its tensors flattened into one 1-D tensor,
                                   so loading one expert is one contiguous read
    similarity.safetensors         the similarity matrices the redirect table came from (re-used after swaps)

No pickle anywhere. Loading verifies schema, fields and hashes, so an edited or truncated file is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import throttle
from lightmoe_cli.manifest import ArtifactManifest, ManifestError, Record
from lightmoe_cli.policies.activation_budget import ActivationPlan
from lightmoe_cli.policies.base import LayerPlan, RuntimeSpec

SCHEMA_VERSION = 2


class BundleError(LightMoEError):
    """A bundle is missing, corrupt, or for another model."""


@dataclass
class ExpertLayout(Record):
    """How one expert's flat tensor splits back into its named slices (per layer)."""

    names: list[str]
    shapes: list[list[int]]
    dtype: str

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    @property
    def bytes(self) -> int:
        return self.numel * torch.empty(0, dtype=getattr(torch, self.dtype)).element_size()

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(torch.Size(shape).numel())
            out[name] = flat[offset:offset + n].view(shape)
            offset += n
        return out


@dataclass
class BudgetRecord(Record):
    requested_fraction: float | None
    requested_bytes: int
    all_expert_bytes: int
    resident_expert_bytes: int
    resident_fraction: float
    slots: int


@dataclass
class ReplacementRecord(Record):
    """Expert replacing: each replaced expert's base, the low-rank terms' size and the recovery run."""

    rank: int
    lowrank_bytes: int  # every layer's factors, as stored
    base: dict[int, dict[int, int]]  # layer -> replaced expert -> the kept expert it is built on
    recovery: dict[str, Any] = field(default_factory=dict)  # RecoveryRecord as JSON


@dataclass
class ProfileRef(Record):
    """The profile a bundle was planned from (its manifest's sha256 lets `eval` reuse a fresh bundle)."""

    path: str
    manifest_sha256: str
    tasks: dict[str, int]
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class BundleManifest(ArtifactManifest):
    KIND: ClassVar[str] = "lightmoe-bundle"
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    REBUILD: ClassVar[str] = "build the bundle again with `lightmoe build-bundle`"

    policy: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # the policy's parameters (its Params dataclass)
    ranking: str = "gate_mass"
    runtime: RuntimeSpec | None = None
    budget: BudgetRecord | None = None
    layers: list[LayerPlan] = field(default_factory=list)
    task_resident: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    task_signatures: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    expert_layout: dict[int, ExpertLayout] = field(default_factory=dict)
    profile: ProfileRef | None = None
    activation: ActivationPlan | None = None  # an activation budget: experts per token per layer
    replacement: ReplacementRecord | None = None  # expert replacing: bases, low-rank terms, recovery

    def signature_arrays(self) -> dict[str, dict[int, np.ndarray]]:
        """Each task's signature (its gate mass per layer) as arrays, as the task-jump manager and a server's task
        groups rank experts by it."""
        return {t: {li: np.asarray(v) for li, v in sig.items()} for t, sig in self.task_signatures.items()}

    def check(self, folder: Path) -> None:
        """Consistency a typed read cannot see: a policy this lightmoe knows, every layer's table naming experts
        that exist and are resident, an activation budget of 1..top-k experts per token on the plan's layers."""
        from lightmoe_cli.policies.registry import POLICIES

        if self.runtime is None or self.budget is None or not self.layers:
            raise ManifestError(f"{folder}: manifest has no plan: {self.REBUILD}")
        if self.policy not in POLICIES:
            raise ManifestError(f"{folder}: manifest names policy {self.policy!r}, which this lightmoe does not know "
                                f"(policies: {', '.join(POLICIES)}): {self.REBUILD}")
        if self.activation is not None:
            top_k = {lp.layer_index: lp.top_k for lp in self.layers}
            bad = sorted(li for li, k in self.activation.k.items() if li not in top_k or not 1 <= k <= top_k[li])
            if bad or set(self.activation.k) != set(top_k):
                where = f"layer {bad[0]}" if bad else f"layers {sorted(self.activation.k)}"
                raise ManifestError(f"{folder}: the activation budget's experts per token at {where} is not "
                                    f"1..top-k of the plan's layers {sorted(top_k)}: {self.REBUILD}")
        for lp in self.layers:
            e = lp.num_experts
            ok = (len(lp.redirect) == e and len(set(lp.resident)) == len(lp.resident) == lp.slots > 0
                  and all(0 <= x < e for x in lp.resident)
                  and all(t == -1 or t in set(lp.resident) for t in lp.redirect)
                  and lp.layer_index in self.expert_layout)
            if not ok:
                raise ManifestError(f"{folder}: layer {lp.layer_index} of the plan names experts outside "
                                    f"0..{e - 1} or a redirect target that is not resident: {self.REBUILD}")


@dataclass
class Bundle:
    path: Path
    manifest: BundleManifest

    @property
    def policy(self) -> str:
        return self.manifest.policy

    @property
    def layers(self) -> list[LayerPlan]:
        return self.manifest.layers

    @property
    def runtime_spec(self) -> RuntimeSpec:
        return self.manifest.runtime

    def layout(self, layer_index: int) -> ExpertLayout:
        return self.manifest.expert_layout[layer_index]

    def similarity(self, layer_index: int) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self.path / "similarity.safetensors"
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            key = f"layer.{layer_index}"
            return f.get_tensor(key) if key in f.keys() else None


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    """Read and check a bundle folder; `verify` also hashes every file (sizes are always checked)."""
    path = Path(path)
    try:
        manifest = BundleManifest.read(path, ": build one with `lightmoe build-bundle`")
        manifest.verify_files(path, hashes=verify)
        manifest.check(path)
    except ManifestError as e:
        raise BundleError(str(e)) from e
    return Bundle(path, manifest)


class ExpertStore:
    """Reads single experts from a bundle's store: one contiguous read each, straight into a slot."""

    def __init__(self, bundle: Bundle):
        from lightmoe_cli.bundle.safetensors_io import TensorFile

        self.bundle = bundle
        self._files = {li: TensorFile(bundle.path / "experts" / f"layer_{li}.safetensors")
                       for li in bundle.manifest.expert_layout}
        self.bytes_read = 0
        self.io_bandwidth: float | None = None  # bytes/s: every read is slowed to it for real (a slow link)

    def read(self, layer_index: int, expert: int, scratch: bytearray | None = None) -> torch.Tensor:
        """The expert's flat 1-D tensor (one positioned read, no memory map), throttled to `io_bandwidth`. With
        `scratch` it lies in that reused buffer (for a caller that copies it elsewhere before the next read)."""
        import time

        t0 = time.perf_counter()
        flat = self._files[layer_index].read(f"e{expert}", scratch)
        size = flat.numel() * flat.element_size()
        self.bytes_read += size
        throttle(t0, size, self.io_bandwidth)
        return flat


