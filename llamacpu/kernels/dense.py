"""Matrix-vector (decode) and matrix-matrix (prefill) products for unquantized weights.

W: [out_features, in_features] stored as float32, or float16 / bfloat16 bits in uint16 (Numba has no
16-bit float scalars; `halfbits` widens them in registers). Activations and accumulation are float32.
Decode reads every weight once: one contiguous row per iteration, rows split across threads.
Prefill widens a tile of rows once and lets BLAS multiply it by all tokens (see `matmul_tiled`).
"""
import numpy as np
from numba import njit, prange

from .halfbits import bf16_to_f32, f16_to_f32


@njit(parallel=True, cache=True, fastmath=True)
def matvec_f32(w, x, out):
    """out[r] = sum_c w[r, c] * x[c]; w float32 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += w[r, c] * x[c]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_f16(w, x, out):
    """Like matvec_f32 with w: IEEE half bits, uint16 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += f16_to_f32(w[r, c]) * x[c]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_bf16(w, x, out):
    """Like matvec_f32 with w: bfloat16 bits, uint16 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += bf16_to_f32(w[r, c]) * x[c]
        out[r] = acc


@njit(parallel=True, cache=True)
def widen_f16(w, r0, r1, out):
    """out[: r1 - r0] = float32(w[r0:r1]) for half bits w: uint16 [R, C]."""
    cols = w.shape[1]
    for r in prange(r1 - r0):
        for c in range(cols):
            out[r, c] = f16_to_f32(w[r0 + r, c])


@njit(parallel=True, cache=True)
def widen_bf16(w, r0, r1, out):
    """out[: r1 - r0] = float32(w[r0:r1]) for bfloat16 bits w: uint16 [R, C]."""
    cols = w.shape[1]
    for r in prange(r1 - r0):
        for c in range(cols):
            out[r, c] = bf16_to_f32(w[r0 + r, c])


TILE_BYTES = 1 << 20  # a widened tile stays in L2, so BLAS reads it from cache


def matmul_tiled(widen, w, x, out):
    """out[n, R] = x[n, C] @ W.T, widening W tile by tile (never the whole matrix) for BLAS."""
    rows, cols = w.shape
    tile_rows = max(16, TILE_BYTES // (4 * cols))
    tile = np.empty((min(tile_rows, rows), cols), np.float32)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        widen(w, r0, r1, tile)
        np.matmul(x, tile[: r1 - r0].T, out=out[:, r0:r1])


def matvec_ref(w_f32, x):
    return w_f32 @ x


# Decode rows of several sequences (the serving engine): each token's result is bit for bit what the
# matvec above gives it alone (same loop, vectorized alike), whatever the other tokens, each row read once.
@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_f32(w, X, out):
    """out[t] = matvec_f32(w, X[t]) for every t; X float32 [n, C], out float32 [n, R]."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += w[r, c] * X[t, c]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_f16(w, X, out):
    """out[t] = matvec_f16(w, X[t]) for every t."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += f16_to_f32(w[r, c]) * X[t, c]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_bf16(w, X, out):
    """out[t] = matvec_bf16(w, X[t]) for every t."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += bf16_to_f32(w[r, c]) * X[t, c]
            out[t, r] = acc
