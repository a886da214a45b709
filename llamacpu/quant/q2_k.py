"""Q2_K: 2-bit weights in super-blocks of 256 = 16 sub-blocks of 16, each sub-block with a 4-bit scale and
a 4-bit minimum, and two fp16 super-scales (ggml's GGML_TYPE_Q2_K, 2.625 bits/weight).

Super-block layout (84 bytes, identical to ggml's `block_q2_K`):

    offset  size  field
    0       16    scales   sub-block k: scale sc[k] = scales[k] & 0xF, minimum m[k] = scales[k] >> 4
    16      64    qs       2-bit levels in 2 chunks of 32 bytes: element 128c + 32s + l (s < 4, l < 32)
                           is (qs[32c + l] >> 2s) & 3
    80      2     d        fp16 super-scale of the scales
    82      2     dmin     fp16 super-scale of the minimums

    value = (d * sc[k]) * q - (dmin * m[k]),  q in 0..3, k = element // 16

Quantization follows ggml's `quantize_row_q2_K_ref` (llama.cpp's choice without an importance matrix),
vectorized: per sub-block `make_qkx2_quants` with nmax 3, weights |x|, absolute error, 16 grids; the
scales and minimums quantized to 4 bits against the largest; every element re-rounded.
Error bound: with d_k = d * sc[k], m_k = dmin * m[k], elements inside [-m_k, 3 d_k - m_k] are within
d_k / 2; clipped ones are off by their distance to that range plus d_k / 2.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import load, sitofp, splat, zext
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .q4_k import fit_subblocks
from .q6_k import DOT4, dot_16, setup_16
from .vnni import CAT32, matmul, put4

ID = 9  # this format's index in kernels.MODULES
NAME = "q2_k"
GGML_TYPE = GGMLQuantizationType.Q2_K
BLOCK, SUB = 256, 16  # weights per super-block (16 sub-blocks), per sub-block
TYPE_SIZE = 84


def pack2(L: np.ndarray) -> np.ndarray:
    """2-bit levels uint8 [N, 256] -> qs [N, 64] (ggml's order, see the layout)."""
    L = L.reshape(-1, 2, 4, 32)
    return (L[:, :, 0] | (L[:, :, 1] << 2) | (L[:, :, 2] << 4) | (L[:, :, 3] << 6)).reshape(-1, 64)


def unpack2(qs: np.ndarray) -> np.ndarray:
    """qs uint8 [..., 64] -> 2-bit levels [..., 256]."""
    q = qs.reshape(*qs.shape[:-1], 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    return (q & np.uint8(3)).reshape(*qs.shape[:-1], 256)


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 84]."""
    ls, lm, d, dmin, L = fit_subblocks(x, SUB, 3, 15, False, rmin=-0.5, rdelta=0.1, nstep=15, mad=True)
    return np.concatenate([ls | (lm << np.uint8(4)), pack2(L), f16_bytes(d), f16_bytes(dmin)], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 84]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 84] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    d = f16_field(b, 80)[..., None]
    dmin = f16_field(b, 82)[..., None]
    sc = b[..., 0:16]
    dl = (d * (sc & np.uint8(0xF)).astype(np.float32))[..., None]
    ml = (dmin * (sc >> np.uint8(4)).astype(np.float32))[..., None]
    q = unpack2(b[..., 16:80]).reshape(rows, nsb, 16, SUB).astype(np.float32)
    return (dl * q - ml).reshape(rows, cols)


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 84]) into dst float32 [256] (see common.put)."""
    sub = dst.shape[0] // 16  # 16, from the shapes (see q8_0)
    o = i * TYPE_SIZE
    d = f16_at(row, o + 80)
    dmin = f16_at(row, o + 82)
    for c in range(2):
        for s in range(4):
            for half in range(2):  # the two sub-blocks of this run of 32
                k = 8 * c + 2 * s + half
                sc = np.int32(row[o + k])
                dl = d * np.float32(sc & 15)
                ml = dmin * np.float32(sc >> 4)
                qs = row[o + 16 + 32 * c + sub * half: o + 16 + 32 * c + sub * half + sub]
                e = 16 * k
                y, xk = dst[e: e + sub], xb[e: e + sub]
                for l in range(sub):
                    put(y, l, dl * np.float32((np.int32(qs[l]) >> (2 * s)) & 3) - ml, xk, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q6_K's family (q6_k.setup_16 / dot_16), levels 0..3 centred on 2, minimums.
# ---------------------------------------------------------------------------------------------

VNNI = 84, 2, True  # q6_k.setup_16 / dot_16: super-block bytes, centre, minimums
PREFILL = 16, 2, True  # VNNI prefill: k-blocks of a sub-block, levels centred on 2, minimums


@njit(inline="always")
def _step(row, o):
    """The super-block at byte o: each 32-byte chunk of qs holds four 32-element runs, 2 bits each."""
    qa = load(row, o + 16, 32)
    qb = load(row, o + 48, 32)
    sb = zext(load(row, o, 16), np.int32)
    return (CAT32(qa & np.uint8(3), (qa >> 2) & np.uint8(3)), CAT32((qa >> 4) & np.uint8(3), qa >> 6),
            CAT32(qb & np.uint8(3), (qb >> 2) & np.uint8(3)), CAT32((qb >> 4) & np.uint8(3), qb >> 6),
            sitofp(sb & np.int32(15)) * splat(f16_at(row, o + 80), 16), sitofp(sb >> 4) * splat(-f16_at(row, o + 82), 16))


@njit(inline="always")
def prefill_block(row, kb, spec):
    """Sub-block k = kb % 16 of super-block kb // 16 (elements 16k ..: chunk k // 8, shift 2 ((k // 2) % 4),
    bytes 16 (k % 2) ..), for the VNNI prefill: (its 16 levels as <16 x u8>, d * sc, -dmin * m)."""
    k = kb & 15
    o = (kb >> 4) * 84
    q = (load(row, o + 16 + 32 * (k >> 3) + 16 * (k & 1), 16) >> (2 * ((k >> 1) & 3))) & np.uint8(3)
    sc = np.int32(row[o + k])
    return q, f16_at(row, o + 80) * np.float32(sc & 15), -f16_at(row, o + 82) * np.float32(sc >> 4)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of a super-block, prefill k-blocks of a sub-block (16)."""
    matmul(setup_16, dot_16, DOT4, _step, VNNI, 0, decode_block, prefill_block, put4, PREFILL, a, b, c, X, oa, ob, oc, prefill)
