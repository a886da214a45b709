"""Writing .safetensors files, streaming one tensor at a time.

Our own writer because `safetensors.numpy.save_file` needs every tensor in memory at once and has no
bfloat16 (NumPy has none): a synthetic 7B benchmark checkpoint must be written with the RAM of one
tensor. The layout is the format's: 8-byte header length, JSON header (padded with spaces to 8 bytes,
as the reference writer does), then the data in header order.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .safetensors_mmap import DTYPES


def write_safetensors(path, entries: Iterable[tuple[str, str, tuple, Callable[[], np.ndarray] | np.ndarray]],
                      metadata: dict[str, str] | None = None) -> None:
    """entries: (name, safetensors dtype, shape, array or a function making it). BF16 arrays are
    passed as their uint16 bits. Arrays are produced and written one at a time."""
    entries = list(entries)
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(Path(path), "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, dtype, shape, make in entries:
            arr = make() if callable(make) else make
            arr = np.ascontiguousarray(arr, dtype=DTYPES[dtype])
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
            f.write(arr.tobytes() if arr.nbytes < (64 << 20) else memoryview(arr.reshape(-1)).cast("B"))

