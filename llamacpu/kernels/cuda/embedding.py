"""Embedding lookup, one kernel per weight format: out[i] = W[ids[i]], decoded to float32.

Reference: `Weight.rows(ids)` on the host (`DenseWeight.rows`, `QuantizedWeight.rows`), i.e. the
format's NumPy dequantize of the selected rows.
"""
from __future__ import annotations

from numba import cuda

from .formats import FORMATS, Format


def reference(w_f32, ids):
    return w_f32[ids]


def _embed_kernel(fmt: Format):
    at = fmt.at

    @cuda.jit
    def embed(w, ids, out):
        """w: the format's storage [V, ...]; ids: int64 [n] (validated on the host); out: float32 [n, C]."""
        n, cols = out.shape
        for item in range(cuda.grid(1), n * cols, cuda.gridsize(1)):
            i = item // cols
            c = item % cols
            out[i, c] = at(w, ids[i], c)

    return embed


EMBED = {name: _embed_kernel(fmt) for name, fmt in FORMATS.items()}  # format name -> kernel


def launch(name: str, geometry, w, ids, out) -> None:
    n, cols = out.shape
    EMBED[name][geometry.blocks(n * cols, geometry.threads), geometry.threads](w, ids, out)
