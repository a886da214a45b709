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

from .common import as_blocks, f16_at, f16_bytes, f16_field, put_nibbles5, symmetric_levels, u32_at

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
