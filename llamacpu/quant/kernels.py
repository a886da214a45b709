"""The kernels every format shares, written once: the portable matvec (decode) and matmul (prefill),
the VNNI prefill driver, and the NumPy references the tests compare them with.

Each format module supplies its pieces (see the "Adding a block format" section of docs/ARCHITECTURE.md):

    decode_block(row, b, dst, xb, dot)    block b of a row: dst = W (dot=False) or dst += W * xb (dot=True)
    vnni_setup(X), vnni_dot(row, ctx, t)  its AVX512-VNNI decode pieces: per-call activation set-up for n
                                          tokens, and one row times token t (the step loop is the format)
    decode_vnni(a, b, c, X, oa, ob, oc)   its decode kernel: vnni.decode_rows over those pieces, for up to
                                          three matrices sharing X (0-row blocks for the unused ones)
    matvec_vnni(blocks, x, out)           one token (decode_vnni, or a kernel of its own)
    prefill_block(row, kb)                k-block kb for the VNNI prefill: (levels, scale, minimum)
    PREFILL = (k-block columns, level offset, has minimums)

Numba cannot cache a kernel that receives a jitted function as an argument, so the drivers take the
format's index (`fid`, its place in MODULES) and switch on it; the switch is per block or per group of
16 rows (a predictable branch, nothing measurable), and each branch calls the format's pieces with
literal arguments, so they are specialized as when each format had its own copy.
"""
import numpy as np
from numba import njit, prange

from . import int4_g128, iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0
from .common import FASTMATH
from .vnni import MM_ROWS, mm_group, mm_setup, put4, put8, quad_rows

MODULES = (q8_0, q4_0, q4_1, q4_k, q6_k, int4_g128,  # index = the format's ID
           q5_0, q5_1, q5_k, q2_k, q3_k, iq4_nl, iq4_xs)
assert all(m.ID == i for i, m in enumerate(MODULES)), "each format's ID must be its index in MODULES"
# The formats with AVX512-VNNI kernels (matvec_vnni and the prefill pieces); the others use their
# portable kernels on every CPU.
VNNI_MODULES = tuple(m for m in MODULES if hasattr(m, "matvec_vnni"))

TYPE_SIZES = tuple(m.TYPE_SIZE for m in MODULES)
PREFILL = tuple(getattr(m, "PREFILL", (32, 0, False)) for m in MODULES)  # (k-block columns, level offset, has minimums)

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
# VNNI prefill (AVX512-VNNI CPUs only; see vnni.py for the tile and the activation scheme)
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _repack(block, put, blocks, r0, rows, nkb, Wt32, Dt, Mt):
    """Rows r0 .. r0 + 16 of W into the row-interleaved tile Wt32, their k-block scales and minimums into
    Dt, Mt [16 kb + row]. `block(row, kb)` is the format's prefill_block; rows past the end repeat the
    last row (their lanes are computed and never stored)."""
    for quad in range(4):
        ra, rb, rc, rd = quad_rows(r0, quad, rows)
        for kb in range(nkb):
            la, Dt[16 * kb + 4 * quad], Mt[16 * kb + 4 * quad] = block(blocks[ra], kb)
            lb, Dt[16 * kb + 4 * quad + 1], Mt[16 * kb + 4 * quad + 1] = block(blocks[rb], kb)
            lc, Dt[16 * kb + 4 * quad + 2], Mt[16 * kb + 4 * quad + 2] = block(blocks[rc], kb)
            ld, Dt[16 * kb + 4 * quad + 3], Mt[16 * kb + 4 * quad + 3] = block(blocks[rd], kb)
            put(Wt32, kb, quad, la, lb, lc, ld)


@njit(inline="always")
def _repack_format(fid, blocks, r0, rows, nkb, Wt32, Dt, Mt):
    """_repack with format fid's prefill_block (put4 for Q6_K's 16-column k-blocks)."""
    if fid == q8_0.ID:
        _repack(q8_0.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == q4_0.ID:
        _repack(q4_0.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == q4_1.ID:
        _repack(q4_1.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == q4_k.ID:
        _repack(q4_k.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == q6_k.ID:
        _repack(q6_k.prefill_block, put4, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == q5_k.ID:
        _repack(q5_k.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)
    elif fid == int4_g128.ID:
        _repack(int4_g128.prefill_block, put8, blocks, r0, rows, nkb, Wt32, Dt, Mt)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(fid, blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R].  Any n >= 1."""
    rows = blocks.shape[0]
    n, C = X.shape
    kcols, offset, has_min = PREFILL[fid]
    nkb = C // kcols
    XH32, XL32, sxk, cck, xek, n4 = mm_setup(X, kcols, offset, has_min)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * kcols * 16, np.uint8)
        Dt = np.empty(nkb * 16, np.float32)
        Mt = np.empty(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        _repack_format(fid, blocks, r0, rows, nkb, Wt.view(np.uint32), Dt, Mt)
        # mm_group with literal (minimums, k-groups per k-block): with a run-time k-group count its loop is
        # not unrolled and the kernel runs 40% slower
        if has_min:
            mm_group(Wt, Dt, Mt, True, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)
        elif kcols == 32:
            mm_group(Wt, Dt, Mt, False, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)
        else:
            mm_group(Wt, Dt, Mt, False, 4, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


# ---------------------------------------------------------------------------------------------
# References (for tests): the same products through the format's NumPy dequantize
# ---------------------------------------------------------------------------------------------


def matvec_ref(fmt, blocks: np.ndarray, x: np.ndarray) -> np.ndarray:
    """W @ x in float32 through `fmt.dequantize` (fmt: a QuantFormat or a format module)."""
    return fmt.dequantize(blocks, x.shape[0]) @ x


def matmul_ref(fmt, blocks: np.ndarray, X: np.ndarray) -> np.ndarray:
    """X @ W.T in float32 through `fmt.dequantize`."""
    return X @ fmt.dequantize(blocks, X.shape[1]).T
