"""`--format hf`: a standard transformers checkpoint of a static bundle: experts and router rows sliced, the
family's expert-count config fields updated (the adapter knows them), safetensors shards + index, tokenizer,
generation config, and `lightmoe_selection.json` (original expert ids kept per layer, the source bundle's sha256).

A uniform activation budget (`--activation topk`: one k for every layer) becomes the config's experts-per-token;
per-layer or per-token budgets cannot be said by a config and are refused. Layers that keep different counts are
refused, not padded: a transformers config has one expert count, and a
padded expert can only be made never-routed through a router bias (-inf), which most families' routers (Qwen,
Mixtral, OLMoE) do not have; `build-bundle --policy prune --uniform` makes an exportable bundle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lightmoe_cli.bundle.artifact import Bundle
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.export.selection import Selection, uniform_experts_per_token
from lightmoe_cli.files import exclusive_output, sha256_file, swap_in_dir
from lightmoe_cli.policies.base import RuntimeSpec, Serving

SELECTION_FILE = "lightmoe_selection.json"  # also what says the folder is lightmoe's (its "kind")
HF_KIND = "lightmoe-hf-export"


def pruned_bundle(bundle: Bundle, selection: Selection) -> Bundle:
    """The bundle as a router-sliced (pruned) model keeping `selection`: same stores, another plan (in memory)."""
    layers = []
    for lp in bundle.layers:
        kept = selection.kept[lp.layer_index]
        table = [e if e in set(kept) else -1 for e in range(lp.num_experts)]
        layers.append(dataclasses.replace(lp, slots=len(kept), resident=list(kept), redirect=table))
    manifest = dataclasses.replace(bundle.manifest, layers=layers, runtime=RuntimeSpec(Serving.PRUNED_ROUTER),
                                   activation=None)
    return Bundle(bundle.path, manifest)


def activation_top_k(bundle: Bundle) -> int | None:
    """The experts per token of a bundle's activation budget when a config can say it (one k for every layer, no
    per-token rule); None without a budget; refused otherwise."""
    return uniform_experts_per_token(bundle.manifest.activation,
                                     "a transformers config (one experts-per-token value)")


def export_hf(bundle: Bundle, selection: Selection, out: Path, max_shard_size: str = "2GB",
              force: bool = False) -> Path:
    """Write the checkpoint to `out` (atomically; an `out` that is not an hf export is replaced only with
    `force`); returns it."""
    top_k = activation_top_k(bundle)
    if not selection.uniform:
        counts = sorted({len(v) for v in selection.kept.values()})
        raise LightMoEError(f"layers keep different expert counts ({counts[0]}..{counts[-1]}) and a transformers "
                            "config has one: build with `lightmoe build-bundle --policy prune --uniform`")
    from transformers.utils import logging as hf_logging

    from lightmoe_cli.models.adapter import strip_lightmoe_hooks
    from lightmoe_cli.models.pruning import update_config_counts
    from lightmoe_cli.runtime.loader import build_runtime

    hf_logging.disable_progress_bar()  # our own output says what was written

    full = all(len(selection.kept[lp.layer_index]) == lp.num_experts for lp in bundle.layers)  # nothing to drop
    rt = build_runtime(bundle if full else pruned_bundle(bundle, selection))
    try:
        model = rt.model
        strip_lightmoe_hooks(model)
        with exclusive_output(Path(out)) as tmp:
            tmp.mkdir(parents=True, exist_ok=True)
            if top_k is not None:  # the same rewrite of top-k fields (nested configs too) as pruning's
                kept = len(next(iter(selection.kept.values())))
                text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
                update_config_counts(text, kept, kept, bundle.layers[0].top_k, top_k)
            model.save_pretrained(tmp, max_shard_size=max_shard_size)
            rt.tokenizer.save_pretrained(tmp)
            _check_loadable(tmp)
            (tmp / SELECTION_FILE).write_text(json.dumps({
                "kind": HF_KIND, "kept_experts": {str(li): v for li, v in sorted(selection.kept.items())},
                "num_experts": {str(lp.layer_index): lp.num_experts for lp in bundle.layers},
                "selection": selection.source, "policy": bundle.policy, "experts_per_token": top_k,
                "bundle": str(bundle.path), "bundle_manifest_sha256": sha256_file(bundle.path / "manifest.json"),
                "model": bundle.manifest.model.name_or_path,
                "fingerprint": bundle.manifest.model.fingerprint}, indent=1))
            swap_in_dir(tmp, Path(out), force)
    finally:
        rt.close()
    return Path(out)


def _check_loadable(folder: Path) -> None:
    """The saved config must rebuild a model whose tensors have the saved shapes: a family whose expert count
    also sizes other modules (JetMoE's attention experts) cannot be pruned through its config, and is refused."""
    import torch
    import transformers
    from safetensors import safe_open
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    cls = getattr(transformers, (config.architectures or [""])[0], None)
    if cls is None:
        return
    with torch.device("meta"):
        skeleton = cls._from_config(config)
    want = {n: tuple(t.shape) for n, t in skeleton.state_dict().items()}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                shape = tuple(st.get_slice(name).get_shape())
                if name in want and want[name] != shape:
                    raise LightMoEError(f"{config.architectures[0]}: the pruned config rebuilds {name} as "
                                        f"{want[name]}, not the exported {shape} (the expert count also sizes other "
                                        "modules): this family cannot be exported pruned; export --format "
                                        "vllm-profile instead")
