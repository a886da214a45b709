"""IQ4_XS: IQ4_NL's non-linear 4-bit table in super-blocks of 256 = 8 sub-blocks of 32, each sub-block
with a signed 6-bit scale, and one fp16 super-scale (ggml's GGML_TYPE_IQ4_XS, 4.25 bits/weight).

Super-block layout (136 bytes, identical to ggml's `block_iq4_xs`):

    offset  size  field
    0       2     d          fp16 super-scale
    2       2     scales_h   high 2 bits of the 8 scales: bits 2s, 2s + 1 of this little-endian uint16
    4       4     scales_l   low 4 bits: scales_l[s // 2] >> 4 (s % 2) & 0xF
    8       128   qs         16 bytes per sub-block s: qs[16s + j] & 0xF is element 32s + j,
                             qs[16s + j] >> 4 is element 32s + 16 + j (j < 16)

    value = (d * (ls[s] - 32)) * KVALUES[index],  ls[s] the 6-bit scale of sub-block s

Quantization follows ggml's `quantize_iq4_nl_impl` for super-blocks without an importance matrix: per
sub-block IQ4_NL's scale search (weights x^2), then the 8 scales quantized to 6 bits against
d = -max_scale / 32 and the indices chosen against each stored sub-block scale.
Error bound: as IQ4_NL's, with the sub-block scale d * (ls - 32) in place of d.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from .common import as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .iq4_nl import KV, best_index, pack4, search, unpack4

ID = 12  # this format's index in kernels.MODULES
NAME = "iq4_xs"
GGML_TYPE = GGMLQuantizationType.IQ4_XS
BLOCK = 256
TYPE_SIZE = 136
SUB = 32


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 136]."""
    f32 = np.float32
    n = x.shape[0]
    xs = x.reshape(n * 8, SUB)
    scales = search(xs, xs * xs).reshape(n, 8)
    big = np.take_along_axis(scales, np.abs(scales).argmax(axis=1)[:, None], axis=1)[:, 0]
    d = -big / f32(32)
    inv = np.divide(f32(1), d, out=np.zeros_like(d), where=d != 0)
    l = np.clip(np.rint(inv[:, None] * scales), -32, 31).astype(np.int32)
    dl = (d[:, None] * l.astype(f32)).reshape(n * 8, 1)  # ggml: the fp32 d, before fp16 rounding
    idl = np.divide(f32(1), dl, out=np.zeros_like(dl), where=dl != 0)
    idx = best_index(idl * xs).reshape(n, 8, SUB)
    l = (l + 32).astype(np.uint16)
    scales_h = np.zeros(n, np.uint16)
    for s in range(8):
        scales_h |= (l[:, s] >> 4) << np.uint16(2 * s)
    lo = (l & 0xF).astype(np.uint8)
    scales_l = lo[:, 0::2] | (lo[:, 1::2] << np.uint8(4))
    qs = pack4(idx).reshape(n, 128)
    return np.concatenate([f16_bytes(d), scales_h.astype("<u2").view(np.uint8).reshape(n, 2), scales_l, qs],
                          axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 136]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


def unpack_scales(b: np.ndarray) -> np.ndarray:
    """Super-blocks uint8 [..., 136] -> the signed sub-block scales ls - 32 as int8 [..., 8]."""
    h = (b[..., 2].astype(np.uint16) | (b[..., 3].astype(np.uint16) << np.uint16(8)))[..., None]
    hi = ((h >> (2 * np.arange(8, dtype=np.uint16))) & np.uint16(3)).astype(np.uint8)
    sl = b[..., 4:8]
    lo = np.stack([sl & np.uint8(0xF), sl >> np.uint8(4)], axis=-1).reshape(*b.shape[:-1], 8)
    return (lo | (hi << np.uint8(4))).astype(np.int8) - np.int8(32)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 136] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    rows, nsb = b.shape[:2]
    d = f16_field(b, 0)[..., None]
    dl = (d * unpack_scales(b).astype(np.float32))[..., None]
    q = unpack4(b[..., 8:].reshape(rows, nsb, 8, 16))
    return (dl * q).reshape(rows, cols)


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 136]) into dst float32 [256] (see common.put)."""
    sub = dst.shape[0] // 8  # 32, from the shapes (see q8_0)
    h = sub // 2
    o = i * TYPE_SIZE
    d = f16_at(row, o)
    sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
    for s in range(8):
        ls = ((np.int32(row[o + 4 + (s >> 1)]) >> (4 * (s & 1))) & 15) | (((sh >> (2 * s)) & 3) << 4)
        dl = d * np.float32(ls - 32)
        qs = row[o + 8 + h * s: o + 8 + h * s + h]
        e = sub * s
        lo, hi, xlo, xhi = dst[e: e + h], dst[e + h: e + sub], xb[e: e + h], xb[e + h: e + sub]
        for j in range(h):
            v = np.int32(qs[j])
            put(lo, j, dl * np.float32(KV[v & 15]), xlo, dot)
            put(hi, j, dl * np.float32(KV[v >> 4]), xhi, dot)
