"""The MoE-Beyond-style predictor: a small causal transformer encoder over a window's router inputs at layer l
(plus a layer-pair embedding) that scores every expert of layer l+1 for each token, multi-label.

Saved as safetensors + a JSON config (never pickle): a loaded predictor cannot run code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn


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


def save_predictor(model: ExpertPredictor, folder: Path, extra: dict) -> None:
    from safetensors.torch import save_file

    from lightmoe_cli.files import atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(folder / "predictor.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    atomic_write(folder / "predictor.json", json.dumps({"config": asdict(model.cfg)} | extra, indent=1))


def load_predictor(folder: Path) -> ExpertPredictor:
    from safetensors.torch import load_file

    from lightmoe_cli.errors import LightMoEError

    try:
        raw = json.loads((folder / "predictor.json").read_text())["config"]
        cfg = PredictorConfig(**(raw | {"pairs": [tuple(p) for p in raw["pairs"]]}))
        model = ExpertPredictor(cfg)
        model.load_state_dict(load_file(str(folder / "predictor.safetensors")))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise LightMoEError(f"predictor in {folder} is missing or damaged ({e}): train it with "
                            "`lightmoe predict train`") from e
    return model.eval()
