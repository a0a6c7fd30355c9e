"""An lm-eval model class for bundles, registered as `lightmoe`.

It subclasses lm-eval's HF wrapper around the runtime-built model (only resident experts in memory), so
loglikelihood, rolling loglikelihood and generate_until all work as for any HF model. The runtime manager stays
active: every model call (one lm-eval batch) is a request boundary where it may swap experts.

    from lightmoe_cli.evaluation.lm_eval_model import LightMoELM
    lm_eval.simple_evaluate(model=LightMoELM(bundle="artifacts/bundles/demo-moe-lightmoe-50"), tasks=[...])
    # or, after `import lightmoe_cli.evaluation.lm_eval_model`, model="lightmoe", model_args="bundle=DIR"
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from lightmoe_cli.bundle.artifact import load_bundle
from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.runtime.loader import build_runtime
from lightmoe_cli.runtime.session import Runtime

# HFLM's arguments that still mean something for a model lightmoe has built (the rest name a checkpoint to load:
# pretrained, revision, dtype, parallelize, peft, ...); lm-eval's command line passes batch_size, max_batch_size
# and device itself
HFLM_ARGS = ("max_batch_size", "max_length", "truncation", "logits_cache", "add_bos_token", "prefix_token_id",
             "softmax_dtype", "think_end_token", "enable_thinking", "chat_template_args")


@register_model("lightmoe")
class LightMoELM(HFLM):
    def __init__(self, bundle: str | None = None, runtime: Runtime | None = None, device: str = "cpu",
                 batch_size: int | str = 8, **kwargs):
        unknown = sorted(set(kwargs) - set(HFLM_ARGS))
        if unknown:
            raise LightMoEError(f"unknown lightmoe model argument(s) {', '.join(unknown)}: --model_args takes "
                                f"bundle=DIR and {', '.join(HFLM_ARGS)}")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"  # lm-eval's command line defaults to cuda; its own HF wrapper falls back the same way
        if runtime is None:
            if bundle is None:
                raise LightMoEError("the lightmoe model needs --model_args bundle=DIR")
            runtime = build_runtime(load_bundle(Path(bundle)), device=device)
        device = str(runtime.device)
        self.runtime = runtime
        super().__init__(pretrained=runtime.model, tokenizer=runtime.tokenizer, device=device,
                         batch_size=batch_size, **kwargs)

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        logits = super()._model_call(inps, attn_mask, labels)
        self.runtime.checkpoint()  # a request boundary: the manager may swap here, never inside a batch
        return logits
