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
