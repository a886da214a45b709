"""Q6_K: 6-bit weights in super-blocks of 256 = 16 sub-blocks of 16, each with an int8 scale, and one fp16
super-scale (ggml's GGML_TYPE_Q6_K, 6.5625 bits/weight).

Super-block layout (210 bytes, identical to ggml's `block_q6_K`):

    offset  size  field
    0       128   ql       low 4 bits of the quants
    128     64    qh       high 2 bits of the quants
    192     16    scales   int8 sub-block scales sc[0..15]
    208     2     d        fp16 super-scale

    The super-block is two halves of 128 elements; half h uses ql[64h : 64h + 64], qh[32h : 32h + 32].
    Within a half, for l < 32 (a = ql[64h + l], b = ql[64h + 32 + l], c = qh[32h + l]):
      element 128h + l      : q = (a & 0xF) | ((c >> 0) & 3) << 4
      element 128h + l + 32 : q = (b & 0xF) | ((c >> 2) & 3) << 4
      element 128h + l + 64 : q = (a >> 4)  | ((c >> 4) & 3) << 4
      element 128h + l + 96 : q = (b >> 4)  | ((c >> 6) & 3) << 4

    value = (d * sc[e // 16]) * (q - 32),  q in 0..63, e = element index in the super-block

Quantization follows ggml's `quantize_row_q6_K_ref`, vectorized: per sub-block of 16, `make_qx_quants`
with weights x^2 tries 19 grids -(32 + 0.1 i) / max (i = -9..9, max = the element of largest magnitude)
and keeps the least-squares scale with the least weighted error; the 16 scales are quantized to int8
against the largest (d = fp16(-max_scale / 128)), then every element is re-rounded against its stored
scale: q = clip(rint(x / (d * sc)), -32, 31) + 32.
Error bound: with d_s = d * sc[s], elements inside [-32 |d_s|, 31 |d_s|] (signed by d_s) are within
|d_s| / 2; clipped ones are off by their distance to that range plus |d_s| / 2. On Gaussian weights the
rms error is about 0.02 * std.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from .base import FASTMATH, MATMUL_TILE, QuantFormat, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, \
    row_chunks

NAME = "q6_k"
BLOCK = 256
TYPE_SIZE = 210
SUB = 16
GROUP_MAX_EPS = 1e-15  # ggml: groups with a smaller largest magnitude quantize to zeros


def _make_qx(x: np.ndarray, nmax: int = 32) -> np.ndarray:
    """ggml's make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) on every row of x [N, n]: the scale [N]
    (negative when the largest-magnitude element is positive) such that x ~ scale * L, L in -nmax..nmax-1."""
    f32 = np.float32
    imax = np.abs(x).argmax(axis=1)[:, None]
    big = np.take_along_axis(x, imax, axis=1)[:, 0]
    zero = np.abs(big) < GROUP_MAX_EPS
    big = np.where(zero, f32(1), big)
    w = x * x
    wx = w * x

    def fit(iscale):
        L = np.clip(np.rint(iscale[:, None] * x), -nmax, nmax - 1)
        return (wx * L).sum(axis=1), (w * L * L).sum(axis=1)

    sumlx, suml2 = fit(f32(-nmax) / big)
    scale = np.divide(sumlx, suml2, out=np.zeros_like(sumlx), where=suml2 != 0)
    best = scale * sumlx
    for i in range(-9, 10):
        if i == 0:
            continue
        sumlx, suml2 = fit(-(f32(nmax) + f32(0.1) * f32(i)) / big)
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = np.divide(sumlx, suml2, out=np.zeros_like(sumlx), where=suml2 > 0)
        scale = np.where(better, new_scale, scale)
        best = np.where(better, new_scale * sumlx, best)
    return np.where(zero, f32(0), scale)


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 210]."""
    f32 = np.float32
    n = x.shape[0]
    xs = x.reshape(n * 16, SUB)
    scales = _make_qx(xs).reshape(n, 16)

    imax = np.abs(scales).argmax(axis=1)[:, None]
    max_scale = np.take_along_axis(scales, imax, axis=1)[:, 0]
    zero = np.abs(max_scale) < GROUP_MAX_EPS
    iscale = np.divide(f32(-128), max_scale, out=np.zeros_like(max_scale), where=~zero)
    d = np.where(zero, f32(0), np.divide(f32(1), iscale, out=np.zeros_like(iscale), where=~zero))
    d = d.astype(np.float16).astype(f32)
    sc = np.minimum(np.rint(iscale[:, None] * scales), 127).astype(np.int8)  # [N, 16]

    d_sub = (d[:, None] * sc.astype(f32)).reshape(n * 16, 1)
    t = np.divide(xs, d_sub, out=np.zeros_like(xs), where=d_sub != 0)
    L = (np.clip(np.rint(t), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [N, half, quarter, l]

    ql = np.concatenate([L[:, :, 0] & 0xF | (L[:, :, 2] & 0xF) << 4,
                         L[:, :, 1] & 0xF | (L[:, :, 3] & 0xF) << 4], axis=2).reshape(n, 128)
    qh = (L[:, :, 0] >> 4 | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6)
    out = np.concatenate([ql, qh.reshape(n, 64), sc.view(np.uint8), f16_bytes(d)], axis=1)
    out[zero] = 0
    return out


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 210]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    out = np.empty((rows, cols // BLOCK * TYPE_SIZE), np.uint8)
    for r0, r1 in row_chunks(rows, cols):
        out[r0:r1] = _quantize_superblocks(w[r0:r1].reshape(-1, BLOCK)).reshape(r1 - r0, -1)
    return out


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 210] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    ql = b[..., 0:128].reshape(rows, nsb, 2, 1, 64)
    qh = b[..., 128:192].reshape(rows, nsb, 2, 1, 32)
    sc = b[..., 192:208].view(np.int8).astype(np.float32)
    d = f16_field(b, 208)
    lo = np.concatenate([ql & np.uint8(0xF), ql >> np.uint8(4)], axis=3).reshape(rows, nsb, 2, 4, 32)
    hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & np.uint8(3)  # [R, nsb, 2, 4, 32]
    q = (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)
    scale = (d[..., None] * sc).reshape(rows, nsb, 16, 1)
    return (scale * q.reshape(rows, nsb, 16, SUB).astype(np.float32)).reshape(rows, cols)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_q6_k(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 256 * 210], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nsb = blocks.shape[1] // TYPE_SIZE
    qk = x.shape[0] // nsb  # 256
    sub = qk // 16  # 16, from the shapes (see q8_0)
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(sub, np.float32)
        for i in range(nsb):
            o = i * TYPE_SIZE
            d = f16_at(row, o + 208)
            for h in range(2):
                ql = row[o + 64 * h: o + 64 * h + 64]
                qh = row[o + 128 + 32 * h: o + 128 + 32 * h + 32]
                base = i * qk + 128 * h
                for p in range(2):  # l in [16p, 16p + 16): sub-blocks 8h + p + 2k for quarter k
                    s = 8 * h + p
                    d0 = d * np.float32(np.int8(row[o + 192 + s]))
                    d1 = d * np.float32(np.int8(row[o + 194 + s]))
                    d2 = d * np.float32(np.int8(row[o + 196 + s]))
                    d3 = d * np.float32(np.int8(row[o + 198 + s]))
                    a = ql[p * sub: p * sub + sub]
                    b = ql[32 + p * sub: 32 + p * sub + sub]
                    c = qh[p * sub: p * sub + sub]
                    x0 = x[base + p * sub: base + p * sub + sub]
                    x1 = x[base + 32 + p * sub: base + 32 + p * sub + sub]
                    x2 = x[base + 64 + p * sub: base + 64 + p * sub + sub]
                    x3 = x[base + 96 + p * sub: base + 96 + p * sub + sub]
                    for l in range(sub):
                        va = np.int32(a[l])
                        vb = np.int32(b[l])
                        vc = np.int32(c[l])
                        q0 = ((va & 15) | ((vc & 3) << 4)) - 32
                        q1 = ((vb & 15) | (((vc >> 2) & 3) << 4)) - 32
                        q2 = ((va >> 4) | (((vc >> 4) & 3) << 4)) - 32
                        q3 = ((vb >> 4) | (((vc >> 6) & 3) << 4)) - 32
                        acc[l] += (d0 * (np.float32(q0) * x0[l]) + d1 * (np.float32(q1) * x1[l])
                                   + d2 * (np.float32(q2) * x2[l]) + d3 * (np.float32(q3) * x3[l]))
        out[r] = acc.sum()


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row_q6_k(row, dst):
    """dst float32 [C] = the weights of one row of super-blocks (uint8 [C // 256 * 210])."""
    nsb = row.shape[0] // TYPE_SIZE
    qk = dst.shape[0] // nsb
    sub = qk // 16
    for i in range(nsb):
        o = i * TYPE_SIZE
        d = f16_at(row, o + 208)
        for h in range(2):
            ql = row[o + 64 * h: o + 64 * h + 64]
            qh = row[o + 128 + 32 * h: o + 128 + 32 * h + 32]
            base = i * qk + 128 * h
            for p in range(2):
                s = 8 * h + p
                d0 = d * np.float32(np.int8(row[o + 192 + s]))
                d1 = d * np.float32(np.int8(row[o + 194 + s]))
                d2 = d * np.float32(np.int8(row[o + 196 + s]))
                d3 = d * np.float32(np.int8(row[o + 198 + s]))
                a = ql[p * sub: p * sub + sub]
                b = ql[32 + p * sub: 32 + p * sub + sub]
                c = qh[p * sub: p * sub + sub]
                y0 = dst[base + p * sub: base + p * sub + sub]
                y1 = dst[base + 32 + p * sub: base + 32 + p * sub + sub]
                y2 = dst[base + 64 + p * sub: base + 64 + p * sub + sub]
                y3 = dst[base + 96 + p * sub: base + 96 + p * sub + sub]
                for l in range(sub):
                    va = np.int32(a[l])
                    vb = np.int32(b[l])
                    vc = np.int32(c[l])
                    y0[l] = d0 * np.float32(((va & 15) | ((vc & 3) << 4)) - 32)
                    y1[l] = d1 * np.float32(((vb & 15) | (((vc >> 2) & 3) << 4)) - 32)
                    y2[l] = d2 * np.float32(((va >> 4) | (((vc >> 4) & 3) << 4)) - 32)
                    y3[l] = d3 * np.float32(((vb >> 4) | (((vc >> 6) & 3) << 4)) - 32)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q6_k(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)
        for i in range(nr):
            dequantize_row_q6_k(blocks[r0 + i], w[i])
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


FORMAT = QuantFormat(NAME, BLOCK, TYPE_SIZE, GGMLQuantizationType.Q6_K, quantize, dequantize, matvec_q6_k,
                     matmul_q6_k)
