"""int4_g128: 4-bit weights in groups of 128 input features with an fp16 scale and an fp16 minimum
(asymmetric, with a zero point; our own format, not a ggml type; 4.25 bits/weight).

Group layout (68 bytes):

    offset  size  field
    0       2     s      fp16 scale, little-endian
    2       2     m      fp16 minimum (the value of q = 0), little-endian
    4       64    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 64 (j < 64)

    value = q * s + m,  q in 0..15

Why asymmetric: a group of 128 weights is rarely centred on zero, and a symmetric grid spends levels on
the side it does not need (Q4_0 maps the largest magnitude to -8 and the other side of the group gets
at most 7 levels, clipping the rest); with a minimum all 16 levels cover [min, max], and it is the scheme
of the int4 group-128 checkpoints (GPTQ, AWQ: scale + zero point per group of 128), so they convert
without re-rounding. The minimum costs nothing in the dot product: sum_j (q_j s + m) x_j =
s * sum_j q_j x_j + m * sum_j x_j, and the group sums of x are computed once per call.

Quantization (round to nearest over the group's min-max range, with directed fp16 rounding so that the
stored grid covers the group): m = the largest fp16 <= min, s = the smallest fp16 >= (max - m) / 15,
q = clip(rint((x - m) / s), 0, 15).
Error bound, every element: |x - value| <= s/2 (plus float32 rounding of q*s + m, a few ulp).
On Gaussian weights the rms error is about 0.10 * std (min-max over 128 weights; Q4_1's groups of 32
give 0.078). A group far from zero relative to its spread pays for the fp16 precision of its minimum
with a coarser s (the grid starts at fp16_down(min)).
"""
import numpy as np
from numba import njit, prange

from ..errors import InputError
from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_field, group_sums

NAME = "int4_g128"
BLOCK = 128
TYPE_SIZE = 68


def _fp16_down(v: np.ndarray) -> np.ndarray:
    """The largest fp16 <= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) > v, np.nextafter(h, np.float16(-np.inf)), h)


def _fp16_up(v: np.ndarray) -> np.ndarray:
    """The smallest fp16 >= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) < v, np.nextafter(h, np.float16(np.inf)), h)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 groups [R, C // 128 * 68]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    lo = x.min(axis=-1)
    hi = x.max(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        m16 = _fp16_down(lo)
        m = m16.astype(np.float32)
        s16 = _fp16_up((hi - m) / np.float32(15))
        s = s16.astype(np.float32)
        # float32 rounding of (hi - m) / 15 can leave the top of the grid a hair below hi: one more step
        short = m + np.float32(15) * s < hi
        s16 = np.where(short, np.nextafter(s16, np.float16(np.inf)), s16)
    if not (np.isfinite(m16).all() and np.isfinite(s16).all()):
        raise InputError(f"{NAME}: a group's minimum or scale overflows fp16 (weights too large, |w| up to "
                         f"{float(np.abs(w).max()):.3g})")
    s = s16.astype(np.float32)
    t = np.divide(x - m[..., None], s[..., None], out=np.zeros_like(x), where=s[..., None] != 0)
    q = np.clip(np.rint(t), 0, 15).astype(np.uint8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    head = np.stack([s16, m16], axis=-1).astype("<f2").view(np.uint8)  # [R, ng, 4]
    return np.concatenate([head, qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 groups [R, C // 128 * 68] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    s = f16_field(b, 0)
    m = f16_field(b, 2)
    qs = b[..., 4:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.float32)
    return (q * s[..., None] + m[..., None]).reshape(b.shape[0], cols)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_int4_g128(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 128 * 68], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    ng = blocks.shape[1] // TYPE_SIZE
    g = x.shape[0] // ng  # 128, from the shapes (see q8_0)
    h = g // 2
    xsum = group_sums(x, g)  # [ng]
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(h, np.float32)
        msum = np.float32(0.0)
        for k in range(ng):
            o = k * TYPE_SIZE
            s = f16_at(row, o)
            msum += f16_at(row, o + 2) * xsum[k]
            qs = row[o + 4: o + 4 + h]
            xlo = x[k * g: k * g + h]
            xhi = x[k * g + h: k * g + g]
            for j in range(h):
                v = np.int32(qs[j])
                acc[j] += s * (np.float32(v & 15) * xlo[j] + np.float32(v >> 4) * xhi[j])
        out[r] = acc.sum() + msum


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_int4_g128(row, dst):
    """dst float32 [C] = the weights of one row of groups (uint8 [C // 128 * 68])."""
    ng = row.shape[0] // TYPE_SIZE
    g = dst.shape[0] // ng
    h = g // 2
    for k in range(ng):
        o = k * TYPE_SIZE
        s = f16_at(row, o)
        m = f16_at(row, o + 2)
        qs = row[o + 4: o + 4 + h]
        lo = dst[k * g: k * g + h]
        hi = dst[k * g + h: k * g + g]
        for j in range(h):
            v = np.int32(qs[j])
            lo[j] = np.float32(v & 15) * s + m
            hi[j] = np.float32(v >> 4) * s + m


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_int4_g128(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)
        for i in range(nr):
            dequantize_row_int4_g128(blocks[r0 + i], w[i])
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


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, None, quantize, dequantize, matvec_int4_g128, matmul_int4_g128)
