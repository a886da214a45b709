"""Q8_0: 8-bit weights in blocks of 32 with one fp16 scale (ggml's GGML_TYPE_Q8_0, 8.5 bits/weight).

Block layout (34 bytes, identical to ggml's `block_q8_0`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       32    qs     int8 quants; qs[j] is element j of the block

    value[j] = qs[j] * d

Quantization (ggml's `quantize_row_q8_0_ref`, byte for byte): d = amax / 127 over the block (float32),
qs = roundf(x / d) with ties away from zero, d stored as fp16 (round to nearest even).
Error bound, every element: |x - value| <= d/2 + 127 * |fp16(d) - d|  (<= d * (1/2 + 127 * 2**-11) for
d in fp16's normal range), d = amax / 127 of its block.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, \
    round_half_away

NAME = "q8_0"
BLOCK = 32  # weights per block
TYPE_SIZE = 34  # bytes per block


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 34]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    d = np.abs(x).max(axis=-1) / np.float32(127)  # [R, nb]
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    qs = round_half_away(x * inv[..., None]).astype(np.int8)
    out = np.concatenate([f16_bytes(d), qs.view(np.uint8)], axis=-1)  # [R, nb, 34]
    return out.reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 34] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    qs = b[..., 2:].view(np.int8).astype(np.float32)
    return (qs * d[..., None]).reshape(b.shape[0], cols)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_q8_0(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 34], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = blocks.shape[1] // TYPE_SIZE
    qk = x.shape[0] // nb  # 32, taken from the shapes: a literal trip count gets unrolled badly
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(qk, np.float32)  # one lane per block position; one horizontal sum per row
        for b in range(nb):
            o = b * TYPE_SIZE
            d = f16_at(row, o)
            qs = row[o + 2: o + 2 + qk]
            xb = x[b * qk: b * qk + qk]
            for j in range(qk):
                acc[j] += d * (np.float32(np.int8(qs[j])) * xb[j])
        out[r] = acc.sum()


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_q8_0(row, dst):
    """dst float32 [C] = the weights of one row of blocks (uint8 [C // 32 * 34])."""
    nb = row.shape[0] // TYPE_SIZE
    qk = dst.shape[0] // nb
    for b in range(nb):
        o = b * TYPE_SIZE
        d = f16_at(row, o)
        qs = row[o + 2: o + 2 + qk]
        db = dst[b * qk: b * qk + qk]
        for j in range(qk):
            db[j] = d * np.float32(np.int8(qs[j]))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q8_0(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)  # this task's rows, decoded once for all n tokens
        for i in range(nr):
            dequantize_row_q8_0(blocks[r0 + i], w[i])
        for t in range(n):
            xt = X[t]
            for i in range(nr):
                wi = w[i]
                s = np.float32(0.0)
                for c in range(cols):
                    s += wi[c] * xt[c]
                out[t, r0 + i] = s


def matvec_ref(blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    return dequantize(blocks, x.shape[0]) @ x


def matmul_ref(blocks: np.ndarray, X: np.ndarray) -> np.ndarray:
    return X @ dequantize(blocks, X.shape[1]).T


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, GGMLQuantizationType.Q8_0, quantize, dequantize, matvec_q8_0,
                     matmul_q8_0)
