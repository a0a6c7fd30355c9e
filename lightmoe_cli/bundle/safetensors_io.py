"""Read single tensors of a safetensors file with plain positioned reads (no memory map).

Why: safetensors' safe_open memory-maps the file, and every page it touched counts in the process's RSS until
the map is closed, so loading half the experts through it makes the runtime look (and, under pressure, be)
as big as the store. A header lookup plus one positioned read (pread) per tensor reads exactly one contiguous range into
memory we own, which is what "one expert = one contiguous read" should mean.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import torch

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


class TensorFile:
    """An open safetensors file: `keys()`, `read(key)` -> a new tensor, by one positioned read."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._f = open(self.path, "rb")  # noqa: SIM115 - kept open for the runtime's lifetime
        (n,) = struct.unpack("<Q", self._f.read(8))
        self.header = {k: v for k, v in json.loads(self._f.read(n)).items() if k != "__metadata__"}
        self._base = 8 + n

    def keys(self) -> list[str]:
        return list(self.header)

    def read(self, key: str, scratch: bytearray | None = None) -> torch.Tensor:
        """A new tensor; or, with `scratch`, a tensor over that buffer (grown to fit), valid until its next use.
        Why a scratch buffer: a fresh buffer per read is fresh memory, zeroed and faulted in page by page and
        unmapped afterwards; a loader that copies each read elsewhere at once reuses one instead."""
        meta = self.header[key]
        start, end = meta["data_offsets"]
        size = end - start
        dtype = _DTYPES[meta["dtype"]]
        if scratch is None:
            buf = bytearray(size)
        else:
            if len(scratch) < size:
                scratch.extend(bytes(size - len(scratch)))
            buf = scratch
        view, done = memoryview(buf), 0
        while done < size:  # os.preadv: no shared file position, so a loader thread may read concurrently
            n = os.preadv(self._f.fileno(), [view[done:size]], self._base + start + done)
            if n <= 0:
                raise OSError(f"{self.path}: tensor {key} is truncated")
            done += n
        view.release()
        if not size:
            return torch.empty(0, dtype=dtype).reshape(meta["shape"])
        return torch.frombuffer(buf, dtype=dtype, count=size // dtype.itemsize).reshape(meta["shape"])

    def close(self) -> None:
        self._f.close()
