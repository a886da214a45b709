"""Q4_0: 4-bit weights in blocks of 32 with one fp16 scale (ggml's GGML_TYPE_Q4_0, 4.5 bits/weight).

Block layout (18 bytes, identical to ggml's `block_q4_0`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = (q - 8) * d,  q in 0..15

Quantization (ggml's `quantize_row_q4_0_ref`, byte for byte): `max` is the element of largest magnitude
(the first one on ties), d = max / -8 so that it maps to q = 0, q = min(15, trunc(x / d + 8.5)).
Error bound: elements with x / d <= 7.5 are rounded to nearest, |x - value| <= |d|/2 + 8 |fp16(d) - d|;
elements of the other sign than `max` with x / d in (7.5, 8] are clipped to q = 15, so in general
|x - value| <= |d| + 8 |fp16(d) - d|,  d = max / -8 of its block.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_bytes, f16_field

NAME = "q4_0"
BLOCK = 32
TYPE_SIZE = 18


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 18]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    imax = np.abs(x).argmax(axis=-1)[..., None]
    d = np.take_along_axis(x, imax, axis=-1)[..., 0] / np.float32(-8)  # [R, nb]
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(np.trunc(x * inv[..., None] + np.float32(8.5)), 15).astype(np.uint8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    return np.concatenate([f16_bytes(d), qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 18] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    qs = b[..., 2:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.int8) - np.int8(8)
    return (d[..., None] * q.astype(np.float32)).reshape(b.shape[0], cols)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_q4_0(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 18], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = blocks.shape[1] // TYPE_SIZE
    qk = x.shape[0] // nb  # 32, from the shapes (see q8_0)
    h = qk // 2
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(h, np.float32)
        for b in range(nb):
            o = b * TYPE_SIZE
            d = f16_at(row, o)
            qs = row[o + 2: o + 2 + h]
            xlo = x[b * qk: b * qk + h]
            xhi = x[b * qk + h: b * qk + qk]
            for j in range(h):
                v = np.int32(qs[j])
                acc[j] += d * (np.float32((v & 15) - 8) * xlo[j] + np.float32((v >> 4) - 8) * xhi[j])
        out[r] = acc.sum()


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_q4_0(row, dst):
    """dst float32 [C] = the weights of one row of blocks (uint8 [C // 32 * 18])."""
    nb = row.shape[0] // TYPE_SIZE
    qk = dst.shape[0] // nb
    h = qk // 2
    for b in range(nb):
        o = b * TYPE_SIZE
        d = f16_at(row, o)
        qs = row[o + 2: o + 2 + h]
        lo = dst[b * qk: b * qk + h]
        hi = dst[b * qk + h: b * qk + qk]
        for j in range(h):
            v = np.int32(qs[j])
            lo[j] = d * np.float32((v & 15) - 8)
            hi[j] = d * np.float32((v >> 4) - 8)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_0(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)
        for i in range(nr):
            dequantize_row_q4_0(blocks[r0 + i], w[i])
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


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, GGMLQuantizationType.Q4_0, quantize, dequantize, matvec_q4_0,
                     matmul_q4_0)
