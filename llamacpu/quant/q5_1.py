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

from .common import affine_levels, as_blocks, f16_at, f16_bytes, f16_field, put_nibbles5, u32_at
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
