"""Quantized block formats: ggml's Q8_0, Q4_0, Q4_1, Q4_K, Q6_K (bit-compatible with GGUF files) and our
own int4_g128. One module per format documents its block layout and holds its NumPy reference
(quantize / dequantize) beside its Numba kernels (matvec for decode, matmul for prefill); `base` holds
the shared `QuantFormat` description and `QuantizedWeight`, the `Weight` the model calls.

    FORMATS["q4_k"].matvec(blocks, x, out)
    w = QuantizedWeight.quantize("q8_0", w_f32);  w.matvec(x, out)
    w = QuantizedWeight.from_blocks(get_format(GGMLQuantizationType.Q6_K).name, tensor_bytes, (rows, cols))
"""
from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import UnsupportedError
from dataclasses import replace

from . import fast, int4_g128, q4_0, q4_1, q4_k, q6_k, q8_0
from .base import QuantFormat, QuantizedWeight

FORMATS: dict[str, QuantFormat] = {m.FORMAT.name: m.FORMAT for m in (q8_0, q4_0, q4_1, q4_k, q6_k, int4_g128)}
# On AVX512-VNNI CPUs the explicit-SIMD kernels of `fast` replace the portable ones (same results within
# their documented 16-bit activation bound); elsewhere, or with LLAMACPU_PORTABLE=1, the portable
# kernels stay. Each format module keeps its portable kernels as <fmt>.FORMAT.
FORMATS = {n: replace(f, matvec=fast.matvec_for(n, f.matvec), matmul=fast.matmul_for(n, f.matmul))
           for n, f in FORMATS.items()}
_BY_GGML_TYPE = {f.ggml_type: f for f in FORMATS.values() if f.ggml_type is not None}


def get_format(key) -> QuantFormat:
    """The format named `key` ("q8_0", ...), or the one of a ggml type (GGMLQuantizationType or its int).

    UnsupportedError for anything else, naming what is supported (e.g. a GGUF tensor in Q5_K)."""
    if isinstance(key, QuantFormat):
        return key
    if isinstance(key, str):
        fmt = FORMATS.get(key.lower())
        if fmt is None:
            raise UnsupportedError(f"unknown quantization format {key!r}; known: {', '.join(FORMATS)}")
        return fmt
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        try:
            ggml_type = GGMLQuantizationType(int(key))
        except ValueError:
            raise UnsupportedError(f"unknown ggml tensor type {int(key)}") from None
        fmt = _BY_GGML_TYPE.get(ggml_type)
        if fmt is None:
            known = ", ".join(t.name for t in _BY_GGML_TYPE)
            raise UnsupportedError(f"ggml tensor type {ggml_type.name} is not supported as a quantized "
                                   f"format; supported: {known}")
        return fmt
    raise UnsupportedError(f"expected a format name or a ggml type, got {key!r}")


def quantize(name, w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // block_size * type_size] in format `name`."""
    return get_format(name).quantize(w)


def dequantize(name, blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // block_size * type_size] in format `name` -> float32 [R, C]."""
    return get_format(name).dequantize(blocks, cols)


__all__ = ["FORMATS", "QuantFormat", "QuantizedWeight", "dequantize", "get_format", "quantize"]
