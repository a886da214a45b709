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
from numba import njit, prange

from ..kernels.simd import bitcast, fma, fp16_to_f32, hsum, load, shuffle, shuffle2, sitofp, splat
from .common import FASTMATH, as_blocks, as_matrix, f16_at, f16_bytes, f16_field, put
from .vnni import CAT16, NIBBLE32, XB, add_tail, centre, empty64, lanes, nibble_dot, prepare

ID = 2  # this format's index in kernels.MODULES
NAME = "q4_1"
GGML_TYPE = GGMLQuantizationType.Q4_1
BLOCK = 32
TYPE_SIZE = 20



def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 32 * 20]."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(rows, cols // BLOCK, BLOCK)
    lo = x.min(axis=-1)
    d = (x.max(axis=-1) - lo) / np.float32(15)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    q = np.minimum(np.trunc((x - lo[..., None]) * inv[..., None] + np.float32(0.5)), 15).astype(np.uint8)
    qs = q[..., : BLOCK // 2] | (q[..., BLOCK // 2:] << np.uint8(4))
    return np.concatenate([f16_bytes(d), f16_bytes(lo), qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 32 * 20] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    d = f16_field(b, 0)
    m = f16_field(b, 2)
    qs = b[..., 4:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.float32)
    return (d[..., None] * q + m[..., None]).reshape(b.shape[0], cols)



@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row of blocks (uint8 [C // 32 * 20]) into dst float32 [32] (see common.put)."""
    h = dst.shape[0] // 2  # 16, from the shapes (see q8_0)
    o = b * TYPE_SIZE
    d = f16_at(row, o)
    m = f16_at(row, o + 2)
    qs = row[o + 4: o + 4 + h]
    lo, hi, xlo, xhi = dst[:h], dst[h:], xb[:h], xb[h:]
    for j in range(h):
        v = np.int32(qs[j])
        put(lo, j, d * np.float32(v & 15) + m, xlo, dot)
        put(hi, j, d * np.float32(v >> 4) + m, xhi, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: four blocks per step, as Q4_0 (NIBBLE32 activations); the minimums
# multiply the exact block sums of x.
# ---------------------------------------------------------------------------------------------

# Four blocks at byte o: A = words at o, B = words at o+16 (B word i = A word i+8).
# Block k: d = word 10k, m = word 10k+1, quants = words 10k+2 .. 10k+9 (block 3: 32..39 = B's 24..31)
Q41_QS = shuffle2([10 * k + 2 + i for k in range(3) for i in range(8)] + [32 + 24 + i for i in range(8)])
Q41_D = shuffle([10 * (i // 4) for i in range(16)])
Q41_M = shuffle([1, 11, 21, 31])


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_vnni(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 20], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = x.shape[0] // XB
    H, L, sx, r16, xe = prepare(x, NIBBLE32)
    nstep = nb // 4
    sc = empty64(32 * nstep, np.float32)  # per step: 16 lanes of sx, 16 lanes of the centring term
    for b in range(4 * nstep):
        lanes(sc, 32 * (b >> 2) + 4 * (b & 3), 4, sx[b], centre(8, sx[b], r16[2 * b] + r16[2 * b + 1], xe[b], 4))
    for r in prange(rows):
        row = blocks[r]
        acc = splat(np.float32(0.0), 16)
        macc = splat(np.float32(0.0), 4)  # sum of m * sum(x) per block
        for s in range(nstep):
            wa = bitcast(load(row, s * 80, 64), np.int16)
            wb = bitcast(load(row, s * 80 + 16, 64), np.int16)
            ia = nibble_dot(bitcast(Q41_QS(wa, wb), np.uint8), H, L, 128 * s)
            t = fma(sitofp(ia), load(sc, 32 * s, 16), load(sc, 32 * s + 16, 16))
            acc = fma(t, fp16_to_f32(Q41_D(wa)), acc)
            macc = fma(fp16_to_f32(Q41_M(wa)), load(xe, 4 * s, 4), macc)
        out[r] = hsum(acc) + hsum(macc)
    add_tail(decode_block, blocks, x, out, 4 * nstep, XB)  # the last 1-3 blocks (tiny matrices only)


# Prefill (kernels.matmul_vnni): k-blocks of 32 columns, levels q = nibble centred on 8, minimums.
PREFILL_KCOLS, PREFILL_OFFSET, HAS_MIN = 32, 8, True


@njit(inline="always")
def prefill_levels(blocks, r, kb):
    """The 32 levels of k-block kb of row r, as <32 x u8>."""
    q = load(blocks[r], kb * 20 + 4, 16)
    return CAT16(q & np.uint8(15), q >> 4)


@njit(inline="always")
def prefill_scales(row, i, nkb, Dt, Mt):
    """Lane i of the k-block scales (and minimums) of a repacked group: Dt[16 kb + i], Mt[16 kb + i]."""
    for kb in range(nkb):
        Dt[16 * kb + i] = f16_at(row, kb * 20)
        Mt[16 * kb + i] = f16_at(row, kb * 20 + 2)
