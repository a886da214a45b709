"""The kernels every format shares, written once: the portable matvec (decode) and matmul (prefill),
and the NumPy references the tests compare them with.

Each format module supplies its pieces (see the "Adding a block format" section of docs/ARCHITECTURE.md):

    decode_block(row, b, dst, xb, dot)    block b of a row: dst = W (dot=False) or dst += W * xb (dot=True)

and, where it has AVX512-VNNI kernels:

    vnni_setup(X), vnni_dot(row, ctx, t)  decode: per-call activation set-up for n tokens, and one row
                                          times token t (the step loop is the format)
    prefill_block(row, kb)                prefill: k-block kb as (levels, scale, minimum)
    PREFILL = (k-block columns, level offset, has minimums)
    matmul_vnni(a, b, c, X, oa, ob, oc, prefill)   its kernel: a four-line stub that passes those pieces
                                          to the body written once, vnni.matmul (decode, batched decode,
                                          fused q/k/v and gate/up, prefill)

Numba cannot cache a kernel that receives a jitted function as an argument, so the portable drivers here
take the format's index (`fid`, its place in MODULES) and switch on it per block (a predictable branch,
nothing measurable); each branch calls the format's decoder with literal arguments, so it is
specialized as when each format had its own copy. The VNNI kernels are one stub per format instead (a
stub per format compiles only the formats in use; a switch would compile all of them per signature).
"""
import numpy as np
from numba import njit, prange

from . import int4_g128, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0
from .common import FASTMATH

MODULES = (q8_0, q4_0, q4_1, q4_k, q6_k, int4_g128,  # index = the format's ID
           q5_0, q5_1, q5_k, q2_k, q3_k, iq4_nl, iq4_xs)
assert all(m.ID == i for i, m in enumerate(MODULES)), "each format's ID must be its index in MODULES"
# The formats with AVX512-VNNI kernels (matmul_vnni); the others use their portable kernels on every CPU.
VNNI_MODULES = tuple(m for m in MODULES if hasattr(m, "matmul_vnni"))

TYPE_SIZES = tuple(m.TYPE_SIZE for m in MODULES)

# Rows of W that one portable matmul task decodes at once (float32 [MATMUL_TILE, C] per thread: 360 KB
# for C = 5632, inside the 1 MB L2 of a Zen 4 core), then multiplies by every token.
MATMUL_TILE = 16
# Up to this many tokens the VNNI matmul runs the format's decode kernel (each row read once and
# multiplied by every token from L1: it redoes the weights' unpacking per token); more go to the prefill
# kernel (rows repacked once per call, then cheaper per token). Both read each weight once per call.
# Measured crossover on a compute-bound machine: 4-5 tokens (bench/README.md, "Batched decode").
DECODE_MAX_TOKENS = 4
MM_MIN_TOKENS = DECODE_MAX_TOKENS + 1


@njit(inline="always")
def decode_block(fid, row, b, dst, xb, dot):
    """Block b of `row` in format `fid`: dst = its weights, or dst += its weights * xb (see common.put)."""
    if fid == q8_0.ID:
        q8_0.decode_block(row, b, dst, xb, dot)
    elif fid == q4_0.ID:
        q4_0.decode_block(row, b, dst, xb, dot)
    elif fid == q4_1.ID:
        q4_1.decode_block(row, b, dst, xb, dot)
    elif fid == q4_k.ID:
        q4_k.decode_block(row, b, dst, xb, dot)
    elif fid == q6_k.ID:
        q6_k.decode_block(row, b, dst, xb, dot)
    elif fid == int4_g128.ID:
        int4_g128.decode_block(row, b, dst, xb, dot)
    elif fid == q5_0.ID:
        q5_0.decode_block(row, b, dst, xb, dot)
    elif fid == q5_1.ID:
        q5_1.decode_block(row, b, dst, xb, dot)
    elif fid == q5_k.ID:
        q5_k.decode_block(row, b, dst, xb, dot)
    elif fid == q2_k.ID:
        q2_k.decode_block(row, b, dst, xb, dot)
    elif fid == q3_k.ID:
        q3_k.decode_block(row, b, dst, xb, dot)
    elif fid == iq4_nl.ID:
        iq4_nl.decode_block(row, b, dst, xb, dot)
    else:
        iq4_xs.decode_block(row, b, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# Portable kernels (plain Numba: every CPU)
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec(fid, blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // block * type_size], x float32 [C], out float32 [R].

    Each row is streamed once, decoded block by block straight into one accumulator lane per position
    in the block: one horizontal sum per row."""
    rows = blocks.shape[0]
    nb = blocks.shape[1] // TYPE_SIZES[fid]
    bs = x.shape[0] // nb  # the block size, from the shapes: a literal trip count gets unrolled badly
    for r in prange(rows):
        row = blocks[r]
        acc = np.zeros(bs, np.float32)
        for b in range(nb):
            decode_block(fid, row, b, acc, x[b * bs: b * bs + bs], True)
        out[r] = acc.sum()


@njit(cache=True, fastmath=FASTMATH)
def dequantize_row(fid, row, dst):
    """dst float32 [C] = the weights of one row of blocks (uint8 [C // block * type_size])."""
    nb = row.shape[0] // TYPE_SIZES[fid]
    bs = dst.shape[0] // nb
    for b in range(nb):
        w = dst[b * bs: b * bs + bs]
        decode_block(fid, row, b, w, w, False)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul(fid, blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R].

    A task decodes a tile of rows into a per-thread buffer once and reuses it for all n tokens."""
    rows = blocks.shape[0]
    n, cols = X.shape
    ntiles = (rows + MATMUL_TILE - 1) // MATMUL_TILE
    for tile in prange(ntiles):
        r0 = tile * MATMUL_TILE
        nr = min(rows, r0 + MATMUL_TILE) - r0
        w = np.empty((nr, cols), np.float32)  # this task's rows, decoded once for all n tokens
        for i in range(nr):
            dequantize_row(fid, blocks[r0 + i], w[i])
        for t in range(n):
            xt = X[t]
            for i in range(nr):
                wi = w[i]
                s = np.float32(0.0)
                for c in range(cols):
                    s += wi[c] * xt[c]
                out[t, r0 + i] = s


# ---------------------------------------------------------------------------------------------
# References (for tests): the same products through the format's NumPy dequantize
# ---------------------------------------------------------------------------------------------


def matvec_ref(fmt, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W @ x in float32 through `fmt.dequantize` (fmt: a QuantFormat or a format module)."""
    return fmt.dequantize(blocks, x.shape[0]) @ x


def matmul_ref(fmt, blocks: np.ndarray, X: np.ndarray) -> np.ndarray:
    """X @ W.T in float32 through `fmt.dequantize`."""
    return X @ fmt.dequantize(blocks, X.shape[1]).T
