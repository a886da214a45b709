"""Q4_1: 4-bit weights in blocks of 32 with an fp16 scale and an fp16 minimum (ggml's GGML_TYPE_Q4_1,
5 bits/weight).

Block layout (20 bytes, identical to ggml's `block_q4_1`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       2     m      fp16 minimum (offset), little-endian
    4       16    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = q * d + m,  q in 0..15

Quantization (ggml's `quantize_row_q4_1_ref`, byte for byte): d = (max - min) / 15, q = min(15,
trunc((x - min) / d + 0.5)), d and m = min stored as fp16.
Error bound, every element: |x - value| <= d/2 + 15 |fp16(d) - d| + |fp16(min) - min|.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import bitcast, fp16_to_f32, load, shuffle, shuffle2
from .common import FASTMATH, affine_levels, decode_affine_nibbles, dequantize_affine_nibbles, f16_at, f16_bytes
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, matmul, nibble_dot, nibble_levels, put8, setup_4blocks

ID = 2  # this format's index in kernels.MODULES
NAME = "q4_1"
GGML_TYPE = GGMLQuantizationType.Q4_1
BLOCK = 32
TYPE_SIZE = 20
PREFILL = 32, 8, True  # VNNI prefill: k-block columns, levels centred on 8, minimums


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 20]."""
    d, lo, q = affine_levels(w, BLOCK, NAME, 15)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    return np.concatenate([f16_bytes(d), f16_bytes(lo), qs], axis=-1).reshape(q.shape[0], -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 20] -> float32 [R, C]."""
    return dequantize_affine_nibbles(blocks, cols, BLOCK, TYPE_SIZE, NAME)


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row (uint8 [C // 32 * 20]) into dst float32 [32] (see common.put)."""
    decode_affine_nibbles(row, b, TYPE_SIZE, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: four blocks per step, as Q4_0 (NIBBLE32 activations); the minimums
# multiply the exact block sums of x.
# ---------------------------------------------------------------------------------------------

# Four blocks at byte o: A = words at o, B = words at o+16 (B word i = A word i+8).
# Block k: d = word 10k, m = word 10k+1, quants = words 10k+2 .. 10k+9 (block 3: 32..39 = B's 24..31)
Q41_QS = shuffle2([10 * k + 2 + i for k in range(3) for i in range(8)] + [32 + 24 + i for i in range(8)])
Q41_D = shuffle([10 * (i // 4) for i in range(16)])
Q41_M = shuffle([1, 11, 21, 31])


@njit(inline="always")
def _step(row, s, H, L, spec):
    """Blocks 4s .. 4s + 3 (vnni.dot_4blocks), with their minimums: words at 80 s and at 80 s + 16."""
    wa = bitcast(load(row, 80 * s, 64), np.int16)
    ia = nibble_dot(bitcast(Q41_QS(wa, bitcast(load(row, 80 * s + 16, 64), np.int16)), np.uint8), H, L, 128 * s, False)
    return ia, fp16_to_f32(Q41_D(wa)), fp16_to_f32(Q41_M(wa))


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum)."""
    return nibble_levels(row, kb * 20 + 4, False), f16_at(row, kb * 20), f16_at(row, kb * 20 + 2)


VNNI = True, NIBBLE32, 8, False, 4 * TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, centre, table, step bytes


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul), as Q4_0's with minimums."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, _step, VNNI, 4, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
