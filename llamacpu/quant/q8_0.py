"""Q8_0: 8-bit weights in blocks of 32 with one fp16 scale (ggml's GGML_TYPE_Q8_0, 8.5 bits/weight).

Block layout (34 bytes, identical to ggml's `block_q8_0`):

    offset  size  field
    0       2     d      fp16 scale, little-endian
    2       32    qs     int8 quants; qs[j] is element j of the block

    value[j] = qs[j] * d

Quantization (ggml's `quantize_row_q8_0_ref`, byte for byte): d = amax / 127 over the block (float32),
qs = roundf(x / d) with ties away from zero, d stored as fp16 (round to nearest even).
Error bound, every element: |x - value| <= d/2 + 127 * |fp16(d) - d|  (<= d * (1/2 + 127 * 2**-11) for
d in fp16's normal range), d = amax / 127 of its block.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from ..kernels.simd import bitcast, fma, fp16_to_f32, hsum, load, shuffle, shuffle2, sitofp, splat, view
from .common import FASTMATH, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, put, round_half_away
from .vnni import NATURAL, byte_dot, empty64, matmul, prepare_steps, put8

ID = 0  # this format's index in kernels.MODULES
NAME = "q8_0"
GGML_TYPE = GGMLQuantizationType.Q8_0
BLOCK = 32  # weights per block
TYPE_SIZE = 34  # bytes per block
PREFILL = 32, 128, False  # VNNI prefill: k-block columns, level offset (int8 + 128), minimums



def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 34]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    d = np.abs(x).max(axis=-1) / np.float32(127)  # [R, nb]
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    qs = round_half_away(x * inv[..., None]).astype(np.int8)
    out = np.concatenate([f16_bytes(d), qs.view(np.uint8)], axis=-1)  # [R, nb, 34]
    return out.reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 34] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    qs = b[..., 2:].view(np.int8).astype(np.float32)
    return (qs * d[..., None]).reshape(b.shape[0], cols)



@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 34]) into dst float32 [32] (see common.put)."""
    qk = dst.shape[0]  # 32, taken from the shapes: a literal trip count gets unrolled badly
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    qs = row[o + 2: o + 2 + qk]
    for j in range(qk):
        put(dst, j, d * np.float32(np.int8(qs[j])), xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: two blocks (68 bytes) per step; activations in natural order. The 64
# quants are one byte blend of two overlapping loads (no permute), the two fp16 scales one word permute
# of a third; the x scales and corrections (4 floats per pair) are spread by two float permutes.
# ---------------------------------------------------------------------------------------------

# A pair of blocks at byte o: block 0's d = word 0 of the 64 bytes at o, its quants bytes o+2 .. o+33;
# block 1's d = word 17 at o, its quants bytes o+36 .. o+67. The 64 bytes at o+2 hold block 0's quants
# in bytes 0..31 and those at o+4 block 1's in bytes 32..63: a blend (vpblendmb) joins them.
Q8_QS = shuffle2(list(range(32)) + list(range(64 + 32, 64 + 64)))
Q8_D = shuffle([0] * 8 + [17] * 8)
SPREAD2 = shuffle([0] * 8 + [1] * 8)  # <2 x f32> -> 8 copies of each
# The x scales and corrections of a pair are 4 floats (sx0, sx1, c0, c1), spread over the lanes of the
# blocks by two vpermps. 16-lane vectors per pair (32 floats, as the other formats use) measured 1.0-1.4x
# slower for Q8_0 at every width (576, 1536, 5632 columns; bench/README.md, "Q8_0 decode, 2026-12-02").


@njit(inline="always")
def _pair(row, p, H, L, p0):
    """(int32 lanes of sum q * x16 for the pair of blocks p, the fp16 scales of its two blocks); the
    token's planes start at p0."""
    wa = bitcast(load(row, p * 68, 64), np.int16)
    q = Q8_QS(load(row, p * 68 + 2, 64), load(row, p * 68 + 4, 64)) ^ np.uint8(0x80)  # int8 -> q + 128, unsigned
    return byte_dot(q, H, L, p0 + 64 * p), fp16_to_f32(Q8_D(wa))


@njit(inline="always")
def vnni_setup(X, spec):
    """Per call: the planes of every token in pairs of blocks (vnni.prepare_steps: an odd last block is the
    second of an overlapping pair) and per pair its x scales and corrections (sx0, sx1, c0, c1)."""
    n, C = X.shape
    H, L, sx, r16, xe, npair, nfull = prepare_steps(X, NATURAL, 2)
    per = 4 * npair  # scale floats per token
    sc = empty64(n * per, np.float32)
    for e in range(n * 2 * npair):  # block e = 2 (t * npair + p) + (0 or 1)
        # weights q + 128: correct by -128 * sum(x16) * sx, 16 per lane of the block's 8
        sc[4 * (e >> 1) + (e & 1)] = sx[e]
        sc[4 * (e >> 1) + 2 + (e & 1)] = np.float32(-16.0) * np.float32(r16[2 * e] + r16[2 * e + 1]) * sx[e]
    return H, L, sc, npair, nfull, per


@njit(inline="always")
def _acc_pair(r, p, H, L, p0, sc, s0, acc):
    """acc + the pair p of row r against one token's planes (at p0) and scales (at s0)."""
    ia, d = _pair(r, p, H, L, p0)
    return fma(fma(sitofp(ia), SPREAD2(load(sc, s0 + 4 * p, 2)), SPREAD2(load(sc, s0 + 4 * p + 2, 2))), d, acc)


@njit(inline="always")
def vnni_dot(row, ctx, t, step, spec):
    """Row . token t: two blocks per step; the last pair of a row with an odd block count is read from the
    row's last 68 bytes (see vnni.dot_4blocks)."""
    H, L, sc, npair, nfull, per = ctx
    shift = row.shape[0] - 68 * npair  # 0, or -34
    acc = splat(np.float32(0.0), 16)
    for p in range(npair):
        acc = _acc_pair(view(row, 0 if p < nfull else shift), p, H, L, t * 64 * npair, sc, t * per, acc)
    return hsum(acc)


@njit(inline="always")
def vnni_dot4(row, ctx, t, step, spec):
    """vnni_dot for tokens t .. t + 3 in one pass over the row's pairs: each pair's weights are loaded and
    unpacked once (the four _pair calls read the same bytes); per token the same operations as
    vnni_dot, hence the same results."""
    H, L, sc, npair, nfull, per = ctx
    P = 64 * npair
    shift = row.shape[0] - 68 * npair
    a0 = splat(np.float32(0.0), 16)
    a1, a2, a3 = a0, a0, a0
    for p in range(npair):
        r = view(row, 0 if p < nfull else shift)
        a0 = _acc_pair(r, p, H, L, t * P, sc, t * per, a0)
        a1 = _acc_pair(r, p, H, L, t * P + P, sc, t * per + per, a1)
        a2 = _acc_pair(r, p, H, L, t * P + 2 * P, sc, t * per + 2 * per, a2)
        a3 = _acc_pair(r, p, H, L, t * P + 3 * P, sc, t * per + 3 * per, a3)
    return hsum(a0), hsum(a1), hsum(a2), hsum(a3)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum)."""
    return load(row, kb * 34 + 2, 32) ^ np.uint8(0x80), f16_at(row, kb * 34), np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of two blocks (an odd last one the second of an overlapping pair), prefill k-blocks of one."""
    matmul(vnni_setup, vnni_dot, vnni_dot4, None, None, 2, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
