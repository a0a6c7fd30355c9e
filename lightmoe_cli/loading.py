"""Load a model argument (local path or cached hub id) with clear one-line errors instead of tracebacks."""

from __future__ import annotations

import re
from pathlib import Path

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.paths import DEFAULT_MODEL, DEMO_MODELS, offline


def resolve_model(model: str | Path | None) -> str:
    """The embedded demo model when none is given (`demo` and `demo-upcycled` name the two demo models); a local
    folder must hold a config.json."""
    text = "demo" if model is None else str(model)
    path = Path(text).expanduser()
    if text in DEMO_MODELS and not path.exists():
        demo = DEMO_MODELS[text]
        if not (demo / "config.json").exists():
            recipe = "" if demo == DEFAULT_MODEL else " --recipe recipes/training/demo-moe-upcycled.yaml"
            raise LightMoEError(f"the demo model {text!r} is missing at {demo}: restore artifacts/ from git "
                                f"or rebuild it with `lightmoe demo train{recipe}`")
        return str(demo)
    if path.exists():
        if not (path / "config.json").exists():
            raise LightMoEError(f"{path} is not a Hugging Face model folder (no config.json)")
        return str(path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise LightMoEError(f"model path {text} does not exist")
    return text  # a hub id: works offline when cached


def load_model_and_tokenizer(model: str | Path | None, device: str = "cpu", dtype: str = "float32",
                             device_map: str | None = None, max_memory: dict[str, str] | None = None,
                             offload_folder: str | None = None):
    """AutoModelForCausalLM + AutoTokenizer, offline. fp32 by default: bf16 is ~20x slower on CPUs without AMX.
    `device_map="auto"` (with `max_memory`, device -> size, and `offload_folder` for "disk") lets accelerate spread
    a model too large for one device over GPUs, CPU and disk; its hooks load offloaded weights per module, so our
    routing hooks still see every expert call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    offline()
    hf_logging.set_verbosity_error()  # our own messages and progress bars replace transformers' chatter
    hf_logging.disable_progress_bar()
    name = resolve_model(model)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
                   "auto": "auto"}.get(dtype)
    if torch_dtype is None:
        raise LightMoEError(f"unknown dtype {dtype}; use float32, bfloat16, float16 or auto")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory,
                                                   "offload_folder": offload_folder}
        loaded = AutoModelForCausalLM.from_pretrained(name, dtype=torch_dtype, **placement)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LightMoEError(f"cannot load model {name!r} offline ({first}); pass a local folder with --model") from e
    except ValueError as e:
        raise LightMoEError(f"cannot load {name!r} as a causal LM: {str(e).splitlines()[0]}") from e
    return (loaded if device_map is not None else loaded.to(device)).eval(), tokenizer


_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)?", re.IGNORECASE)  # what accelerate reads as a size


def parse_placement(device_map: str | None, max_memory: str | None, offload_folder) -> dict:
    """--device-map / --max-memory / --offload-folder -> from_pretrained keywords ({} without --device-map).
    '--max-memory 0=70GiB,cpu=200GiB' -> {0: '70GiB', 'cpu': '200GiB'}."""
    if device_map is None:
        if max_memory or offload_folder:
            raise LightMoEError("--max-memory and --offload-folder need --device-map auto")
        return {}
    if device_map not in ("auto", "balanced", "sequential"):
        raise LightMoEError(f"--device-map {device_map!r}: use auto, balanced or sequential")
    limits = {}
    gpus = None
    for part in (max_memory or "").split(","):
        if not part.strip():
            continue
        dev, sep, size = part.partition("=")
        if not sep or not _SIZE.fullmatch(size.strip()):
            raise LightMoEError(f"--max-memory entry {part!r} must look like cpu=200GiB or 0=70GiB")
        dev = dev.strip()
        if dev.isdigit():  # a GPU index: it must exist, or accelerate fails deep inside the load
            if gpus is None:
                import torch

                gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if int(dev) >= gpus:
                raise LightMoEError(f"--max-memory names GPU {dev}, but torch sees {gpus} GPU(s): limit cpu= and "
                                    "disk= only, or name a GPU that exists")
        elif dev not in ("cpu", "disk", "mps"):
            raise LightMoEError(f"--max-memory device {dev!r} is not a GPU index, cpu, disk or mps")
        limits[int(dev) if dev.isdigit() else dev] = size.strip()
    return {"device_map": device_map, "max_memory": limits or None,
            "offload_folder": str(offload_folder) if offload_folder else None}
