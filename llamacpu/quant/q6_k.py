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
from numba import njit

from ..kernels.simd import bitcast, fma, hsum, load, sext, shuffle, sitofp, splat
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .vnni import CAT32, NATURAL, byte_dot, centre, each4, empty64, matmul, prepare_tokens, put4

ID = 4  # this format's index in kernels.MODULES
NAME = "q6_k"
GGML_TYPE = GGMLQuantizationType.Q6_K
BLOCK, SUB = 256, 16  # weights per super-block (16 sub-blocks), per sub-block
TYPE_SIZE = 210
PREFILL = 16, 32, False  # VNNI prefill: k-block columns (a sub-block), level offset (q - 32), minimums
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
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


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


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 210]) into dst float32 [256] (see common.put)."""
    sub = dst.shape[0] // 16  # 16, from the shapes (see q8_0)
    o = i * TYPE_SIZE
    d = f16_at(row, o + 208)
    for h in range(2):
        ql = row[o + 64 * h: o + 64 * h + 64]
        qh = row[o + 128 + 32 * h: o + 128 + 32 * h + 32]
        for p in range(2):  # l in [16p, 16p + 16): sub-blocks 8h + p + 2k for quarter k
            s = 8 * h + p
            d0 = d * np.float32(np.int8(row[o + 192 + s]))
            d1 = d * np.float32(np.int8(row[o + 194 + s]))
            d2 = d * np.float32(np.int8(row[o + 196 + s]))
            d3 = d * np.float32(np.int8(row[o + 198 + s]))
            a = ql[p * sub: p * sub + sub]
            b = ql[32 + p * sub: 32 + p * sub + sub]
            c = qh[p * sub: p * sub + sub]
            e = 128 * h + p * sub
            y0, y1, y2, y3 = dst[e: e + sub], dst[e + 32: e + 32 + sub], dst[e + 64: e + 64 + sub], dst[e + 96: e + 96 + sub]
            x0, x1, x2, x3 = xb[e: e + sub], xb[e + 32: e + 32 + sub], xb[e + 64: e + 64 + sub], xb[e + 96: e + 96 + sub]
            for l in range(sub):
                va = np.int32(a[l])
                vb = np.int32(b[l])
                vc = np.int32(c[l])
                put(y0, l, d0 * np.float32(((va & 15) | ((vc & 3) << 4)) - 32), x0, dot)
                put(y1, l, d1 * np.float32(((vb & 15) | (((vc >> 2) & 3) << 4)) - 32), x1, dot)
                put(y2, l, d2 * np.float32(((va >> 4) | (((vc >> 4) & 3) << 4)) - 32), x2, dot)
                put(y3, l, d3 * np.float32(((vb >> 4) | (((vc >> 6) & 3) << 4)) - 32), x3, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). The family of the K-quants with 16 sub-blocks of 16 (Q6_K, Q3_K, Q2_K): one
# super-block per step, its levels as four 64-byte vectors in natural order (NATURAL activations), each
# sub-block's scale on the 4 lanes of its 16 elements; the level offset or centring term and the
# minimums per sub-block, 16 at a time.
# ---------------------------------------------------------------------------------------------

# 16 sub-block scales -> 4 lanes each, for each 64-element quarter of a super-block
Q6_S0, Q6_S1, Q6_S2, Q6_S3 = [shuffle([j0 + i // 4 for i in range(16)]) for j0 in (0, 4, 8, 12)]
SPREAD2X8 = shuffle([i // 2 for i in range(16)])  # 8 x-block scales -> 16 sub-block lanes
VNNI = 210, 32, False  # setup_16 / dot_16: super-block bytes, level offset (q - 32), minimums


@njit(inline="always")
def setup_16(X, spec):
    """Per call: the planes of every token and, per sub-block j of 16, cx[j] = k * (sum(x) - sx * sum(x16)):
    with minimums (spec[2]) the centring term on k = spec[1], and the exact sums of x (xs) for the
    minimums; without, the correction of the level offset k (sum(x) taken as 0)."""
    k, has_min = spec[1], spec[2]
    n, C = X.shape
    H, L, sx, r16, xe = prepare_tokens(X, NATURAL)
    nsub = C // 16
    cx = empty64(n * nsub, np.float32)
    xs = empty64(n * nsub, np.float32)
    for t in range(n):
        for j in range(nsub):
            s = np.float32(0.0)
            if has_min:
                for l in range(16):
                    s += X[t, 16 * j + l]
            xs[t * nsub + j] = s
            cx[t * nsub + j] = centre(k, sx[(t * nsub + j) >> 1], r16[t * nsub + j], s, 1)
    return H, L, sx, cx, xs, C


@njit(inline="always")
def dot_16(row, ctx, t, step, spec):
    """Row . token t, one super-block of spec[0] bytes per step: `step(row, o)` gives its levels as four
    64-byte vectors (elements 0..63, .., 192..255), its 16 sub-block scales and its 16 negated minimums."""
    H, L, sx, cx, xs, C = ctx
    nsb = C // 256
    p0 = t * C
    e0 = t * (C // 32)  # this token's x-block scales
    c0 = t * (C // 16)  # and sub-block terms
    acc0 = splat(np.float32(0.0), 16)  # three accumulators: shorter FMA chains
    acc1 = splat(np.float32(0.0), 16)
    accc = splat(np.float32(0.0), 16)
    for i in range(nsb):
        q0, q1, q2, q3, dsc, mneg = step(row, i * spec[0])
        cs = dsc * SPREAD2X8(load(sx, e0 + 8 * i, 8))  # per sub-block
        accc = fma(dsc, load(cx, c0 + 16 * i, 16), accc)
        if spec[2]:
            accc = fma(mneg, load(xs, c0 + 16 * i, 16), accc)
        p = p0 + 256 * i
        acc0 = fma(sitofp(byte_dot(q0, H, L, p)), Q6_S0(cs), acc0)
        acc0 = fma(sitofp(byte_dot(q1, H, L, p + 64)), Q6_S1(cs), acc0)
        acc1 = fma(sitofp(byte_dot(q2, H, L, p + 128)), Q6_S2(cs), acc1)
        acc1 = fma(sitofp(byte_dot(q3, H, L, p + 192)), Q6_S3(cs), acc1)
    return hsum((acc0 + acc1) + accc)


DOT4 = each4(dot_16)  # four tokens: four passes (see vnni.decode_rows); Q2_K and Q3_K use it too


@njit(inline="always")
def _step(row, o):
    """The super-block at byte o: 64 bytes of low bits and 32 bytes of high bits per 128-element half make
    two 64-byte vectors of 6-bit levels; int8 scales times d; no minimums."""
    dsc = sitofp(sext(bitcast(load(row, o + 192, 16), np.int8), np.int32)) * splat(f16_at(row, o + 208), 16)
    a = load(row, o, 64)  # low 4 bits: elements l (bytes 0..31), l + 32 (32..63)
    c = load(row, o + 128, 32)  # high 2 bits of l, l+32, l+64, l+96 in bits 0-1 .. 6-7
    c2 = CAT32(c, c >> 2)  # bits 0-1: elements l, l + 32; bits 4-5: l + 64, l + 96
    b = load(row, o + 64, 64)
    d = load(row, o + 160, 32)
    d2 = CAT32(d, d >> 2)
    return ((a & np.uint8(15)) | ((c2 << 4) & np.uint8(0x30)), (a >> 4) | (c2 & np.uint8(0x30)),
            (b & np.uint8(15)) | ((d2 << 4) & np.uint8(0x30)), (b >> 4) | (d2 & np.uint8(0x30)), dsc,
            splat(np.float32(0.0), 16))


@njit(inline="always")
def prefill_block(row, kb, spec):
    """Sub-block s = kb % 16 (16 columns; half h, quarter qq, part p with s = 8h + 2qq + p), for the VNNI
    prefill: (its 16 levels as <16 x u8>, its scale d * sc[s], no minimum)."""
    s = kb & 15
    h = s >> 3
    qq = (s >> 1) & 3
    p = s & 1
    o = (kb >> 4) * 210
    a = load(row, o + 64 * h + 32 * (qq & 1) + 16 * p, 16)
    c = load(row, o + 128 + 32 * h + 16 * p, 16)
    lo = a & np.uint8(15) if qq < 2 else a >> 4
    if qq == 0:
        hi = c << 4
    elif qq == 1:
        hi = c << 2
    elif qq == 2:
        hi = c
    else:
        hi = c >> 2
    return lo | (hi & np.uint8(0x30)), f16_at(row, o + 208) * np.float32(np.int8(row[o + 192 + s])), np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of a half super-block, prefill k-blocks of a sub-block (16)."""
    matmul(setup_16, dot_16, DOT4, _step, VNNI, 0, decode_block, prefill_block, put4, PREFILL, a, b, c, X, oa, ob, oc, prefill)
