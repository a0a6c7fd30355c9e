"""The Bundle artifact: what `lightmoe run` needs to execute a model with only some experts in memory.

    manifest.json                  schema, policy and parameters, model identity, budget, per-layer plan
                                   (resident experts, redirect table), swap policy, sha256 of every file
    model/config.json, tokenizer   the model's own config and tokenizer
    model/non_expert.safetensors   every weight except the routed experts (routers included, whole)
    experts/layer_<i>.safetensors  one key per expert ("e<id>"), all its tensors flattened into one 1-D tensor,
                                   so loading one expert is one contiguous read
    similarity.safetensors         the similarity matrices the redirect table came from (re-used after swaps)

No pickle anywhere. Loading verifies schema and hashes, so an edited or truncated file is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.files import read_manifest
from lightmoe_cli.identity import sha256_file

SCHEMA_VERSION = 1


class BundleError(LightMoEError):
    """A bundle is missing, corrupt, or for another model."""


@dataclass
class ExpertLayout:
    """How one expert's flat tensor splits back into its named slices (per layer)."""

    names: list[str]
    shapes: list[list[int]]
    dtype: str

    @property
    def numel(self) -> int:
        return sum(int(torch.Size(s).numel()) for s in self.shapes)

    def split(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, shape in zip(self.names, self.shapes, strict=True):
            n = int(torch.Size(shape).numel())
            out[name] = flat[offset:offset + n].view(shape)
            offset += n
        return out


@dataclass
class Bundle:
    path: Path
    manifest: dict

    @property
    def policy(self) -> str:
        return self.manifest["policy"]

    @property
    def layers(self) -> list[dict]:
        return self.manifest["plan"]["layers"]

    def layout(self, layer_index: int) -> ExpertLayout:
        d = self.manifest["expert_layout"][str(layer_index)]
        return ExpertLayout(d["names"], d["shapes"], d["dtype"])

    def similarity(self, layer_index: int) -> torch.Tensor | None:
        from safetensors import safe_open

        path = self.path / "similarity.safetensors"
        if not path.exists():
            return None
        with safe_open(str(path), "pt") as f:
            key = f"layer.{layer_index}"
            return f.get_tensor(key) if key in f.keys() else None

    def check_model(self, identity: dict) -> None:
        mine = self.manifest["model"]
        if mine["fingerprint"] != identity["fingerprint"]:
            raise BundleError(f"bundle {self.path} was built for {mine['name_or_path']} "
                              f"(fingerprint {mine['fingerprint']}), not {identity['name_or_path']}: "
                              "build a bundle for this model")


def load_bundle(path: Path, verify: bool = True) -> Bundle:
    path = Path(path)
    manifest = read_manifest(path, "bundle", SCHEMA_VERSION, BundleError, "bundle", "build the bundle again",
                             ": build one with `lightmoe build-bundle`")
    for rel, meta in manifest["files"].items():
        f = path / rel
        if not f.exists():
            raise BundleError(f"{path}: file {rel} is missing: build the bundle again")
        if f.stat().st_size != meta["bytes"]:
            raise BundleError(f"{path}: file {rel} is truncated or changed (size {f.stat().st_size}, "
                              f"expected {meta['bytes']}): build the bundle again")
        if verify and sha256_file(f) != meta["sha256"]:
            raise BundleError(f"{path}: file {rel} is corrupt (sha256 mismatch): build the bundle again")
    return Bundle(path, manifest)


class ExpertStore:
    """Reads single experts from a bundle's store: one contiguous read each, straight into a slot."""

    def __init__(self, bundle: Bundle):
        from lightmoe_cli.bundle.safetensors_io import TensorFile

        self.bundle = bundle
        self._files = {int(li): TensorFile(bundle.path / "experts" / f"layer_{li}.safetensors")
                       for li in bundle.manifest["expert_layout"]}
        self.bytes_read = 0

    def read(self, layer_index: int, expert: int) -> torch.Tensor:
        """The expert's flat 1-D tensor (one positioned read, no memory map)."""
        flat = self._files[layer_index].read(f"e{expert}")
        self.bytes_read += flat.numel() * flat.element_size()
        return flat
