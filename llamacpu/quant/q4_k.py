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
from numba import njit

from ..kernels.simd import bitcast, fma, fp16_to_f32, hsum, load, shuffle, shuffle2, sitofp, splat, zext
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .vnni import CAT32, FIRST8, K_ORDER, byte_dot, centre, each4, empty64, matmul, prepare_tokens, put8

ID = 3  # this format's index in kernels.MODULES
NAME = "q4_k"
GGML_TYPE = GGMLQuantizationType.Q4_K
BLOCK, SUB = 256, 32  # weights per super-block (8 sub-blocks), per sub-block
TYPE_SIZE = 144
VNNI = 144, 16, False, 8  # decode (setup_k, dot_k): super-block bytes, nibbles at 16, no fifth bits, centre 8
PREFILL = 32, 8, True  # VNNI prefill: k-block columns (a sub-block), levels centred on 8, minimums


# ---------------------------------------------------------------------------------------------
# NumPy reference
# ---------------------------------------------------------------------------------------------

def make_qkx2(x: np.ndarray, w: np.ndarray, nmax: int = 15, rmin: float = -1.0, rdelta: float = 0.1,
              nstep: int = 20, mad: bool = False):
    """ggml's make_qkx2_quants on every row of x [N, n] with weights w [N, n] (squared error, or the
    absolute error with `mad` as Q2_K asks). Shared by Q5_K and Q2_K.

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
    best_err = (w * (np.abs(diff) if mad else diff * diff)).sum(axis=1)

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
        err = (w * (np.abs(diff) if mad else diff * diff)).sum(axis=1)
        better = ok & (err < best_err)
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
        best_min = np.where(better, offset, best_min)

    best_scale = np.where(flat, f32(0), best_scale)
    return best_scale.astype(f32), (-best_min).astype(f32)


def fit_subblocks(x: np.ndarray, sub: int, nmax: int, top: int, rms: bool, **grid):
    """The K-quants with minimums (Q4_K, Q5_K, Q2_K), as ggml's quantize_row_q*_K_ref, vectorized: each
    sub-block of `sub` elements of the super-blocks x float32 [N, 256] fitted by make_qkx2 (levels
    0..nmax, weights rms(x) + |x| with `rms`, else |x|; `grid`: its search), the scales and minimums
    quantized to 0..top against the largest of their super-block (d, dmin in fp16), and every element
    re-rounded against its stored pair. Returns (ls, lm uint8 [N, 256 // sub], d, dmin float32 [N],
    L uint8 [N, 256])."""
    f32 = np.float32
    n, k = x.shape[0], BLOCK // sub
    xs = x.reshape(n * k, sub)
    w = np.abs(xs)
    if rms:
        w = np.sqrt((xs * xs).sum(axis=1) / f32(sub))[:, None] + w
    scales, mins = make_qkx2(xs, w, nmax=nmax, **grid)
    scales = scales.reshape(n, k)
    mins = mins.reshape(n, k)
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_scale = np.divide(f32(top), max_scale, out=np.zeros_like(max_scale), where=max_scale > 0)
    inv_min = np.divide(f32(top), max_min, out=np.zeros_like(max_min), where=max_min > 0)
    ls = np.clip(np.rint(inv_scale[:, None] * scales), 0, top).astype(np.uint8)  # [N, k]
    lm = np.clip(np.rint(inv_min[:, None] * mins), 0, top).astype(np.uint8)
    d = (max_scale / f32(top)).astype(np.float16).astype(f32)
    dmin = (max_min / f32(top)).astype(np.float16).astype(f32)
    d_sub = (d[:, None] * ls).reshape(n * k, 1)  # stored sub-block scale and minimum
    m_sub = (dmin[:, None] * lm).reshape(n * k, 1)
    t = np.divide(xs + m_sub, d_sub, out=np.zeros_like(xs), where=d_sub != 0)
    return ls, lm, d, dmin, np.clip(np.rint(t), 0, nmax).astype(np.uint8).reshape(n, BLOCK)


def pack_scales(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """6-bit scales and minimums uint8 [N, 8] each -> the 12 packed bytes [N, 12] (Q4_K's, Q5_K's)."""
    packed = np.empty((ls.shape[0], 12), np.uint8)
    packed[:, 0:4] = ls[:, 0:4] | ((ls[:, 4:8] >> 4) << 6)
    packed[:, 4:8] = lm[:, 0:4] | ((lm[:, 4:8] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    return packed


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 144]."""
    ls, lm, d, dmin, L = fit_subblocks(x, SUB, 15, 63, True)
    L = L.reshape(-1, 4, 2, SUB)
    qs = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(-1, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scales(ls, lm), qs], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 144]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


def unpack_scales(packed: np.ndarray):
    """uint8 [..., 12] -> (sc, m) uint8 [..., 8] each (ggml's get_scale_min_k4 for j = 0..7)."""
    a, b, c = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    sc = np.concatenate([a & 63, (c & 0xF) | ((a >> 6) << 4)], axis=-1)
    m = np.concatenate([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=-1)
    return sc, m


def nibble_chunks(b: np.ndarray, o: int) -> np.ndarray:
    """The 4 chunks of 32 bytes of nibbles at byte o of super-blocks b [R, nsb, bytes] -> levels
    [R, nsb, 8, 32] (chunk c: sub-block 2c in the low nibbles, 2c + 1 in the high ones)."""
    qs = b[..., o: o + 128].reshape(*b.shape[:2], 4, 1, SUB)
    return np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=3).reshape(*b.shape[:2], 8, SUB)


def scale_subblocks(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Q4_K's and Q5_K's values: (d * sc) * q - dmin * m for super-blocks b [R, nsb, bytes] and their levels
    q [R, nsb, 8, 32], as float32 [R, nsb * 256]."""
    sc, m = unpack_scales(b[..., 4:16])
    scale = (f16_field(b, 0)[..., None] * sc.astype(np.float32))[..., None]
    offset = (f16_field(b, 2)[..., None] * m.astype(np.float32))[..., None]
    return (scale * q.astype(np.float32) - offset).reshape(b.shape[0], b.shape[1] * BLOCK)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 144] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    return scale_subblocks(b, nibble_chunks(b, 16))


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



@njit(inline="always")
def decode_k(row, i, dst, xb, dot, spec):
    """Super-block i of a row of Q4_K or Q5_K (spec = VNNI: super-block bytes, offset of the nibbles, fifth
    bits) into dst float32 [256] (see common.put)."""
    size, qs, high = spec[0], spec[1], spec[2]
    sub = dst.shape[0] // 8  # 32, from the shapes (see q8_0)
    o = i * size
    d = f16_at(row, o)
    dmin = f16_at(row, o + 2)
    packed = row[o + 4: o + 16]
    qh = row[o + 16: o + 16 + sub]  # Q5_K: bit s of qh[l] is bit 4 of element l of sub-block s
    for c in range(4):  # chunk c: sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles)
        s0, m0 = scale_min(packed, 2 * c)
        s1, m1 = scale_min(packed, 2 * c + 1)
        d0 = d * np.float32(s0)
        d1 = d * np.float32(s1)
        n0 = dmin * np.float32(m0)
        n1 = dmin * np.float32(m1)
        q = row[o + qs + c * sub: o + qs + c * sub + sub]
        e0 = 2 * c * sub
        y0, y1 = dst[e0: e0 + sub], dst[e0 + sub: e0 + 2 * sub]
        x0, x1 = xb[e0: e0 + sub], xb[e0 + sub: e0 + 2 * sub]
        for l in range(sub):
            v = np.int32(q[l])
            h = (np.int32(qh[l]) >> (2 * c)) if high else np.int32(0)
            put(y0, l, d0 * np.float32((v & 15) | ((h & 1) << 4)) - n0, x0, dot)
            put(y1, l, d1 * np.float32((v >> 4) | ((h & 2) << 3)) - n1, x1, dot)


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 144]) into dst float32 [256] (see decode_k)."""
    decode_k(row, i, dst, xb, dot, VNNI)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: two 32-byte chunks per step: sub-blocks (0, 2) in the low nibbles, (1, 3)
# in the high ones; activations stored in that sub-block order (K_ORDER). The 6-bit scales and
# minimums are unpacked with 4-lane integer operations once per super-block.
# ---------------------------------------------------------------------------------------------

# scale unpacking (4 x u32 lanes w0, w1, w2, junk = bytes 4..19 of the super-block)
K_X = shuffle([0, 2, 1, 2])
K_Y = shuffle([0, 0, 1, 1])
K_T = shuffle2([0, 5, 2, 3])
K_U = shuffle2([0, 1, 2, 7])
# cs = 8 sub-block scales -> the lanes of the two accumulators of each 128-element step
K_S0, K_S1, K_S2, K_S3 = [shuffle([a] * 8 + [b] * 8) for a, b in ((0, 2), (1, 3), (4, 6), (5, 7))]
K_DM = shuffle([0] * 8 + [1] * 8)  # (d, dmin) -> d on the scales' lanes, dmin on the minimums'


@njit(inline="always")
def _q4k_scales(row, o):
    """The 8 sub-block scales and 8 minimums of the super-block at byte o, as float32 <16> (scales in
    lanes 0..7, minimums in 8..15): ggml's get_scale_min_k4 on four 32-bit lanes at once."""
    w = bitcast(load(row, o + 4, 16), np.uint32)  # w0 = bytes 0..3 of the packed scales, w1, w2, junk
    X = K_X(w)  # w0, w2, w1, w2
    Y = K_Y(w)  # w0, w0, w1, w1
    lo6 = X & np.uint32(0x3F3F3F3F)  # lanes 0, 2: sc[0..3], m[0..3]
    top = ((Y >> 6) & np.uint32(0x03030303)) << 4  # lanes 1, 3: the top 2 bits of sc[4..7], m[4..7]
    sc_hi = (X & np.uint32(0x0F0F0F0F)) | top  # lane 1: sc[4..7]
    m_hi = ((X >> 4) & np.uint32(0x0F0F0F0F)) | top  # lane 3: m[4..7]
    packed = K_U(K_T(lo6, sc_hi), m_hi)  # sc[0..3], sc[4..7], m[0..3], m[4..7]
    return sitofp(zext(bitcast(packed, np.uint8), np.int32))


@njit(inline="always")
def setup_k(X, spec):
    """Per call (the family of Q4_K and Q5_K, spec = VNNI): the planes of every token (K_ORDER) and, per
    super-block, 16 floats: the centring terms of its 8 sub-blocks (levels centred on spec[3]), then
    minus their exact x sums (what dmin * m multiplies)."""
    n, C = X.shape
    nb = C // 32
    H, L, sx, r16, xe = prepare_tokens(X, K_ORDER)
    cxe = empty64(2 * n * nb, np.float32)
    for e in range(n * nb):
        cxe[16 * (e >> 3) + (e & 7)] = centre(spec[3], sx[e], r16[2 * e] + r16[2 * e + 1], xe[e], 1)
        cxe[16 * (e >> 3) + 8 + (e & 7)] = -xe[e]
    return H, L, sx, cxe, C


@njit(inline="always")
def dot_k(row, ctx, t, step, spec):
    """Row . token t (spec = (super-block bytes, offset of the nibbles, fifth bits, centre)): one super-block
    (two 64-byte chunks of nibbles) per step. Its d and dmin are converted together and multiply the
    16 unpacked scales and minimums in one vector, which then meets the 16 per-super-block terms of
    setup_k in one FMA. With fifth bits (Q5_K) each sub-block's are moved to bit 4 of its bytes: the
    32 qh bytes at 16 hold bit s for sub-block s, so one shift per sub-block, concatenated per pair of
    sub-blocks that share a 64-byte half, then & 16."""
    size, qs, high = spec[0], spec[1], spec[2]
    H, L, sx, cxe, C = ctx
    nsb = C // 256
    p0 = t * C
    e0 = t * (C // 32)
    acc0 = splat(np.float32(0.0), 16)  # two accumulators: chunks 0-1 and 2-3 (shorter FMA chains)
    acc1 = splat(np.float32(0.0), 16)
    acc16 = splat(np.float32(0.0), 16)  # per sub-block: centring terms (lanes 0..7) and minimums (8..15)
    for i in range(nsb):
        o = i * size
        sdm = _q4k_scales(row, o) * K_DM(fp16_to_f32(bitcast(load(row, o, 4), np.int16)))  # d sc, dmin m
        cs = FIRST8(sdm) * load(sx, e0 + 8 * i, 8)
        acc16 = fma(sdm, load(cxe, 2 * e0 + 16 * i, 16), acc16)
        lo0 = load(row, o + qs, 64)
        lo1 = load(row, o + qs + 64, 64)
        # chunks 0, 1: sub-blocks 0, 2 in the low nibbles and 1, 3 in the high ones; chunks 2, 3: 4..7
        q0, q1, q2, q3 = lo0 & np.uint8(15), lo0 >> 4, lo1 & np.uint8(15), lo1 >> 4
        if high:
            h = load(row, o + 16, 32)
            q0 = q0 | (CAT32(h << 4, h << 2) & np.uint8(16))  # sub-blocks 0, 2: bits 0, 2 of qh
            q1 = q1 | (CAT32(h << 3, h << 1) & np.uint8(16))  # 1, 3
            q2 = q2 | (CAT32(h, h >> 2) & np.uint8(16))  # 4, 6
            q3 = q3 | (CAT32(h >> 1, h >> 3) & np.uint8(16))  # 5, 7
        p = p0 + 256 * i
        acc0 = fma(sitofp(byte_dot(q0, H, L, p)), K_S0(cs), acc0)
        acc0 = fma(sitofp(byte_dot(q1, H, L, p + 64)), K_S1(cs), acc0)
        acc1 = fma(sitofp(byte_dot(q2, H, L, p + 128)), K_S2(cs), acc1)
        acc1 = fma(sitofp(byte_dot(q3, H, L, p + 192)), K_S3(cs), acc1)
    return hsum(acc0 + acc1) + hsum(acc16)


DOT4_K = each4(dot_k)  # four tokens: four passes (see vnni.decode_rows)


@njit(inline="always")
def prefill_k(row, kb, spec):
    """Sub-block j = kb % 8 of super-block kb // 8 (chunk j // 2, low nibbles for even j; spec as dot_k's),
    for the VNNI prefill: (its 32 levels as <32 x u8>, its scale d * sc[j], its minimum -dmin * m[j])."""
    size, qs, high = spec[0], spec[1], spec[2]
    j = kb & 7
    o = (kb >> 3) * size
    q = load(row, o + qs + 32 * (j >> 1), 32)
    levels = q & np.uint8(15) if (j & 1) == 0 else q >> 4
    if high:
        levels = levels | (((load(row, o + 16, 32) >> j) & np.uint8(1)) << 4)
    sc, mn = scale_min(row[o + 4: o + 16], j)
    return levels, f16_at(row, o) * np.float32(sc), -f16_at(row, o + 2) * np.float32(mn)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of a super-block, prefill k-blocks of a sub-block."""
    matmul(setup_k, dot_k, DOT4_K, None, VNNI, 0, decode_block, prefill_k, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
