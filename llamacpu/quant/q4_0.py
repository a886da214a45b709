"""Q4_0: 4-bit weights in blocks of 32 with one fp16 scale (ggml's GGML_TYPE_Q4_0, 4.5 bits/weight).

Block layout (18 bytes, identical to ggml's `block_q4_0`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = (q - 8) * d,  q in 0..15

Quantization (ggml's `quantize_row_q4_0_ref`, byte for byte): `max` is the element of largest magnitude
(the first one on ties), d = max / -8 so that it maps to q = 0, q = min(15, trunc(x / d + 8.5)).
Error bound: elements with x / d <= 7.5 are rounded to nearest, |x - value| <= |d|/2 + 8 |fp16(d) - d|;
elements of the other sign than `max` with x / d in (7.5, 8] are clipped to q = 15, so in general
|x - value| <= |d| + 8 |fp16(d) - d|,  d = max / -8 of its block.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import bitcast, fp16_to_f32, load, shuffle, shuffle2, splat
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put_nibbles, symmetric_levels
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, matmul, nibble_dot, nibble_levels, put8, setup_4blocks

ID = 1  # this format's index in kernels.MODULES
NAME = "q4_0"
GGML_TYPE = GGMLQuantizationType.Q4_0
BLOCK = 32
TYPE_SIZE = 18
PREFILL = 32, 8, False  # VNNI prefill: k-block columns, level offset (q - 8), minimums



def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 18]."""
    d, q = symmetric_levels(w, BLOCK, NAME, 8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    return np.concatenate([f16_bytes(d), qs], axis=-1).reshape(q.shape[0], -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 18] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    qs = b[..., 2:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.int8) - np.int8(8)
    return (d[..., None] * q.astype(np.float32)).reshape(b.shape[0], cols)



@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 18]) into dst float32 [32] (see common.put)."""
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    put_nibbles(row[o + 2: o + 2 + dst.shape[0] // 2], d, np.float32(-8.0) * d, d, np.float32(-8.0) * d, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: four blocks per step: the low nibbles of the four blocks are elements
# 0..15 of each, the high nibbles 16..31; the activations are stored permuted to match (NIBBLE32: no
# nibble shuffles).
# ---------------------------------------------------------------------------------------------

# Four blocks at byte o: A = words at o, B = words at o+8 (B word i = A word i+4).
# Block k: d = word 9k, quants = words 9k+1 .. 9k+8 (block 3: 28..31 from A, 32..35 = B's 28..31)
Q40_QS = shuffle2([9 * k + 1 + i for k in range(3) for i in range(8)]
                  + [28, 29, 30, 31] + [32 + 28 + i for i in range(4)])
Q40_D = shuffle([9 * (i // 4) for i in range(16)])


@njit(inline="always")
def step(row, s, H, L, spec):
    """Blocks 4s .. 4s + 3 (vnni.dot_4blocks): A = the words at 72 s, B = the words at 72 s + 8; IQ4_NL's
    too (same layout, spec[3]: its codes looked up)."""
    wa = bitcast(load(row, 72 * s, 64), np.int16)
    q = bitcast(Q40_QS(wa, bitcast(load(row, 72 * s + 8, 64), np.int16)), np.uint8)
    return nibble_dot(q, H, L, 128 * s, spec[3]), fp16_to_f32(Q40_D(wa)), splat(np.float32(0.0), 4)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum); IQ4_NL's
    too (spec[3])."""
    return nibble_levels(row, kb * 18 + 2, spec[3]), f16_at(row, kb * 18), np.float32(0.0)


VNNI = False, NIBBLE32, 8, False, 4 * TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, level offset, table, step bytes


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of four blocks (the last 1-3 in fp32), prefill k-blocks of one."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, step, VNNI, 4, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
