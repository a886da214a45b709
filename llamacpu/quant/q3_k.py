"""Q3_K: 3-bit weights in super-blocks of 256 = 16 sub-blocks of 16, each with a signed 6-bit scale, and
one fp16 super-scale (ggml's GGML_TYPE_Q3_K, 3.4375 bits/weight).

Super-block layout (110 bytes, identical to ggml's `block_q3_K`):

    offset  size  field
    0       32    hmask    the high bits: bit 4c + s of hmask[l] belongs to element 128c + 32s + l
    32      64    qs       low 2 bits, as Q2_K's: element 128c + 32s + l is (qs[32c + l] >> 2s) & 3
    96      12    scales   16 scales of 6 bits: low 4 bits of sc[k] in scales[k] & 0xF (k < 8) or
                           scales[k - 8] >> 4 (k >= 8), high 2 bits (scales[8 + k % 4] >> 2 (k // 4)) & 3
    108     2     d        fp16 super-scale

    value = (d * (sc[k] - 32)) * q,  q = low bits - (0 if the high bit is set else 4), in -4..3

Quantization follows ggml's `quantize_row_q3_K_ref` (llama.cpp's choice without an importance matrix),
vectorized over sub-blocks: `make_q3_quants` (start from -4 / max, then up to 5 rounds of coordinate
descent on the levels under weights x^2), the 16 scales quantized to 6 bits against the one of largest
magnitude, every element re-rounded against its stored scale.
Error bound: with d_k = d * (sc[k] - 32), elements inside [-4 |d_k|, 3 |d_k|] (signed by d_k) are within
|d_k| / 2; clipped ones are off by their distance to that range plus |d_k| / 2.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import load, shuffle, shuffle2, sitofp, splat, zext
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .q2_k import pack2, unpack2
from .q6_k import DOT4, dot_16, setup_16
from .vnni import CAT32, matmul, put4

ID = 10  # this format's index in kernels.MODULES
NAME = "q3_k"
GGML_TYPE = GGMLQuantizationType.Q3_K
BLOCK, SUB = 256, 16  # weights per super-block (16 sub-blocks), per sub-block
TYPE_SIZE = 110
GROUP_MAX_EPS = 1e-15


def make_q3(x: np.ndarray, nmax: int = 4) -> np.ndarray:
    """ggml's make_q3_quants(n, nmax, x, L, do_rmse=true) on every row of x [N, n]: the scale [N]."""
    f32 = np.float32
    imax = np.abs(x).argmax(axis=1)[:, None]
    big = np.take_along_axis(x, imax, axis=1)[:, 0]
    zero = np.abs(big) < GROUP_MAX_EPS
    big = np.where(zero, f32(1), big)
    L = np.clip(np.rint((f32(-nmax) / big)[:, None] * x), -nmax, nmax - 1).astype(f32)
    w = x * x
    sumlx = (w * x * L).sum(axis=1)
    suml2 = (w * L * L).sum(axis=1)
    for _ in range(5):
        for i in range(x.shape[1]):
            wi, xi, li = w[:, i], x[:, i], L[:, i]
            slx = sumlx - wi * xi * li
            sl2 = suml2 - wi * li * li
            ok = slx > 0
            new = np.clip(np.rint(np.divide(xi * sl2, slx, out=np.zeros_like(slx), where=ok)), -nmax, nmax - 1)
            slx2 = slx + wi * xi * new
            sl22 = sl2 + wi * new * new
            take = ok & (new != li) & (sl22 > 0) & (slx2 * slx2 * suml2 > sumlx * sumlx * sl22)
            L[:, i] = np.where(take, new, li)
            sumlx = np.where(take, slx2, sumlx)
            suml2 = np.where(take, sl22, suml2)
    scale = np.divide(sumlx, suml2, out=np.zeros_like(sumlx), where=suml2 > 0)
    return np.where(zero, f32(0), scale).astype(f32)


def pack_scales(l: np.ndarray) -> np.ndarray:
    """6-bit scales uint8 [N, 16] (stored values, sc + 32) -> the 12 packed bytes [N, 12]."""
    lo = l & np.uint8(0xF)
    hi = l >> np.uint8(4)
    packed = np.empty((l.shape[0], 12), np.uint8)
    packed[:, 0:8] = lo[:, 0:8] | (lo[:, 8:16] << np.uint8(4))
    packed[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return packed


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 110]."""
    f32 = np.float32
    n = x.shape[0]
    xs = x.reshape(n * 16, SUB)
    scales = make_q3(xs).reshape(n, 16)
    big = np.take_along_axis(scales, np.abs(scales).argmax(axis=1)[:, None], axis=1)[:, 0]
    nz = big != 0
    iscale = np.divide(f32(-32), big, out=np.zeros_like(big), where=nz)
    l = np.clip(np.rint(iscale[:, None] * scales), -32, 31) + 32
    l = np.where(nz[:, None], l, 0).astype(np.uint8)  # ggml leaves all scale bytes 0 when max_scale is 0
    d = np.divide(f32(1), iscale, out=np.zeros_like(iscale), where=nz).astype(np.float16).astype(f32)
    dl = (d[:, None] * (l.astype(np.int8) - np.int8(32)).astype(f32)).reshape(n * 16, 1)
    t = np.divide(xs, dl, out=np.zeros_like(xs), where=dl != 0)
    L = (np.clip(np.rint(t), -4, 3) + 4).astype(np.uint8).reshape(n, 256)
    high = L > 3
    hmask = np.zeros((n, 32), np.uint8)
    for j in range(8):
        hmask |= high[:, 32 * j: 32 * j + 32].astype(np.uint8) << np.uint8(j)
    L = np.where(high, L - np.uint8(4), L)
    return np.concatenate([hmask, pack2(L), pack_scales(l), f16_bytes(d)], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 110]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


def unpack_scales(packed: np.ndarray) -> np.ndarray:
    """The 12 packed bytes [..., 12] -> the signed scales sc - 32 as int8 [..., 16]."""
    lo = np.concatenate([packed[..., 0:8] & np.uint8(0xF), packed[..., 0:8] >> np.uint8(4)], axis=-1)
    hi = (packed[..., None, 8:12] >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & np.uint8(3)
    hi = hi.reshape(*packed.shape[:-1], 16)
    return (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 110] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    d = f16_field(b, 108)[..., None]
    dl = (d * unpack_scales(b[..., 96:108]).astype(np.float32))[..., None]
    low = unpack2(b[..., 32:96]).astype(np.int8)
    high = (b[..., None, 0:32] >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & np.uint8(1)
    q = low - ((high.reshape(rows, nsb, 256) ^ np.uint8(1)) << np.uint8(2)).astype(np.int8)
    return (dl * q.reshape(rows, nsb, 16, SUB).astype(np.float32)).reshape(rows, cols)


@njit(inline="always")
def scale_at(row, o, k):
    """The signed scale sc[k] - 32 of the super-block at byte o, as int32."""
    lo = (np.int32(row[o + 96 + k]) & 15) if k < 8 else (np.int32(row[o + 96 + k - 8]) >> 4)
    hi = (np.int32(row[o + 104 + (k & 3)]) >> (2 * (k >> 2))) & 3
    return (lo | (hi << 4)) - 32


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 110]) into dst float32 [256] (see common.put)."""
    o = i * TYPE_SIZE
    d = f16_at(row, o + 108)
    sub = dst.shape[0] // 16  # 16, from the shapes (see q8_0)
    for c in range(2):
        for s in range(4):
            bit = 4 * c + s
            for half in range(2):  # the two sub-blocks of this run of 32
                k = 8 * c + 2 * s + half
                dl = d * np.float32(scale_at(row, o, k))
                qs = row[o + 32 + 32 * c + sub * half: o + 32 + 32 * c + sub * half + sub]
                hm = row[o + sub * half: o + sub * half + sub]
                e = 16 * k
                y, xk = dst[e: e + sub], xb[e: e + sub]
                for l in range(sub):
                    q = ((np.int32(qs[l]) >> (2 * s)) & 3) - 4 + 4 * ((np.int32(hm[l]) >> bit) & 1)
                    put(y, l, dl * np.float32(q), xk, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q6_K's family (q6_k.setup_16 / dot_16) with levels u = low bits + 4 * high bit in
# 0..7, offset 4; the 16 signed 6-bit scales unpacked 16 lanes at a time.
# ---------------------------------------------------------------------------------------------

VNNI = 110, 4, False  # q6_k.setup_16 / dot_16: super-block bytes, level offset (u - 4), minimums
PREFILL = 16, 4, False  # VNNI prefill: k-blocks of a sub-block, level offset (u - 4), minimums
CAT8 = shuffle2(list(range(16)))  # two <8 x u8> -> <16 x u8>
SPREAD4 = shuffle([k & 3 for k in range(16)])  # scales[8 + k % 4] for lane k
Q3_SHIFTS = np.array([2 * (k >> 2) for k in range(16)], np.int32)  # where sub-block k's high scale bits are


@njit(inline="always")
def _step(row, o):
    """The super-block at byte o: runs of 32 elements as Q2_K's, each level's high bit from hmask (bit
    4 c + s of hmask[l] for run s of chunk c) moved to bit 2."""
    h = load(row, o, 32)
    qa = load(row, o + 32, 32)
    qb = load(row, o + 64, 32)
    four = np.uint8(4)
    a = load(row, o + 96, 8)
    hi = (zext(SPREAD4(load(row, o + 104, 4)), np.int32) >> load(Q3_SHIFTS, 0, 16)) & np.int32(3)
    dsc = sitofp((zext(CAT8(a & np.uint8(15), a >> 4), np.int32) | (hi << 4)) - np.int32(32)) * splat(f16_at(row, o + 108), 16)
    return (CAT32((qa & np.uint8(3)) | ((h << 2) & four), ((qa >> 2) & np.uint8(3)) | ((h << 1) & four)),
            CAT32(((qa >> 4) & np.uint8(3)) | (h & four), (qa >> 6) | ((h >> 1) & four)),
            CAT32((qb & np.uint8(3)) | ((h >> 2) & four), ((qb >> 2) & np.uint8(3)) | ((h >> 3) & four)),
            CAT32(((qb >> 4) & np.uint8(3)) | ((h >> 4) & four), (qb >> 6) | ((h >> 5) & four)),
            dsc, splat(np.float32(0.0), 16))


@njit(inline="always")
def prefill_block(row, kb, spec):
    """Sub-block k = kb % 16 of super-block kb // 16 (run s = (k // 2) % 4 of chunk c = k // 8), for the VNNI
    prefill: (its 16 levels u in 0..7 as <16 x u8>, its scale d * (sc - 32), no minimum)."""
    k = kb & 15
    o = (kb >> 4) * 110
    c, s, half = k >> 3, (k >> 1) & 3, k & 1
    low = (load(row, o + 32 + 32 * c + 16 * half, 16) >> (2 * s)) & np.uint8(3)
    high = ((load(row, o + 16 * half, 16) >> (4 * c + s)) & np.uint8(1)) << 2
    return low | high, f16_at(row, o + 108) * np.float32(scale_at(row, o, k)), np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of a super-block, prefill k-blocks of a sub-block (16)."""
    matmul(setup_16, dot_16, DOT4, _step, VNNI, 0, decode_block, prefill_block, put4, PREFILL, a, b, c, X, oa, ob, oc, prefill)
