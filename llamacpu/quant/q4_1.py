"""Q4_1: 4-bit weights in blocks of 32 with an fp16 scale and an fp16 minimum (ggml's GGML_TYPE_Q4_1,
5 bits/weight).

Block layout (20 bytes, identical to ggml's `block_q4_1`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       2     m      fp16 minimum (offset), little-endian
    4       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = q * d + m,  q in 0..15

Quantization (ggml's `quantize_row_q4_1_ref`, byte for byte): d = (max - min) / 15, q = min(15,
trunc((x - min) / d + 0.5)), d and m = min stored as fp16.
Error bound, every element: |x - value| <= d/2 + 15 |fp16(d) - d| + |fp16(min) - min|.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, \
    group_sums

NAME = "q4_1"
BLOCK = 32
TYPE_SIZE = 20


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 20]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    lo = x.min(axis=-1)
    d = (x.max(axis=-1) - lo) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(np.trunc((x - lo[..., None]) * inv[..., None] + np.float32(0.5)), 15).astype(np.uint8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    return np.concatenate([f16_bytes(d), f16_bytes(lo), qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 20] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    m = f16_field(b, 2)
    qs = b[..., 4:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.float32)
    return (d[..., None] * q + m[..., None]).reshape(b.shape[0], cols)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_q4_1(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 20], x float32 [C], out float32 [R].

    sum_j (q_j d + m) x_j = d sum_j q_j x_j + m sum_j x_j: the block sums of x are taken once per call."""
    rows = blocks.shape[0]
    nb = blocks.shape[1] // TYPE_SIZE
    qk = x.shape[0] // nb
    h = qk // 2
    xsum = group_sums(x, qk)  # [nb]
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(h, np.float32)
        msum = np.float32(0.0)
        for b in range(nb):
            o = b * TYPE_SIZE
            d = f16_at(row, o)
            msum += f16_at(row, o + 2) * xsum[b]
            qs = row[o + 4: o + 4 + h]
            xlo = x[b * qk: b * qk + h]
            xhi = x[b * qk + h: b * qk + qk]
            for j in range(h):
                v = np.int32(qs[j])
                acc[j] += d * (np.float32(v & 15) * xlo[j] + np.float32(v >> 4) * xhi[j])
        out[r] = acc.sum() + msum


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_q4_1(row, dst):
    """dst float32 [C] = the weights of one row of blocks (uint8 [C // 32 * 20])."""
    nb = row.shape[0] // TYPE_SIZE
    qk = dst.shape[0] // nb
    h = qk // 2
    for b in range(nb):
        o = b * TYPE_SIZE
        d = f16_at(row, o)
        m = f16_at(row, o + 2)
        qs = row[o + 4: o + 4 + h]
        lo = dst[b * qk: b * qk + h]
        hi = dst[b * qk + h: b * qk + qk]
        for j in range(h):
            v = np.int32(qs[j])
            lo[j] = d * np.float32(v & 15) + m
            hi[j] = d * np.float32(v >> 4) + m


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_1(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)
        for i in range(nr):
            dequantize_row_q4_1(blocks[r0 + i], w[i])
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


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, GGMLQuantizationType.Q4_1, quantize, dequantize, matvec_q4_1,
                     matmul_q4_1)
