"""Prompts for `lightmoe run`: from the command line and a JSONL file, checked with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from lightmoe_cli.errors import LightMoEError


def read_prompts(prompts: list[str] | None, input_file: Path | None) -> list[str]:
    """`--prompt` values, then the 'prompt' field of every non-empty line of `--input`."""
    out = list(prompts or [])
    if any(not p for p in out):
        raise LightMoEError("--prompt is empty: give the text to continue")
    for p in out:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise LightMoEError(f"--prompt is not valid UTF-8 (character {e.start}): pass UTF-8 text") from e
    if input_file is not None:
        if not input_file.is_file():
            raise LightMoEError(f"input file {input_file} not found")
        try:
            lines = input_file.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as e:
            raise LightMoEError(f"{input_file} is not UTF-8 text (byte {e.start}): save it as UTF-8") from e
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) or not record["prompt"]:
                raise LightMoEError(f"{input_file}:{n} is not a JSON object with a non-empty 'prompt' string")
            out.append(record["prompt"])
    if not out:
        raise LightMoEError("nothing to run: give --prompt TEXT or --input prompts.jsonl")
    return out


def check_lengths(rt, prompts: list[str], max_new_tokens: int) -> None:
    """Prompt plus new tokens must fit the model's positions (checked before generating anything)."""
    limit = getattr(rt.model.config, "max_position_embeddings", None)
    if not limit:
        return
    for i, p in enumerate(prompts, 1):
        n = len(rt.tokenizer(p)["input_ids"])
        if n + max_new_tokens > limit:
            raise LightMoEError(f"prompt {i} has {n} tokens; with --max-new-tokens {max_new_tokens} that passes the "
                                f"model's {limit} positions: use --max-new-tokens {max(1, limit - n)} or less")
