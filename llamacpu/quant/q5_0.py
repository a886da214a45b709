"""Q5_0: 5-bit weights in blocks of 32 with one fp16 scale (ggml's GGML_TYPE_Q5_0, 5.5 bits/weight).

Block layout (22 bytes, identical to ggml's `block_q5_0`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       4     qh     the fifth bits: bit j of the little-endian uint32 belongs to element j
    6       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = d * (q - 16),  q = nibble | fifth bit << 4, in 0..31

Quantization (ggml's `quantize_row_q5_0_ref`, byte for byte): d = max / -16 with max the element of
largest magnitude, q = min(31, trunc(x / d + 16.5)), d stored as fp16.
Error bound, every element: |x - value| <= |d| / 2 + 16 |fp16(d) - d|, except the elements on the side
of max's opposite sign beyond 15 |d| (clipped at q = 31): off by their distance to 15 |d| plus that.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import bit_bytes, bitcast, fp16_to_f32, load, shuffle2, splat
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put_nibbles5, symmetric_levels, u32_at
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, fifth_bits, four_blocks, matmul, nibble_levels, pair_dot, put8, setup_4blocks

ID = 6  # this format's index in kernels.MODULES
NAME = "q5_0"
GGML_TYPE = GGMLQuantizationType.Q5_0
BLOCK = 32
TYPE_SIZE = 22


def pack5(q: np.ndarray):
    """uint8 levels [..., 32] in 0..31 -> (qh uint8 [..., 4], qs uint8 [..., 16]) as ggml packs them."""
    qs = (q[..., :16] & np.uint8(0xF)) | ((q[..., 16:] & np.uint8(0xF)) << np.uint8(4))
    qh = np.packbits(q >> np.uint8(4), axis=-1, bitorder="little")
    return qh, qs


def unpack5(qh: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """The inverse of pack5: uint8 levels [..., 32]."""
    lo = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1)
    hi = np.unpackbits(qh, axis=-1, bitorder="little")
    return lo | (hi << np.uint8(4))


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 22]."""
    d, q = symmetric_levels(w, BLOCK, NAME, 16)
    qh, qs = pack5(q)
    return np.concatenate([f16_bytes(d), qh, qs], axis=-1).reshape(q.shape[0], -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 22] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    q = unpack5(b[..., 2:6], b[..., 6:]).astype(np.int8) - np.int8(16)
    return (d[..., None] * q.astype(np.float32)).reshape(b.shape[0], cols)


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 22]) into dst float32 [32] (see common.put)."""
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    put_nibbles5(row[o + 6: o + 6 + dst.shape[0] // 2], u32_at(row, o + 2), d, np.float32(-16.0) * d, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q4_0's step (four blocks, NIBBLE32 activations) over 22-byte blocks, each level's
# fifth bit set from its block's qh through a byte mask (vnni.fifth_bits); levels 0..31, offset 16.
# ---------------------------------------------------------------------------------------------

Q50_QS = shuffle2(four_blocks(22, 6, 8, 24))  # the 4 x 16 bytes of nibbles from A = words at 88 s, B at 88 s + 24
Q50_D = shuffle2([w for w in four_blocks(22, 0, 1, 24) for _ in range(4)])  # each block's d on its 4 lanes
Q50_HL, Q50_HH = shuffle2(four_blocks(22, 2, 1, 24)), shuffle2(four_blocks(22, 4, 1, 24))  # qh: low, high words


@njit(inline="always")
def _step(row, s, H, L, spec):
    """Blocks 4s .. 4s + 3 (vnni.dot_4blocks): no minimums."""
    wa = bitcast(load(row, 88 * s, 64), np.int16)
    wb = bitcast(load(row, 88 * s + 24, 64), np.int16)
    q = bitcast(Q50_QS(wa, wb), np.uint8)
    blo, bhi = fifth_bits(Q50_HL(wa, wb), Q50_HH(wa, wb))
    ia = pair_dot((q & np.uint8(15)) | blo, (q >> 4) | bhi, H, L, 128 * s)
    return ia, fp16_to_f32(Q50_D(wa, wb)), splat(np.float32(0.0), 4)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum)."""
    o = kb * 22
    return nibble_levels(row, o + 6, False) | (bit_bytes(u32_at(row, o + 2), 32) & np.uint8(16)), f16_at(row, o), np.float32(0.0)


VNNI = False, NIBBLE32, 16, False, 4 * TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, level offset, table, step bytes
PREFILL = 32, 16, False  # VNNI prefill: k-block columns, level offset (q - 16), minimums


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of four blocks (the last 1-3 in fp32), prefill k-blocks of one."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, _step, VNNI, 4, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
