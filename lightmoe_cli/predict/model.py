"""The MoE-Beyond-style predictor: a small causal transformer encoder over a window's router inputs at layer l
(plus a layer-pair embedding) that scores every expert of layer l+1 for each token, multi-label.

An artifact like a profile or a bundle (never pickle: a loaded predictor cannot run code):

    manifest.json               PredictorManifest: the model's identity, the predictor's config, how it was trained
                                and scored, sha256 of every file
    predictor.safetensors       the weights, with the model's fingerprint in the header
    scores.json                 held-out scores of the predictor and its baselines

Loading verifies the hashes and the fingerprint, so a truncated or edited predictor, or one trained on another
model, is refused in one line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.manifest import ArtifactManifest, ManifestError, ModelIdentity

SCHEMA_VERSION = 1


@dataclass
class PredictorConfig:
    hidden: int  # the model's router input width
    num_experts: int
    top_k: int
    pairs: list[tuple[int, int]]
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    max_len: int = 256


class ExpertPredictor(nn.Module):
    def __init__(self, cfg: PredictorConfig):
        super().__init__()
        self.cfg = cfg
        self.norm_in = nn.LayerNorm(cfg.hidden)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model)
        self.pair = nn.Embedding(len(cfg.pairs), cfg.d_model)
        self.position = nn.Embedding(cfg.max_len, cfg.d_model)
        block = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, 4 * cfg.d_model, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(block, cfg.layers, enable_nested_tensor=False)
        self.head = nn.Linear(cfg.d_model, cfg.num_experts)

    def forward(self, x: torch.Tensor, pair: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, S, H) router inputs, pair: (B,) layer-pair index, pad: (B, S) True on padding -> (B, S, E)."""
        s = x.shape[1]
        h = self.proj(self.norm_in(x)) + self.pair(pair)[:, None] + self.position(torch.arange(s, device=x.device))
        causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=x.device), diagonal=1)  # True = masked
        return self.head(self.encoder(h, mask=causal, src_key_padding_mask=pad))


@dataclass
class PredictorManifest(ArtifactManifest):
    KIND: ClassVar[str] = "lightmoe-predictor"
    SCHEMA_VERSION: ClassVar[int] = SCHEMA_VERSION
    REBUILD: ClassVar[str] = "train it again with `lightmoe predict train`"

    config: dict[str, Any] = field(default_factory=dict)  # PredictorConfig
    training: dict[str, Any] = field(default_factory=dict)  # profiles, tokens, epochs, held-out scores


def save_predictor(model: ExpertPredictor, out: Path, identity: ModelIdentity, training: dict,
                   force: bool = False) -> Path:
    """Write the predictor artifact to `out` (built aside and swapped in; an `out` that is not a predictor is
    replaced only with `force`). `identity`: the model whose traces trained it."""
    from lightmoe_cli.files import atomic_write_json, exclusive_output, save_tensors
    from lightmoe_cli.identity import library_versions
    from lightmoe_cli.manifest import FINGERPRINT_KEY, write_artifact

    out = Path(out)
    with exclusive_output(out) as tmp:
        tmp.mkdir(parents=True)
        save_tensors(dict(model.state_dict()), tmp / "predictor.safetensors", {FINGERPRINT_KEY: identity.fingerprint})
        atomic_write_json(tmp / "scores.json", training)
        manifest = PredictorManifest(kind=PredictorManifest.KIND, schema_version=SCHEMA_VERSION,
                                     created=PredictorManifest.now(), model=identity, versions=library_versions(),
                                     config=asdict(model.cfg), training=training)
        write_artifact(tmp, out, manifest, force)
    return out


def read_predictor_manifest(folder: Path) -> PredictorManifest:
    """The predictor's manifest, its files verified (sizes, sha256, the model fingerprint in the weights)."""
    folder = Path(folder)
    hint = " (a predictor from before predictors had manifests: train it again with `lightmoe predict train`)" \
        if (folder / "predictor.json").exists() else ": train one with `lightmoe predict train`"
    try:
        manifest = PredictorManifest.read(folder, hint)
        manifest.verify_files(folder)
    except ManifestError as e:
        raise LightMoEError(f"predictor: {e}") from e
    return manifest


def load_predictor(folder: Path, fingerprint: str | None = None) -> ExpertPredictor:
    """The verified predictor of `folder`; with `fingerprint`, one trained on another model is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    manifest = read_predictor_manifest(folder)
    if fingerprint is not None and manifest.model.fingerprint != fingerprint:
        raise LightMoEError(f"predictor {folder} was trained on {manifest.model.name_or_path} (fingerprint "
                            f"{manifest.model.fingerprint}), not on this model ({fingerprint}): train one on its "
                            "profile")
    try:
        raw = manifest.config
        cfg = PredictorConfig(**(raw | {"pairs": [tuple(p) for p in raw["pairs"]]}))
        model = ExpertPredictor(cfg)
        model.load_state_dict(load_file(str(folder / "predictor.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError) as e:
        raise LightMoEError(f"predictor in {folder} is damaged ({e}): {PredictorManifest.REBUILD}") from e
    return model.eval()
