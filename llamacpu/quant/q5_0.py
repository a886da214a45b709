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

from .common import as_blocks, as_matrix, f16_at, f16_bytes, f16_field, put

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
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    big = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    d = big / np.float32(-16)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(np.trunc(x * inv[..., None] + np.float32(16.5)), 31).astype(np.uint8)
    qh, qs = pack5(q)
    return np.concatenate([f16_bytes(d), qh, qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 22] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    q = unpack5(b[..., 2:6], b[..., 6:]).astype(np.int8) - np.int8(16)
    return (d[..., None] * q.astype(np.float32)).reshape(b.shape[0], cols)


@njit(inline="always")
def qh_at(row, o):
    """The little-endian uint32 at byte o, as int64."""
    return (np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)
            | (np.int64(row[o + 3]) << 24))


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 22]) into dst float32 [32] (see common.put)."""
    h = dst.shape[0] // 2  # 16, from the shapes (see q8_0)
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    qh = qh_at(row, o + 2)
    qs = row[o + 6: o + 6 + h]
    lo, hi, xlo, xhi = dst[:h], dst[h:], xb[:h], xb[h:]
    for j in range(h):
        v = np.int32(qs[j])
        q0 = (v & 15) | np.int32(((qh >> j) & 1) << 4)
        q1 = (v >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)
        put(lo, j, d * np.float32(q0 - 16), xlo, dot)
        put(hi, j, d * np.float32(q1 - 16), xhi, dot)
