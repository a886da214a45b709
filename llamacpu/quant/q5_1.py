"""Q5_1: 5-bit weights in blocks of 32 with an fp16 scale and an fp16 minimum (ggml's GGML_TYPE_Q5_1,
6 bits/weight).

Block layout (24 bytes, identical to ggml's `block_q5_1`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       2     m      fp16 minimum (offset), little-endian
    4       4     qh     the fifth bits: bit j of the little-endian uint32 belongs to element j
    8       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = d * q + m,  q = nibble | fifth bit << 4, in 0..31

Error bound, every element: |x - value| <= d/2 + 31 |fp16(d) - d| + |fp16(min) - min|, for the
quantization of ggml's `quantize_row_q5_1_ref`, byte for byte (common.affine_levels with top 31; the
levels split into nibbles and fifth bits by q5_0.pack5).
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import bit_bytes, bitcast, fp16_to_f32, load, shuffle2
from .common import FASTMATH, affine_levels, as_blocks, f16_at, f16_bytes, f16_field, put_nibbles5, u32_at
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, fifth_bits, four_blocks, matmul, nibble_levels, pair_dot, put8, setup_4blocks
from .q5_0 import pack5, unpack5

ID = 7  # this format's index in kernels.MODULES
NAME = "q5_1"
GGML_TYPE = GGMLQuantizationType.Q5_1
BLOCK = 32
TYPE_SIZE = 24


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 24]."""
    d, lo, q = affine_levels(w, BLOCK, NAME, 31)
    qh, qs = pack5(q)
    return np.concatenate([f16_bytes(d), f16_bytes(lo), qh, qs], axis=-1).reshape(q.shape[0], -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 24] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    m = f16_field(b, 2)
    q = unpack5(b[..., 4:8], b[..., 8:]).astype(np.float32)
    return (d[..., None] * q + m[..., None]).reshape(b.shape[0], cols)


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 24]) into dst float32 [32] (see common.put)."""
    o = b * TYPE_SIZE
    put_nibbles5(row[o + 8: o + 8 + dst.shape[0] // 2], u32_at(row, o + 4), f16_at(row, o), f16_at(row, o + 2), dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q5_0's step over 24-byte blocks, with Q4_1's minimums (they multiply the exact
# block sums of x); levels 0..31 centred on 16.
# ---------------------------------------------------------------------------------------------

VNNI = True, NIBBLE32, 16, False, 4 * TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, centre, table, step bytes
PREFILL = 32, 16, True  # VNNI prefill: k-block columns, levels centred on 16, minimums
# four blocks: A = the words at 96 s, B = the words at 96 s + 32
Q51_QS, Q51_D, Q51_M = (shuffle2(four_blocks(24, 8, 8, 32)), shuffle2([w for w in four_blocks(24, 0, 1, 32) for _ in range(4)]),
                        shuffle2(four_blocks(24, 2, 1, 32)))
Q51_HL, Q51_HH = shuffle2(four_blocks(24, 4, 1, 32)), shuffle2(four_blocks(24, 6, 1, 32))  # qh: low, high words


@njit(inline="always")
def _step(row, s, H, L, spec):
    """Blocks 4s .. 4s + 3 (vnni.dot_4blocks), with their minimums."""
    wa = bitcast(load(row, 96 * s, 64), np.int16)
    wb = bitcast(load(row, 96 * s + 32, 64), np.int16)
    blo, bhi = fifth_bits(Q51_HL(wa, wb), Q51_HH(wa, wb))
    q = bitcast(Q51_QS(wa, wb), np.uint8)
    return pair_dot((q & np.uint8(15)) | blo, (q >> 4) | bhi, H, L, 128 * s), fp16_to_f32(Q51_D(wa, wb)), fp16_to_f32(Q51_M(wa, wb))


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum)."""
    o = kb * 24
    levels = nibble_levels(row, o + 8, False) | (bit_bytes(u32_at(row, o + 4), 32) & np.uint8(16))
    return levels, f16_at(row, o), f16_at(row, o + 2)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul), as Q5_0's with minimums."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, _step, VNNI, 4, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
