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

from ..kernels.simd import bitcast, load, sitofp, splat
from .common import FASTMATH, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows, u32_at
from .iq4_nl import KV, best_index, pack4, search, unpack4
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, matmul, nibble_dot, nibble_levels, put8, setup_4blocks

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
def scale_at(row, o, s):
    """The signed scale ls[s] - 32 of sub-block s of the super-block at byte o, as int32."""
    sh = np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)
    return (((np.int32(row[o + 4 + (s >> 1)]) >> (4 * (s & 1))) & 15) | (((sh >> (2 * s)) & 3) << 4)) - 32


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 136]) into dst float32 [256] (see common.put)."""
    sub = dst.shape[0] // 8  # 32, from the shapes (see q8_0)
    h = sub // 2
    o = i * TYPE_SIZE
    d = f16_at(row, o)
    for s in range(8):
        dl = d * np.float32(scale_at(row, o, s))
        qs = row[o + 8 + h * s: o + 8 + h * s + h]
        e = sub * s
        lo, hi, xlo, xhi = dst[e: e + h], dst[e + h: e + sub], xb[e: e + h], xb[e + h: e + sub]
        for j in range(h):
            v = np.int32(qs[j])
            put(lo, j, dl * np.float32(KV[v & 15]), xlo, dot)
            put(hi, j, dl * np.float32(KV[v >> 4]), xhi, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): IQ4_NL's table (vnni.nibble_dot) in the 4-block family: a step is half a super-block,
# four sub-blocks whose 64 bytes of codes are contiguous, low nibbles the first 16 elements of each
# (NIBBLE32 activations, no gathering); the four 6-bit scales unpacked with per-lane shifts.
# ---------------------------------------------------------------------------------------------

VNNI = False, NIBBLE32, 128, True, TYPE_SIZE // 2  # vnni.setup_4blocks / dot_4blocks: minimums, layout, level offset, table, step bytes (rows are whole super-blocks: never a tail step)
PREFILL = 32, 128, False  # VNNI prefill: k-blocks of a sub-block, level offset (KVALUES + 128), minimums
# 4 s for the sub-block s = 4 h + i // 4 of lane i, for the halves h = 0, 1: where its low 4 scale bits are
XS_SHIFTS = np.array([4 * (4 * h + i // 4) for h in range(2) for i in range(16)], np.uint32)


@njit(inline="always")
def _step(row, s, H, L, spec):
    """Half s & 1 of super-block s >> 1 (vnni.dot_4blocks): its four sub-blocks' scales d * (ls - 32), 4 lanes each."""
    o = 136 * (s >> 1)
    k4 = load(XS_SHIFTS, 16 * (s & 1), 16)
    lo = (splat(np.uint32(u32_at(row, o + 4)), 16) >> k4) & np.uint32(15)
    hi = (splat(np.uint32(np.int32(row[o + 2]) | (np.int32(row[o + 3]) << 8)), 16) >> (k4 >> 1)) & np.uint32(3)
    dl = sitofp(bitcast(lo | (hi << 4), np.int32) - np.int32(32)) * splat(f16_at(row, o), 16)
    return nibble_dot(load(row, o + 8 + 64 * (s & 1), 64), H, L, 128 * s, True), dl, splat(np.float32(0.0), 4)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """Sub-block j = kb % 8 of super-block kb // 8, for the VNNI prefill: (its 32 levels as <32 x u8>, its
    scale d * (ls - 32), no minimum)."""
    j = kb & 7
    o = (kb >> 3) * 136
    return nibble_levels(row, o + 8 + 16 * j, True), f16_at(row, o) * np.float32(scale_at(row, o, j)), np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of half a super-block, prefill k-blocks of a sub-block."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, _step, VNNI, 0, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
