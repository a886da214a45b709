"""Zero-copy, validating reader for .safetensors files.

Why our own reader rather than `safetensors.numpy.load_file`: NumPy has no bfloat16, so the
library's NumPy API refuses BF16 checkpoints, and its `safe_open` copies every tensor into RAM. Here
the file is mapped once and each tensor is a read-only view into the map (BF16 as uint16 bits), so a
7B checkpoint costs page cache, not a second copy. The format is simple (8-byte little-endian header
length, a JSON header, raw little-endian data), and we validate all of it before any view is made:
a corrupt file gives one CheckpointError, never a crash later inside a kernel.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from ..errors import CheckpointError
from ..limits import loads_json, open_regular

# safetensors dtype -> NumPy storage dtype (BF16 kept as its raw bits)
DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's own limit


class SafetensorsFile:
    """One mapped .safetensors file. `tensors[name]` -> (dtype string, shape, (begin, end)) after
    validation; `get(name)` returns a read-only NumPy view."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open_regular(self.path, CheckpointError, "safetensors file") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: too short to be a safetensors file ({size} bytes)")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER or 8 + n > size:
                    raise CheckpointError(f"{self.path}: header length {n} exceeds the file ({size} bytes)")
                raw = f.read(n)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise CheckpointError(f"{self.path}: cannot read ({e.strerror or e})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header ({e})") from None
        header = loads_json(text, f"{self.path}: corrupt safetensors header", CheckpointError)
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        self.metadata = header.pop("__metadata__", None) or {}
        if not isinstance(self.metadata, dict):
            raise CheckpointError(f"{self.path}: __metadata__ is not an object")
        self.data_start = 8 + n
        self.tensors = {name: self._check_entry(name, e, size - self.data_start) for name, e in header.items()}
        spans = sorted((b, e, name) for name, (_, _, (b, e)) in self.tensors.items() if e > b)
        for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
            if b1 < e0:
                raise CheckpointError(f"{self.path}: tensors {n0!r} and {n1!r} overlap in the data section")

    def _check_entry(self, name, entry, data_size):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where}: header entry is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise CheckpointError(f"{where}: unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape)):
            raise CheckpointError(f"{where}: bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise CheckpointError(f"{where}: bad data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end <= data_size:
            raise CheckpointError(f"{where}: data_offsets {offsets} lie outside the data section "
                                  f"({data_size} bytes; file truncated?)")
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if end - begin != numel * np.dtype(DTYPES[dtype]).itemsize:
            raise CheckpointError(f"{where}: {end - begin} bytes do not hold {dtype} {shape}")
        return dtype, tuple(shape), (begin, end)

    def keys(self):
        return self.tensors.keys()

    def get(self, name) -> np.ndarray:
        """Read-only view of tensor `name` in the mapped file (no copy)."""
        dtype, shape, (begin, end) = self.tensors[name]
        arr = np.frombuffer(self._map, dtype=DTYPES[dtype], count=(end - begin) // np.dtype(DTYPES[dtype]).itemsize,
                            offset=self.data_start + begin)
        return arr.reshape(shape)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bits (uint16) to float32: the bits are the top half of an fp32."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bits, round to nearest even (as torch does)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + 0x7FFF + ((u >> 16) & 1)
    bits = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        bits[nan] = 0x7FC0
    return bits
