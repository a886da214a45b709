"""IQ4_NL: 4-bit indices into a fixed non-linear table of 16 int8 values, in blocks of 32 with one fp16
scale (ggml's GGML_TYPE_IQ4_NL, 4.5 bits/weight).

Block layout (18 bytes, identical to ggml's `block_iq4_nl`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       16    qs     indices: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 16 (j < 16)

    value = d * KVALUES[index]

Quantization follows ggml's `quantize_iq4_nl_impl` without an importance matrix (weights x^2): start
from d = -max / 127 (max = the element of largest magnitude), map every element to its nearest table
value, take the weighted least-squares scale; try 14 more starting scales (itry - 127) / max and keep
the fit with the largest sumqx^2 / sumq2; d stored as fp16, indices chosen against the fp32 d.
Error bound: |x - value| <= |d| * (largest gap between neighbouring table values) / 2 for elements
inside the table's range, plus |fp16(d) - d| * 127; outside it, their distance to the range on top.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from .common import FASTMATH, KVALUES, as_blocks, f16_at, f16_bytes, f16_field, put, quantize_rows
from .q4_0 import prefill_block, step
from .vnni import NIBBLE32, dot_4blocks, dot4_4blocks, matmul, put8, setup_4blocks

ID = 11  # this format's index in kernels.MODULES
NAME = "iq4_nl"
GGML_TYPE = GGMLQuantizationType.IQ4_NL
BLOCK = 32
TYPE_SIZE = 18
_KV = KVALUES.astype(np.float32)  # the table (common.KVALUES: IQ4_XS shares it)
_MID = (_KV[1:] + _KV[:-1]) / np.float32(2)  # decision boundaries of best_index_int8
NTRY = 7
GROUP_MAX_EPS = 1e-15


# best_index through a table: the boundaries are half-integers, so the number of them <= v is the number
# <= floor(2 v) / 2, and floor(2 v) (clipped to +-512, past every boundary) indexes a table of 1025 entries:
# 11x faster than a binary search per element (np.searchsorted), the same indices
_HALVES = np.arange(-512, 513, dtype=np.float32) / np.float32(2)
_INDEX = np.searchsorted(_MID, _HALVES, side="right").astype(np.uint8)


def best_index(v: np.ndarray) -> np.ndarray:
    """ggml's best_index_int8 for every element: the index of the nearest table value (ties up: ggml
    returns mu - 1 when x - val[mu-1] < val[mu] - x), i.e. the number of boundaries _MID <= v."""
    t = np.floor(np.clip(v, np.float32(-256), np.float32(256)) * np.float32(2))
    return _INDEX[t.astype(np.int32) + 512]


def search(x: np.ndarray, w: np.ndarray, ntry: int = NTRY):
    """The scale search of quantize_iq4_nl_impl on every row of x [N, n] with weights w: scale d [N]
    (0 for an all-zero row)."""
    f32 = np.float32
    imax = np.abs(x).argmax(axis=1)[:, None]
    big = np.take_along_axis(x, imax, axis=1)[:, 0]
    zero = np.abs(big) < GROUP_MAX_EPS
    big = np.where(zero, f32(1), big)

    def fit(inv):
        q = _KV[best_index(inv[:, None] * x)]
        return (w * q * x).sum(axis=1), (w * q * q).sum(axis=1)

    d0 = -big / _KV[0]
    sumqx, sumq2 = fit(f32(1) / d0)
    d = np.divide(sumqx, sumq2, out=np.zeros_like(sumqx), where=sumq2 > 0)
    best = d * sumqx
    for itry in range(-ntry, ntry + 1):
        sumqx, sumq2 = fit((f32(itry) + _KV[0]) / big)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        nd = np.divide(sumqx, sumq2, out=np.zeros_like(sumqx), where=sumq2 > 0)
        d = np.where(better, nd, d)
        best = np.where(better, nd * sumqx, best)
    return np.where(zero, f32(0), d).astype(f32)


def pack4(idx: np.ndarray) -> np.ndarray:
    """Indices uint8 [..., 32] -> qs [..., 16]."""
    return idx[..., :16] | (idx[..., 16:] << np.uint8(4))


def unpack4(qs: np.ndarray) -> np.ndarray:
    """qs uint8 [..., 16] -> table values float32 [..., 32]."""
    return _KV[np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1)]


def _quantize_blocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 32] -> uint8 [N, 18]."""
    d = search(x, x * x)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    return np.concatenate([f16_bytes(d), pack4(best_index(inv[:, None] * x))], axis=-1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 18] (its 15 scale trials per block: on row pieces, in threads)."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_blocks)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 18] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    return (d[..., None] * unpack4(b[..., 2:])).reshape(b.shape[0], cols)


KV = KVALUES.astype(np.int32)  # a global array: Numba freezes it into the compiled kernels


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 18]) into dst float32 [32] (see common.put)."""
    h = dst.shape[0] // 2  # 16, from the shapes (see q8_0)
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    qs = row[o + 2: o + 2 + h]
    lo, hi, xlo, xhi = dst[:h], dst[h:], xb[:h], xb[h:]
    for j in range(h):
        v = np.int32(qs[j])
        put(lo, j, d * np.float32(KV[v & 15]), xlo, dot)
        put(hi, j, d * np.float32(KV[v >> 4]), xhi, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q4_0's layout, so Q4_0's step and prefill block, with the codes looked up in the
# table as unsigned bytes KVALUES + 128 (vnni.NL_LEVELS: one vpshufb per 64 codes), offset 128.
# ---------------------------------------------------------------------------------------------

VNNI = False, NIBBLE32, 128, True, 4 * TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, level offset, table, step bytes
PREFILL = 32, 128, False  # VNNI prefill: k-block columns, level offset (KVALUES + 128), minimums


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): Q4_0's with the table lookup."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, step, VNNI, 4, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
