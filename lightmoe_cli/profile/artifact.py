"""The Profile artifact: one self-describing folder that the bundle builder and later policies read.

    manifest.json                 schema, model identity, resolved recipe, settings, per-task tokens and summary,
                                  library versions, sha256 of every file
    stats/<task>.safetensors      per MoE layer: counts [E], gate_mass [E], coactivation [E, E], tokens
    similarity.safetensors        per MoE layer: weight / output / coactivation [E, E]
    traces/<task>/chunk_*.safetensors   optional raw routing (top-k ids int16, weights fp16, token ids)
    plots/*.png                   frequency heatmaps by task, similarity heatmaps

Loading verifies the schema and the hashes, so a truncated or edited profile is refused with one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.manifest import ArtifactManifest, ManifestError, ModelIdentity, Record
from lightmoe_cli.profile.accumulator import LayerStats, TaskStats

SCHEMA_VERSION = 2


class ProfileError(LightMoEError):
    """A profile folder is missing, incomplete, corrupt or for another model."""


@dataclass
class TaskSummary(Record):
    name: str
    tokens: int
    entropy_bits: float  # mean over layers of the task's routing entropy
    top_half_coverage: float  # mean over layers: share of picks on the task's own most frequent half
    mean_js_to_others_bits: float  # mean over layers and other tasks


@dataclass
class ProfileManifest(ArtifactManifest):
    KIND: ClassVar[str] = "lightmoe-profile"
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    REBUILD: ClassVar[str] = "profile again with `lightmoe profile`"

    recipe: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)  # task -> tokens profiled
    summary: list[TaskSummary] = field(default_factory=list)
    js_between_tasks_bits: list[list[float]] = field(default_factory=list)
    mean_js_between_tasks_bits: float = 0.0
    similarity_kinds: list[str] = field(default_factory=list)
    timings_s: dict[str, Any] = field(default_factory=dict)
    outlook: dict[str, Any] = field(default_factory=dict)  # residency outlook per budget + advice


@dataclass
class Profile:
    path: Path
    manifest: ProfileManifest

    @property
    def model(self) -> ModelIdentity:
        return self.manifest.model

    @property
    def task_names(self) -> list[str]:
        return list(self.manifest.tasks)

    @property
    def layer_indices(self) -> list[int]:
        return list(self.manifest.model.moe_layers)

    def task_stats(self, name: str) -> TaskStats:
        from safetensors.torch import load_file

        if name not in self.manifest.tasks:
            raise ProfileError(f"profile has no task {name!r}; tasks: {', '.join(self.task_names)}")
        return TaskStats.from_tensors(name, load_file(str(self.path / "stats" / f"{name}.safetensors")))

    def total_stats(self) -> dict[int, LayerStats]:
        """Statistics summed over all tasks, per layer."""
        total: dict[int, LayerStats] = {}
        for name in self.task_names:
            for li, s in self.task_stats(name).layers.items():
                if li in total:
                    total[li].merge(s)
                else:
                    total[li] = LayerStats(s.counts.clone(), s.gate_mass.clone(), s.coactivation.clone(), s.tokens,
                                           s.half_mass.clone())
        return total

    def similarity(self, layer_index: int, kind: str) -> torch.Tensor:
        from safetensors import safe_open

        key = f"layer.{layer_index}.{kind}"
        with safe_open(str(self.path / "similarity.safetensors"), "pt") as f:
            if key not in f.keys():
                kinds = sorted({k.split(".")[2] for k in f.keys()})
                raise ProfileError(f"profile has no {kind} similarity for layer {layer_index}; has: {kinds}")
            return f.get_tensor(key)

    def similarities(self) -> dict[int, dict[str, torch.Tensor]]:
        """Every (E, E) similarity matrix: layer -> kind -> matrix, in one read of the file."""
        from safetensors.torch import load_file

        out: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in load_file(str(self.path / "similarity.safetensors")).items():
            _, li, kind = key.split(".")
            out.setdefault(int(li), {})[kind] = value
        return dict(sorted(out.items()))

    def saliency(self, layer_index: int) -> torch.Tensor:
        """REAP saliency (E,) of one layer: mean router weight x expert output norm on sampled tokens."""
        from safetensors import safe_open

        path = self.path / "saliency.safetensors"
        if not path.exists():
            raise ProfileError(f"profile {self.path} has no REAP saliency: profile again with this lightmoe")
        with safe_open(str(path), "pt") as f:
            return f.get_tensor(f"layer.{layer_index}.reap")

    def trace_ids(self, task: str) -> dict[int, torch.Tensor]:
        """Per layer, the (T, K) expert ids every real token of `task` picked, in token order (needs a profile
        made with --save-traces)."""
        return {li: v.long() for li, v in self.trace_tensors(task, "ids").items()}

    def trace_tensors(self, task: str, field: str) -> dict:
        """One field of `task`'s traces, all chunks in order: per layer for 'ids', 'weights' and 'router_input'
        ({layer: tensor}), else the token-level tensor under key None ('token_ids', 'positions')."""
        from safetensors import safe_open

        flag = "--save-router-inputs" if field == "router_input" else "--save-traces"  # what the reader needs
        chunks = sorted((self.path / "traces" / task).glob("chunk_*.safetensors"))
        if not chunks:
            raise ProfileError(f"profile {self.path} has no routing traces for task {task!r}: profile with "
                               f"`lightmoe profile {flag}`")
        parts: dict = {}
        for chunk in chunks:
            with safe_open(str(chunk), "pt") as f:
                for key in f.keys():
                    if key == field:
                        parts.setdefault(None, []).append(f.get_tensor(key))
                    elif key.startswith("layer.") and key.split(".", 2)[2] == field:
                        parts.setdefault(int(key.split(".")[1]), []).append(f.get_tensor(key))
        if not parts:
            raise ProfileError(f"profile {self.path} traces hold no {field!r}: profile again with "
                               f"`lightmoe profile {flag}`")
        return {k: torch.cat(v) for k, v in sorted(parts.items(), key=lambda kv: -1 if kv[0] is None else kv[0])}

    def check_model(self, identity: ModelIdentity) -> None:
        """Refuse to use this profile with another model."""
        mine = self.manifest.model
        if mine.fingerprint != identity.fingerprint:
            raise ProfileError(f"profile {self.path} was made for {mine.name_or_path} "
                               f"(fingerprint {mine.fingerprint}), not {identity.name_or_path} "
                               f"({identity.fingerprint}): profile this model first")


def load_profile(path: Path, verify: bool = True) -> Profile:
    """Read and check a profile folder; `verify` also hashes every file (sizes are always checked)."""
    path = Path(path)
    hint = " (an interrupted run: finish it with `lightmoe profile --resume`)" \
        if path.with_name(path.name + ".partial").exists() else ""
    try:
        manifest = ProfileManifest.read(path, hint)
        manifest.verify_files(path, hashes=verify)
    except ManifestError as e:
        raise ProfileError(str(e)) from e
    return Profile(path, manifest)
