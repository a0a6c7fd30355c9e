"""Evaluate ONE bundle in its own process (so its peak RSS is its own): lm-eval accuracy per task, the runtime's
statistics, and decode speed on fixed prompts. Prints one JSON line; used by `lightmoe eval`.

Tasks run one after another (one lm-eval call each), i.e. requests arrive task by task, as a deployment serving
one workload at a time would see them; the manager may swap between batches.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

SPEED_PROMPTS = ["12 + 7 = 19\n45 - 3 = ", "def read_lines(path):\n", "1:1 EN el principio", "reverse lamp -> "]


def calibration_task(task: str, known: list[str]) -> str:
    """The calibration task an evaluation task belongs to: demo_<domain>[_ppl] -> <domain>."""
    name = task.removeprefix("demo_").removesuffix("_ppl")
    if name not in known:
        from lightmoe_cli.errors import LightMoEError

        raise LightMoEError(f"task {task} has no calibration task {name!r} in the bundle ({', '.join(known)}): "
                            "an oracle is scored on the tasks it was profiled on")
    return name


def task_scores(task: str, metrics: dict, samples: list[dict], tok_encode) -> tuple[str, float, dict]:
    """(kind, primary score, per-item record) of one lm-eval task's results.

    multiple choice -> ("acc", accuracy, {doc_id, acc}); rolling loglikelihood -> ("nll", NLL per token,
    {doc_id, nll, tokens}); anything else -> ("metric", its first numeric metric, {}). Per-item records are what
    the paired intervals resample."""
    samples = sorted(samples, key=lambda x: x["doc_id"])
    ids = [int(x["doc_id"]) for x in samples]
    if "acc,none" in metrics:
        return "acc", float(metrics["acc,none"]), {"doc_id": ids, "acc": [float(x["acc"]) for x in samples]}
    if "word_perplexity,none" in metrics:
        nll = [-float(x["word_perplexity"][0]) for x in samples]
        tokens = [len(tok_encode(x["target"])) for x in samples]
        return "nll", sum(nll) / max(1, sum(tokens)), {"doc_id": ids, "nll": nll, "tokens": tokens}
    name, value = next(((k, v) for k, v in metrics.items() if k.endswith(",none") and isinstance(v, int | float)),
                       (task, float("nan")))
    return "metric", float(value), {}


def evaluate_bundle(bundle: Path, tasks: list[str], include_path: Path | list[Path], limit: int | None,
                    threads: int, new_tokens: int = 16, batch_size: int = 8) -> dict:
    import lm_eval
    import torch
    from lm_eval.tasks import TaskManager

    from lightmoe_cli.bundle.artifact import load_bundle
    from lightmoe_cli.evaluation.lm_eval_model import LightMoELM
    from lightmoe_cli.files import sha256_file
    from lightmoe_cli.runtime.generate import peak_rss_bytes, run_requests
    from lightmoe_cli.runtime.loader import build_runtime

    torch.set_num_threads(threads)
    b = load_bundle(bundle)
    rt = build_runtime(b)
    lm = LightMoELM(runtime=rt, batch_size=batch_size)
    paths = [str(p) for p in (include_path if isinstance(include_path, list) else [include_path])]
    manager = TaskManager(include_path=paths, include_defaults=not all(t.startswith("demo_") for t in tasks))
    scores, nll, other, raw, items = {}, {}, {}, {}, {}
    t0 = time.perf_counter()
    for task in tasks:
        if b.runtime_spec.task_given:  # the oracle: told which task it serves
            rt.use_task(calibration_task(task, list(b.manifest.task_resident)))
        res = lm_eval.simple_evaluate(model=lm, tasks=[task], task_manager=manager, limit=limit,
                                      random_seed=0, numpy_random_seed=1234, torch_random_seed=1234,
                                      fewshot_random_seed=1234, log_samples=True)
        metrics = res["results"][task]
        kind, score, items[task] = task_scores(task, metrics, res["samples"][task], lm.tok_encode)
        {"acc": scores, "nll": nll, "metric": other}[kind][task] = score
        raw[task] = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    eval_seconds = time.perf_counter() - t0
    rt.finish()
    eval_layers = {m.layer_index: {"picks": m.stats.picks, "hits": m.stats.hits, "redirects": m.stats.redirects,
                                   "drops": m.stats.drops, "misses": m.stats.misses, "loads": m.stats.loads}
                   for m in rt.layers}
    swaps = sum(len(m.swaps) for m in rt.layers)
    bytes_loaded = sum(m.stats.bytes_loaded for m in rt.layers)
    picks = sum(v["picks"] for v in eval_layers.values()) or 1
    speed = run_requests(rt, SPEED_PROMPTS, new_tokens)
    return {
        "bundle": str(bundle), "policy": b.policy, "budget": b.manifest.budget.to_json(),
        "manifest_sha256": sha256_file(bundle / "manifest.json"),
        "scores": scores, "average": sum(scores.values()) / len(scores) if scores else None,
        "nll": nll, "nll_per_token": sum(nll.values()) / len(nll) if nll else None, "other_metrics": other,
        "items": items, "lm_eval_results": raw,
        "eval_seconds": eval_seconds, "eval_layers": eval_layers, "swaps": swaps, "bytes_loaded": bytes_loaded,
        "redirect_rate": sum(v["redirects"] for v in eval_layers.values()) / picks,
        "reroute_or_drop_rate": sum(v["drops"] for v in eval_layers.values()) / picks,
        "miss_rate": sum(v["misses"] for v in eval_layers.values()) / picks,
        "decode_tokens_per_s": speed.decode_tokens_per_s, "prefill_tokens_per_s": speed.prefill_tokens_per_s,
        "resident_expert_bytes": speed.resident_expert_bytes,
        "peak_rss_mib": peak_rss_bytes() / 2**20,
    }


def main() -> None:
    args = json.loads(sys.argv[1])
    from lightmoe_cli.paths import offline

    offline()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from lightmoe_cli.errors import LightMoEError

    try:
        out = evaluate_bundle(Path(args["bundle"]), args["tasks"], [Path(p) for p in args["include_path"]],
                              args.get("limit"), args.get("threads", 2))
    except LightMoEError as e:
        print(f"LIGHTMOE_ERROR {e}")
        sys.exit(1)
    except Exception as e:  # lm-eval and datasets raise many types: name where it failed, keep the detail in the log
        print(f"LIGHTMOE_ERROR lm-eval could not score these tasks ({type(e).__name__}: {str(e)[:200]}); "
              "check the task files (--tasks, --include-path) and the log beside the bundle")
        raise
    print("LIGHTMOE_RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
