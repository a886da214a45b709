"""Q4_K: 4-bit weights in super-blocks of 256 = 8 sub-blocks of 32, each sub-block with a 6-bit scale and
a 6-bit minimum, and two fp16 super-scales (ggml's GGML_TYPE_Q4_K, 4.5 bits/weight).

Super-block layout (144 bytes, identical to ggml's `block_q4_K`):

    offset  size  field
    0       2     d        fp16 super-scale of the sub-block scales
    2       2     dmin     fp16 super-scale of the sub-block minimums
    4       12    scales   8 scales sc[0..7] and 8 minimums m[0..7], 6 bits each, packed:
                             bytes 0..3:  sc[j]   | (sc[j+4] >> 4) << 6      (j = 0..3)
                             bytes 4..7:  m[j]    | (m[j+4]  >> 4) << 6
                             bytes 8..11: (sc[j+4] & 0xF) | (m[j+4] & 0xF) << 4
    16      128   qs       nibbles in 4 chunks of 32 bytes; chunk c holds sub-blocks 2c (low nibbles)
                           and 2c+1 (high nibbles): element 64c + l is qs[32c + l] & 0xF and element
                           64c + 32 + l is qs[32c + l] >> 4 (l < 32)

    value = (d * sc[s]) * q - (dmin * m[s]),  q in 0..15, s = sub-block of the element

Quantization follows ggml's `quantize_row_q4_K_ref`, vectorized over all sub-blocks at once:
  1. per sub-block, `make_qkx2_quants`: weights w = rms(x) + |x|; starting from the min-max grid, try 21
     grids (nmax + (-1 + 0.1 i)) / (max - min); for each, the weighted least-squares scale and offset of
     the resulting integer levels; keep the fit with the least weighted squared error (offset <= 0);
  2. scale and minimum quantized to 6 bits against the largest of the super-block (d, dmin in fp16);
  3. every element re-rounded against the stored scale and minimum: q = clip(rint((x + m_s) / d_s), 0, 15).
Byte-identical to ggml on most blocks but not guaranteed (float32 summation order).
Error bound: with d_s = d * sc[s], m_s = dmin * m[s], the elements inside the sub-block's representable
range [-m_s, 15 d_s - m_s] are within d_s / 2; the search may clip outliers, which are then off by their
distance to that range plus d_s / 2. On Gaussian weights the rms error is about 0.072 * std
(Q4_1: 0.078, Q4_0: 0.086).
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, \
    group_sums, row_chunks

NAME = "q4_k"
BLOCK = 256  # QK_K
TYPE_SIZE = 144
SUB = 32  # weights per sub-block


# ---------------------------------------------------------------------------------------------
# NumPy reference
# ---------------------------------------------------------------------------------------------

def _make_qkx2(x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
               nstep: int = 20):
    """ggml's make_qkx2_quants on every row of x [N, n] with weights w [N, n] (squared error).

    Returns (scale [N], the_min [N] >= 0) such that x ~ scale * L - the_min, L in 0..nmax."""
    f32 = np.float32
    lo = np.minimum(x.min(axis=1), f32(0))
    span = x.max(axis=1) - lo
    flat = span <= 0
    span = np.where(flat, f32(1), span)
    sum_w = w.sum(axis=1)
    sum_x = (w * x).sum(axis=1)
    xm = x - lo[:, None]

    iscale = f32(nmax) / span
    L = np.clip(np.rint(iscale[:, None] * xm), 0, nmax)
    best_scale = f32(1) / iscale
    best_min = lo
    diff = best_scale[:, None] * L + lo[:, None] - x
    best_err = (w * diff * diff).sum(axis=1)

    for i in range(nstep + 1):
        iscale = (f32(rmin) + f32(rdelta) * f32(i) + f32(nmax)) / span
        L = np.clip(np.rint(iscale[:, None] * xm), 0, nmax)
        wl = w * L
        sum_l = wl.sum(axis=1)
        sum_l2 = (wl * L).sum(axis=1)
        sum_xl = (wl * x).sum(axis=1)
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        D = np.where(ok, D, f32(1))
        scale = (sum_w * sum_xl - sum_x * sum_l) / D
        offset = (sum_l2 * sum_x - sum_l * sum_xl) / D
        positive = offset > 0  # the offset is a minimum: x = scale * L + offset with offset <= 0
        offset = np.where(positive, f32(0), offset)
        scale = np.where(positive, sum_xl / np.where(sum_l2 > 0, sum_l2, f32(1)), scale)
        diff = scale[:, None] * L + offset[:, None] - x
        err = (w * diff * diff).sum(axis=1)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_min = np.where(better, offset, best_min)

    best_scale = np.where(flat, f32(0), best_scale)
    return best_scale.astype(f32), (-best_min).astype(f32)


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 144]."""
    f32 = np.float32
    n = x.shape[0]
    xs = x.reshape(n * 8, SUB)
    av = np.sqrt((xs * xs).sum(axis=1) / f32(SUB))
    scales, mins = _make_qkx2(xs, av[:, None] + np.abs(xs))
    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)

    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_scale = np.divide(f32(63), max_scale, out=np.zeros_like(max_scale), where=max_scale > 0)
    inv_min = np.divide(f32(63), max_min, out=np.zeros_like(max_min), where=max_min > 0)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)  # [N, 8]
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d = (max_scale / f32(63)).astype(np.float16).astype(f32)
    dmin = (max_min / f32(63)).astype(np.float16).astype(f32)

    d_sub = (d[:, None] * ls).reshape(n * 8, 1)  # stored sub-block scale and minimum
    m_sub = (dmin[:, None] * lm).reshape(n * 8, 1)
    t = np.divide(xs + m_sub, d_sub, out=np.zeros_like(xs), where=d_sub != 0)
    L = np.clip(np.rint(t), 0, 15).astype(np.uint8).reshape(n, 4, 2, SUB)
    qs = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(n, 128)

    packed = np.empty((n, 12), np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), packed, qs], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 144]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    out = np.empty((rows, cols // BLOCK * TYPE_SIZE), np.uint8)
    for r0, r1 in row_chunks(rows, cols):
        out[r0:r1] = _quantize_superblocks(w[r0:r1].reshape(-1, BLOCK)).reshape(r1 - r0, -1)
    return out


def unpack_scales(packed: np.ndarray):
    """uint8 [..., 12] -> (sc, m) uint8 [..., 8] each (ggml's get_scale_min_k4 for j = 0..7)."""
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=-1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc, m


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 144] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    d = f16_field(b, 0)[..., None]
    dmin = f16_field(b, 2)[..., None]
    sc, m = unpack_scales(b[..., 4:16])
    qs = b[..., 16:].reshape(rows, nsb, 4, 1, SUB)
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=3).reshape(rows, nsb, 8, SUB)
    scale = (d * sc.astype(np.float32))[..., None]
    offset = (dmin * m.astype(np.float32))[..., None]
    return (scale * q.astype(np.float32) - offset).reshape(rows, cols)


# ---------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def scale_min(packed, j):
    """(sc[j], m[j]) as int32 from the 12 packed bytes (ggml's get_scale_min_k4)."""
    if j < 4:
        return np.int32(packed[j]) & 63, np.int32(packed[j + 4]) & 63
    a = np.int32(packed[j + 4])
    return (a & 0xF) | ((np.int32(packed[j - 4]) >> 6) << 4), (a >> 4) | ((np.int32(packed[j]) >> 6) << 4)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_q4_k(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 256 * 144], x float32 [C], out float32 [R].

    The minimums contribute -dmin * m[s] * sum(x over sub-block s): sub-block sums of x are taken once."""
    rows = blocks.shape[0]
    nsb = blocks.shape[1] // TYPE_SIZE
    qk = x.shape[0] // nsb  # 256
    sub = qk // 8  # 32, from the shapes (see q8_0)
    xsum = group_sums(x, sub)  # [nsb * 8]
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(sub, np.float32)
        msum = np.float32(0.0)
        for i in range(nsb):
            o = i * TYPE_SIZE
            d = f16_at(row, o)
            dmin = f16_at(row, o + 2)
            packed = row[o + 4: o + 16]
            for c in range(4):
                s0, m0 = scale_min(packed, 2 * c)
                s1, m1 = scale_min(packed, 2 * c + 1)
                d0 = d * np.float32(s0)
                d1 = d * np.float32(s1)
                msum += dmin * (np.float32(m0) * xsum[8 * i + 2 * c] + np.float32(m1) * xsum[8 * i + 2 * c + 1])
                qs = row[o + 16 + c * sub: o + 16 + c * sub + sub]
                x0 = x[i * qk + 2 * c * sub: i * qk + 2 * c * sub + sub]
                x1 = x[i * qk + (2 * c + 1) * sub: i * qk + (2 * c + 1) * sub + sub]
                for l in range(sub):
                    v = np.int32(qs[l])
                    acc[l] += d0 * (np.float32(v & 15) * x0[l]) + d1 * (np.float32(v >> 4) * x1[l])
        out[r] = acc.sum() - msum


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_q4_k(row, dst):
    """dst float32 [C] = the weights of one row of super-blocks (uint8 [C // 256 * 144])."""
    nsb = row.shape[0] // TYPE_SIZE
    qk = dst.shape[0] // nsb
    sub = qk // 8
    for i in range(nsb):
        o = i * TYPE_SIZE
        d = f16_at(row, o)
        dmin = f16_at(row, o + 2)
        packed = row[o + 4: o + 16]
        for c in range(4):
            s0, m0 = scale_min(packed, 2 * c)
            s1, m1 = scale_min(packed, 2 * c + 1)
            d0 = d * np.float32(s0)
            d1 = d * np.float32(s1)
            n0 = dmin * np.float32(m0)
            n1 = dmin * np.float32(m1)
            qs = row[o + 16 + c * sub: o + 16 + c * sub + sub]
            y0 = dst[i * qk + 2 * c * sub: i * qk + 2 * c * sub + sub]
            y1 = dst[i * qk + (2 * c + 1) * sub: i * qk + (2 * c + 1) * sub + sub]
            for l in range(sub):
                v = np.int32(qs[l])
                y0[l] = d0 * np.float32(v & 15) - n0
                y1[l] = d1 * np.float32(v >> 4) - n1


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_k(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)
        for i in range(nr):
            dequantize_row_q4_k(blocks[r0 + i], w[i])
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


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, GGMLQuantizationType.Q4_K, quantize, dequantize, matvec_q4_k,
                     matmul_q4_k)
