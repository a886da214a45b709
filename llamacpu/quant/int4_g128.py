"""int4_g128: 4-bit weights in groups of 128 input features with an fp16 scale and an fp16 minimum
(asymmetric, with a zero point; our own format, not a ggml type; 4.25 bits/weight).

Group layout (68 bytes):

    offset  size  field
    0       2     s      fp16 scale, little-endian
    2       2     m      fp16 minimum (the value of q = 0), little-endian
    4       64    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 64 (j < 64)

    value = q * s + m,  q in 0..15

Why asymmetric: a group of 128 weights is rarely centred on zero, and a symmetric grid spends levels on
the side it does not need (Q4_0 maps the largest magnitude to -8 and the other side of the group gets
at most 7 levels, clipping the rest); with a minimum all 16 levels cover [min, max], and it is the scheme
of the int4 group-128 checkpoints (GPTQ, AWQ: scale + zero point per group of 128), so they convert
without re-rounding. The minimum costs nothing in the dot product: sum_j (q_j s + m) x_j =
s * sum_j q_j x_j + m * sum_j x_j, and the group sums of x are computed once per call.

Quantization (round to nearest over the group's min-max range, with directed fp16 rounding so that the
stored grid covers the group): m = the largest fp16 <= min, s = the smallest fp16 >= (max - m) / 15,
q = clip(rint((x - m) / s), 0, 15).
Error bound, every element: |x - value| <= s/2 (plus float32 rounding of q*s + m, a few ulp).
On Gaussian weights the rms error is about 0.10 * std (min-max over 128 weights; Q4_1's groups of 32
give 0.078). A group far from zero relative to its spread pays for the fp16 precision of its minimum
with a coarser s (the grid starts at fp16_down(min)).
"""
import numpy as np
from numba import njit

from ..errors import InputError
from ..kernels.simd import load, splat
from .common import FASTMATH, as_matrix, decode_affine_nibbles, dequantize_affine_nibbles, f16_at
from .vnni import GROUP128, dot_4blocks, matmul, nibble_dot, put8, setup_4blocks

ID = 5  # this format's index in kernels.MODULES
NAME = "int4_g128"
GGML_TYPE = None  # our own format
BLOCK = 128
TYPE_SIZE = 68
PREFILL = 32, 8, True  # VNNI prefill: k-block columns (a quarter group), levels centred on 8, minimums


def _fp16_down(v: np.ndarray) -> np.ndarray:
    """The largest fp16 <= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) > v, np.nextafter(h, np.float16(-np.inf)), h)


def _fp16_up(v: np.ndarray) -> np.ndarray:
    """The smallest fp16 >= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) < v, np.nextafter(h, np.float16(np.inf)), h)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 groups [R, C // 128 * 68]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    lo = x.min(axis=-1)
    hi = x.max(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        m16 = _fp16_down(lo)
        m = m16.astype(np.float32)
        s16 = _fp16_up((hi - m) / np.float32(15))
        s = s16.astype(np.float32)
        # float32 rounding of (hi - m) / 15 can leave the top of the grid a hair below hi: one more step
        short = m + np.float32(15) * s < hi
        s16 = np.where(short, np.nextafter(s16, np.float16(np.inf)), s16)
    if not (np.isfinite(m16).all() and np.isfinite(s16).all()):
        raise InputError(f"{NAME}: a group's minimum or scale overflows fp16 (weights too large, |w| up to "
                         f"{float(np.abs(w).max()):.3g})")
    s = s16.astype(np.float32)
    t = np.divide(x - m[..., None], s[..., None], out=np.zeros_like(x), where=s[..., None] != 0)
    q = np.clip(np.rint(t), 0, 15).astype(np.uint8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    head = np.stack([s16, m16], axis=-1).astype("<f2").view(np.uint8)  # [R, ng, 4]
    return np.concatenate([head, qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 groups [R, C // 128 * 68] -> float32 [R, C]."""
    return dequantize_affine_nibbles(blocks, cols, BLOCK, TYPE_SIZE, NAME)


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row (uint8 [C // 128 * 68]) into dst float32 [128] (see common.put)."""
    decode_affine_nibbles(row, b, TYPE_SIZE, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: one group (64 bytes of nibbles) per step; x-block j of a group =
# elements 16j..16j+15 and 64+16j..64+16j+15 (GROUP128: the lanes of the low and high nibbles that
# share an accumulator lane).
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _step(row, g, H, L, spec):
    """Group g (vnni.dot_4blocks): its scale on all 16 lanes, its minimum for its 4 x-blocks."""
    o = g * 68
    return nibble_dot(load(row, o + 4, 64), H, L, 128 * g, False), splat(f16_at(row, o), 16), splat(f16_at(row, o + 2), 4)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb = columns 32 (kb % 4) .. of group kb // 4 (low nibbles of bytes 0..63, then high ones):
    (its 32 levels as <32 x u8>, its scale, its minimum), for the VNNI prefill."""
    j = kb & 3
    o = (kb >> 2) * 68
    q = load(row, o + 4 + 32 * (j & 1), 32)
    return q & np.uint8(15) if j < 2 else q >> 4, f16_at(row, o), f16_at(row, o + 2)


VNNI = True, GROUP128, 8, False  # vnni.setup_4blocks / dot_4blocks: minimums, layout, centre, table


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of one group, prefill k-blocks of a quarter group."""
    matmul(setup_4blocks, dot_4blocks, _step, VNNI, 0, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
