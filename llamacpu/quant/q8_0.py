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

from ..kernels.simd import bitcast, fma, fp16_to_f32, hsum, load, shuffle, shuffle2, sitofp, splat
from .common import FASTMATH, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, put, round_half_away
from .vnni import NATURAL, XB, byte_dot, empty64, lanes, matmul, prepare_tokens, put8

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
# VNNI (see vnni.py). Matvec: two blocks (68 bytes) per step: two overlapping 64-byte loads and one
# word permute give the 64 quants and the two fp16 scales; activations in natural order.
# ---------------------------------------------------------------------------------------------

# A pair of blocks at byte o: A = the words at o (bytes o..o+63), B = the words at o+4.
# Block 0: d = word 0, quants = words 1..16; block 1: d = word 17, quants = words 18..33 (32, 33 = B's 30, 31)
Q8_QS = shuffle2(list(range(1, 17)) + list(range(18, 32)) + [32 + 30, 32 + 31])
Q8_D = shuffle([0] * 8 + [17] * 8)
SPREAD2 = shuffle([0] * 8 + [1] * 8)  # <2 x f32> -> 8 copies of each
# Rows wider than this many blocks (4096 columns) use the compact scale layout: 16 floats of scales per
# pair would double the activations' L1 footprint (H and L take 2 bytes per column already) and spill x
# from L1 (numbers in bench/README.md)
Q8_WIDE_BLOCKS = 128


@njit(inline="always")
def _pair(row, p, H, L, p0):
    """(int32 lanes of sum q * x16 for the pair of blocks p, the fp16 scales of its two blocks); the
    token's planes start at p0."""
    wa = bitcast(load(row, p * 68, 64), np.int16)
    wb = bitcast(load(row, p * 68 + 4, 64), np.int16)
    q = bitcast(Q8_QS(wa, wb), np.uint8) ^ np.uint8(0x80)  # int8 -> q + 128, unsigned
    return byte_dot(q, H, L, p0 + 64 * p), fp16_to_f32(Q8_D(wa))


@njit(inline="always")
def vnni_setup(X, spec):
    """Per call: the planes of every token and its scale lanes: per pair of blocks 16 lanes of sx and 16
    of the correction, or (rows wider than Q8_WIDE_BLOCKS blocks) sx0, sx1, c0, c1 spread by shuffles."""
    n, C = X.shape
    nb = C // XB
    npair = nb // 2
    wide = nb > Q8_WIDE_BLOCKS
    per = 4 * npair if wide else 32 * npair  # scale floats per token
    H, L, sx, r16, xe = prepare_tokens(X, NATURAL)
    sc = empty64(n * per, np.float32)
    for t in range(n):
        for b in range(2 * npair):
            e = t * nb + b
            # weights q + 128: correct by -128 * sum(x16) * sx
            c = np.float32(-16.0) * np.float32(r16[2 * e] + r16[2 * e + 1]) * sx[e]
            if wide:
                sc[t * per + 4 * (b >> 1) + (b & 1)] = sx[e]
                sc[t * per + 4 * (b >> 1) + 2 + (b & 1)] = c
            else:  # spread over the block's 8 lanes
                lanes(sc, t * per + 32 * (b >> 1) + 8 * (b & 1), 8, sx[e], c)
    return H, L, sc, npair, per, wide, C


@njit(inline="always")
def vnni_dot(row, ctx, t, step, spec):
    """Row . token t: two blocks per step."""
    H, L, sc, npair, per, wide, C = ctx
    p0 = t * C
    s0 = t * per
    acc = splat(np.float32(0.0), 16)
    if wide:
        for p in range(npair):
            ia, d = _pair(row, p, H, L, p0)
            acc = fma(fma(sitofp(ia), SPREAD2(load(sc, s0 + 4 * p, 2)), SPREAD2(load(sc, s0 + 4 * p + 2, 2))), d, acc)
    else:
        for p in range(npair):
            ia, d = _pair(row, p, H, L, p0)
            acc = fma(fma(sitofp(ia), load(sc, s0 + 32 * p, 16), load(sc, s0 + 32 * p + 16, 16)), d, acc)
    return hsum(acc)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb of a row for the VNNI prefill: (its 32 levels as <32 x u8>, its scale, its minimum)."""
    return load(row, kb * 34 + 2, 32) ^ np.uint8(0x80), f16_at(row, kb * 34), np.float32(0.0)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of two blocks (an odd last one in fp32), prefill k-blocks of one."""
    matmul(vnni_setup, vnni_dot, None, None, 2, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
