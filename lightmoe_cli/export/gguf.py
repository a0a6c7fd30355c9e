"""`--format gguf`: the hf export converted by llama.cpp's own converter (`convert_hf_to_gguf.py` with its
`gguf-py`, as shipped in the llama.cpp sources vendored by llama-cpp-python; `just llama-cpp` unpacks them into
`.cache/llama.cpp`, or point `--converter` / LIGHTMOE_LLAMA_CPP at a llama.cpp checkout).

Two additions. The converter names a BPE pre-tokenizer by the hash of its output on a probe text, and refuses a
tokenizer it has not seen (ours): when the tokenizer's pre-tokenizer is GPT-2's byte-level regex exactly, it is
named "gpt-2" (which is what it is), the way llama.cpp's own `convert_hf_to_gguf_update.py` registers tokenizers;
any other unknown pre-tokenizer is still refused. And the GGUF says it is lightmoe's (`lightmoe.kind`, the source
bundle's manifest sha256 in `lightmoe.bundle_manifest_sha256`), so a later export may replace it and nothing
else. An activation budget reaches the GGUF through the hf export's config: its experts per token become the
converter's `<arch>.expert_used_count`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from lightmoe_cli.errors import LightMoEError
from lightmoe_cli.export.selection import Selection
from lightmoe_cli.paths import REPO_ROOT

if TYPE_CHECKING:
    from lightmoe_cli.bundle.artifact import Bundle

OUTTYPES = ("f32", "f16", "bf16", "q8_0")
GGUF_KIND = "lightmoe-gguf"

_WRAPPER = r'''
import json, runpy, sys
llama, hf, out, outtype, kind, sha = sys.argv[1:7]
sys.path[:0] = [llama, llama + "/gguf-py"]
import conversion.base as base
original_write = base.ModelBase.write
def write(self):
    self.gguf_writer.add_string("lightmoe.kind", kind)
    self.gguf_writer.add_string("lightmoe.bundle_manifest_sha256", sha)
    return original_write(self)
base.ModelBase.write = write
original = base.TextModel.get_vocab_base_pre
def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        pre = (json.loads((self.dir_model / "tokenizer.json").read_text()).get("pre_tokenizer") or {})
        if pre.get("type") == "ByteLevel" and pre.get("use_regex", True) and not pre.get("add_prefix_space"):
            return "gpt-2"
        raise
base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv = ["convert_hf_to_gguf.py", hf, "--outfile", out, "--outtype", outtype]
runpy.run_path(llama + "/convert_hf_to_gguf.py", run_name="__main__")
'''


def find_converter(converter: Path | None = None) -> Path:
    """The llama.cpp source folder holding convert_hf_to_gguf.py and gguf-py."""
    for cand in (converter, os.environ.get("LIGHTMOE_LLAMA_CPP"), REPO_ROOT / ".cache" / "llama.cpp"):
        if cand and (Path(cand) / "convert_hf_to_gguf.py").is_file() and (Path(cand) / "gguf-py").is_dir():
            return Path(cand)
    raise LightMoEError("llama.cpp's converter was not found: run `just llama-cpp` (unpacks it into .cache/llama.cpp) "
                        "or give --converter DIR (a llama.cpp checkout)")


def export_gguf(bundle: Bundle, selection: Selection, out: Path, outtype: str = "f32",
                converter: Path | None = None, force: bool = False) -> Path:
    """Export to hf in a temp folder, convert it, and move the GGUF to `out` under the write rules (an `out` that
    is not a lightmoe GGUF is replaced only with `force`)."""
    from lightmoe_cli.export.hf import export_hf
    from lightmoe_cli.files import sha256_file, write_output

    if outtype not in OUTTYPES:
        raise LightMoEError(f"unknown GGUF type {outtype!r}; use one of {', '.join(OUTTYPES)}")
    llama = find_converter(converter)
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="lightmoe-gguf-", dir=out.parent) as tmp:
        hf = export_hf(bundle, selection, Path(tmp) / "hf")
        part = Path(tmp) / "model.gguf"
        sha = sha256_file(bundle.path / "manifest.json")
        res = subprocess.run([sys.executable, "-c", _WRAPPER, str(llama), str(hf), str(part), outtype, GGUF_KIND,
                              sha], capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        if res.returncode or not part.exists():
            lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
            last = lines[-1] if lines else f"exit code {res.returncode}"
            arch = (bundle.manifest.model.architecture or "this architecture")
            if "not supported" in last:
                raise LightMoEError(f"llama.cpp's converter does not support {arch}: {last}")
            raise LightMoEError(f"llama.cpp's converter failed on {arch}: {last}")
        write_output(out, lambda tmp: os.replace(part, tmp), GGUF_KIND, force)
    return out
