"""Q5_K: 5-bit weights in super-blocks of 256 = 8 sub-blocks of 32, each sub-block with a 6-bit scale and
a 6-bit minimum, and two fp16 super-scales (ggml's GGML_TYPE_Q5_K, 5.5 bits/weight).

Super-block layout (176 bytes, identical to ggml's `block_q5_K`):

    offset  size  field
    0       2     d        fp16 super-scale of the sub-block scales
    2       2     dmin     fp16 super-scale of the sub-block minimums
    4       12    scales   8 scales and 8 minimums, 6 bits each, packed as Q4_K's (see q4_k)
    16      32    qh       the fifth bits: bit s of qh[l] belongs to element 32 s + l (sub-block s)
    48      128   qs       low nibbles in 4 chunks of 32 bytes, as Q4_K's: element 64c + l is
                           qs[32c + l] & 0xF and element 64c + 32 + l is qs[32c + l] >> 4 (l < 32)

    value = (d * sc[s]) * q - (dmin * m[s]),  q = nibble | fifth bit << 4, in 0..31

Quantization follows ggml's `quantize_row_q5_K_ref` (the one llama.cpp uses without an importance
matrix), vectorized as Q4_K's: per sub-block `make_qkx2_quants` with nmax 31, 16 grids (rmin -0.5,
step 0.1), weights rms(x) + |x|; 6-bit scales and minimums against the largest; every element re-rounded.
Error bound: with d_s = d * sc[s], m_s = dmin * m[s], the elements inside [-m_s, 31 d_s - m_s] are
within d_s / 2; clipped outliers are off by their distance to that range plus d_s / 2.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit, prange

from ..kernels.simd import fma, hsum, load, sitofp, splat
from .common import FASTMATH, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, put, quantize_rows, row_chunks
from .q4_k import K_S0, K_S1, K_S2, K_S3, _q4k_scales, make_qkx2, scale_min, unpack_scales
from .vnni import CAT32, FIRST8, K_ORDER, LAST8, byte_dot, centre, empty64, prepare

ID = 8  # this format's index in kernels.MODULES
NAME = "q5_k"
GGML_TYPE = GGMLQuantizationType.Q5_K
BLOCK = 256
TYPE_SIZE = 176
SUB = 32


def pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and minimums uint8 [N, 8] each -> the 12 packed bytes [N, 12] (Q4_K's packing)."""
    packed = np.empty((ls.shape[0], 12), np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return packed


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 176]."""
    f32 = np.float32
    n = x.shape[0]
    xs = x.reshape(n * 8, SUB)
    av = np.sqrt((xs * xs).sum(axis=1) / f32(SUB))
    scales, mins = make_qkx2(xs, av[:, None] + np.abs(xs), nmax=31, rmin=-0.5, rdelta=0.1, nstep=15)
    scales = scales.reshape(n, 8)
    mins = mins.reshape(n, 8)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_scale = np.divide(f32(63), max_scale, out=np.zeros_like(max_scale), where=max_scale > 0)
    inv_min = np.divide(f32(63), max_min, out=np.zeros_like(max_min), where=max_min > 0)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d = (max_scale / f32(63)).astype(np.float16).astype(f32)
    dmin = (max_min / f32(63)).astype(np.float16).astype(f32)

    d_sub = (d[:, None] * ls).reshape(n * 8, 1)
    m_sub = (dmin[:, None] * lm).reshape(n * 8, 1)
    t = np.divide(xs + m_sub, d_sub, out=np.zeros_like(xs), where=d_sub != 0)
    L = np.clip(np.rint(t), 0, 31).astype(np.uint8).reshape(n, 8, SUB)
    qh = np.zeros((n, SUB), np.uint8)
    for s in range(8):
        qh |= (L[:, s] >> 4) << np.uint8(s)
    L = (L & np.uint8(15)).reshape(n, 4, 2, SUB)
    qs = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(n, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scales(ls, lm), qh, qs], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 176]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 176] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    d = f16_field(b, 0)[..., None]
    dmin = f16_field(b, 2)[..., None]
    sc, m = unpack_scales(b[..., 4:16])
    qs = b[..., 48:].reshape(rows, nsb, 4, 1, SUB)
    lo = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=3).reshape(rows, nsb, 8, SUB)
    qh = b[..., 16:48].reshape(rows, nsb, 1, SUB) >> np.arange(8, dtype=np.uint8).reshape(8, 1)
    q = lo | ((qh & np.uint8(1)) << np.uint8(4))
    scale = (d * sc.astype(np.float32))[..., None]
    offset = (dmin * m.astype(np.float32))[..., None]
    return (scale * q.astype(np.float32) - offset).reshape(rows, cols)


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 176]) into dst float32 [256] (see common.put)."""
    sub = dst.shape[0] // 8  # 32, from the shapes (see q8_0)
    o = i * TYPE_SIZE
    d = f16_at(row, o)
    dmin = f16_at(row, o + 2)
    packed = row[o + 4: o + 16]
    qh = row[o + 16: o + 16 + sub]
    for c in range(4):  # chunk c: sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        s0, m0 = scale_min(packed, 2 * c)
        s1, m1 = scale_min(packed, 2 * c + 1)
        d0 = d * np.float32(s0)
        d1 = d * np.float32(s1)
        n0 = dmin * np.float32(m0)
        n1 = dmin * np.float32(m1)
        qs = row[o + 48 + c * sub: o + 48 + c * sub + sub]
        e0 = 2 * c * sub
        y0, y1 = dst[e0: e0 + sub], dst[e0 + sub: e0 + 2 * sub]
        x0, x1 = xb[e0: e0 + sub], xb[e0 + sub: e0 + 2 * sub]
        for l in range(sub):
            v = np.int32(qs[l])
            h = np.int32(qh[l]) >> (2 * c)
            put(y0, l, d0 * np.float32((v & 15) | ((h & 1) << 4)) - n0, x0, dot)
            put(y1, l, d1 * np.float32((v >> 4) | ((h & 2) << 3)) - n1, x1, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q4_K's step (two 32-byte chunks: sub-blocks 0, 2 in the low nibbles, 1, 3 in the
# high ones, K_ORDER activations) with each sub-block's fifth bits moved to bit 4 of its bytes: the
# 32 qh bytes hold bit s for sub-block s, so one shift per sub-block, concatenated per pair, then & 16.
# Levels 0..31 are centred on 16.
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_vnni(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 256 * 176], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nsb = x.shape[0] // 256
    H, L, sx, r16, xe = prepare(x, K_ORDER)
    nb = 8 * nsb
    cx = empty64(nb, np.float32)
    for b in range(nb):
        cx[b] = centre(16, sx[b], r16[2 * b] + r16[2 * b + 1], xe[b], 1)
    for r in prange(rows):
        row = blocks[r]
        acc0 = splat(np.float32(0.0), 16)
        acc1 = splat(np.float32(0.0), 16)
        acc8 = splat(np.float32(0.0), 8)  # per sub-block: centring terms and minimums
        for i in range(nsb):
            o = i * 176
            scm = _q4k_scales(row, o)
            sd = FIRST8(scm) * splat(f16_at(row, o), 8)  # d * sc
            cs = sd * load(sx, 8 * i, 8)
            acc8 = fma(sd, load(cx, 8 * i, 8), acc8)
            acc8 = fma(LAST8(scm) * splat(-f16_at(row, o + 2), 8), load(xe, 8 * i, 8), acc8)
            h = load(row, o + 16, 32)
            p = 256 * i
            q = load(row, o + 48, 64)
            b0 = CAT32(h << 4, h << 2) & np.uint8(16)  # sub-blocks 0, 2: bits 0, 2 of qh
            b1 = CAT32(h << 3, h << 1) & np.uint8(16)  # sub-blocks 1, 3
            acc0 = fma(sitofp(byte_dot((q & np.uint8(15)) | b0, H, L, p)), K_S0(cs), acc0)
            acc0 = fma(sitofp(byte_dot((q >> 4) | b1, H, L, p + 64)), K_S1(cs), acc0)
            q = load(row, o + 112, 64)
            b2 = CAT32(h, h >> 2) & np.uint8(16)  # sub-blocks 4, 6
            b3 = CAT32(h >> 1, h >> 3) & np.uint8(16)  # sub-blocks 5, 7
            acc1 = fma(sitofp(byte_dot((q & np.uint8(15)) | b2, H, L, p + 128)), K_S2(cs), acc1)
            acc1 = fma(sitofp(byte_dot((q >> 4) | b3, H, L, p + 192)), K_S3(cs), acc1)
        out[r] = hsum(acc0 + acc1) + hsum(acc8)


PREFILL = 32, 16, True  # VNNI prefill: k-blocks of a sub-block, levels centred on 16, minimums


@njit(inline="always")
def prefill_block(row, kb):
    """Sub-block j = kb % 8 of super-block kb // 8, for the VNNI prefill: (its 32 levels as <32 x u8>,
    its scale d * sc[j], its minimum -dmin * m[j])."""
    j = kb & 7
    o = (kb >> 3) * 176
    q = load(row, o + 48 + 32 * (j >> 1), 32)
    bits = ((load(row, o + 16, 32) >> j) & np.uint8(1)) << 4
    sc, mn = scale_min(row[o + 4: o + 16], j)
    nib = q & np.uint8(15) if (j & 1) == 0 else q >> 4
    return nib | bits, f16_at(row, o) * np.float32(sc), -f16_at(row, o + 2) * np.float32(mn)
