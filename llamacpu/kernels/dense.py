"""Matrix-vector (decode) and matrix-matrix (prefill) products for unquantized weights.

W: [out_features, in_features] stored as float32, or float16 / bfloat16 bits in uint16 (Numba has no
16-bit float scalars; `halfbits` widens them in registers). Activations and accumulation are float32.
Decode reads every weight once: one contiguous row per iteration, rows split across threads.
Prefill (`matmul_panels_*`, one tile body: `panel`): output tiles of 4 rows x 4 tokens in 16 float32 vector accumulators, the
16-bit weights widened in registers (`vcvtph2ps`, or a shift for bf16) and multiplied into float32
activations with FMA: the arithmetic of the decode kernels, so no rounding of x. (`kernels/bf16.py` has
the faster `vdpbf16ps` kernel that rounds x to bf16, when the user asks for bf16 compute.)
The former route, widening a tile to float32 and calling NumPy's BLAS (`matmul_tiled`, kept for
widths that are not a multiple of 16), ran at 0.37x llama.cpp: OpenBLAS's own threads and Numba's
team took turns spinning on the 2 cores (2 BLAS threads were 4x slower than 1 around Numba kernels).
"""
import numpy as np
from numba import njit, prange

from .halfbits import bf16_to_f32, f16_to_f32
from .simd import bitcast, fma, fp16_to_f32, hsum, load, load_splat, splat, store, zext


@njit(parallel=True, cache=True, fastmath=True)
def matvec_f32(w, x, out):
    """out[r] = sum_c w[r, c] * x[c]; w float32 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += w[r, c] * x[c]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_f16(w, x, out):
    """Like matvec_f32 with w: IEEE half bits, uint16 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += f16_to_f32(w[r, c]) * x[c]
        out[r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_bf16(w, x, out):
    """Like matvec_f32 with w: bfloat16 bits, uint16 [R, C]."""
    rows, cols = w.shape
    for r in prange(rows):
        acc = np.float32(0.0)
        for c in range(cols):
            acc += bf16_to_f32(w[r, c]) * x[c]
        out[r] = acc


@njit(parallel=True, cache=True)
def widen_f16(w, r0, r1, out):
    """out[: r1 - r0] = float32(w[r0:r1]) for half bits w: uint16 [R, C]."""
    cols = w.shape[1]
    for r in prange(r1 - r0):
        for c in range(cols):
            out[r, c] = f16_to_f32(w[r0 + r, c])


@njit(parallel=True, cache=True)
def widen_bf16(w, r0, r1, out):
    """out[: r1 - r0] = float32(w[r0:r1]) for bfloat16 bits w: uint16 [R, C]."""
    cols = w.shape[1]
    for r in prange(r1 - r0):
        for c in range(cols):
            out[r, c] = bf16_to_f32(w[r0 + r, c])


TILE_BYTES = 1 << 20  # a widened tile stays in L2, so BLAS reads it from cache


def matmul_tiled(widen, w, x, out):
    """out[n, R] = x[n, C] @ W.T, widening W tile by tile (never the whole matrix) for BLAS."""
    rows, cols = w.shape
    tile_rows = max(16, TILE_BYTES // (4 * cols))
    tile = np.empty((min(tile_rows, rows), cols), np.float32)
    for r0 in range(0, rows, tile_rows):
        r1 = min(rows, r0 + tile_rows)
        widen(w, r0, r1, tile)
        np.matmul(x, tile[: r1 - r0].T, out=out[:, r0:r1])


# ---- prefill: register tiles over the rows as stored ------------------------------------------------------

PANEL = 32  # rows per parallel task: a panel's weights (32 x 2048 x 2 bytes = 128 KB) stay in L2 across tokens
LANES = 16  # float32 lanes of one accumulator; the width must be a multiple of it


@njit(inline="always")
def _w_f32(w, i):
    return load(w, i, 16)


@njit(inline="always")
def _w_f16(w, i):
    return fp16_to_f32(load(w, i, 16))


@njit(inline="always")
def _w_bf16(w, i):
    return bitcast(zext(load(w, i, 16), np.uint32) << 16, np.float32)


@njit(inline="always")
def _fma(acc, w, x):
    return fma(w, x, acc)


@njit(inline="always")
def _put(out, rows, t0, r0, nt, nr, dt, dr, acc):
    if dt < nt and dr < nr:
        out[(t0 + dt) * rows + r0 + dr] = hsum(acc)


@njit(inline="always")
def panel(w, x, rows, cols, n, out, p, wload, xload, madd, step):
    """out[t * rows + r] for the rows r of panel p ([p*PANEL, (p+1)*PANEL)) and every token t, over
    flat w [rows * cols] and x [n * cols]: acc = madd(acc, wload(w, i), xload(x, i)) over `step`
    columns at a time, one horizontal sum per output. Tails of rows and tokens compute on clamped
    (repeated) indices and store only the valid outputs. Shared with kernels/bf16.py."""
    p0 = p * PANEL
    p1 = min(rows, p0 + PANEL)
    for t0 in range(0, n, 4):
        b0 = t0 * cols
        b1 = min(n - 1, t0 + 1) * cols
        b2 = min(n - 1, t0 + 2) * cols
        b3 = min(n - 1, t0 + 3) * cols
        for r0 in range(p0, p1, 4):
            a0 = r0 * cols
            a1 = min(p1 - 1, r0 + 1) * cols
            a2 = min(p1 - 1, r0 + 2) * cols
            a3 = min(p1 - 1, r0 + 3) * cols
            z = splat(np.float32(0.0), 16)
            c00 = z; c01 = z; c02 = z; c03 = z  # noqa: E702  c<row><token>
            c10 = z; c11 = z; c12 = z; c13 = z  # noqa: E702
            c20 = z; c21 = z; c22 = z; c23 = z  # noqa: E702
            c30 = z; c31 = z; c32 = z; c33 = z  # noqa: E702
            for k in range(0, cols, step):
                x0 = xload(x, b0 + k)
                x1 = xload(x, b1 + k)
                x2 = xload(x, b2 + k)
                x3 = xload(x, b3 + k)
                w0 = wload(w, a0 + k)
                c00 = madd(c00, w0, x0); c01 = madd(c01, w0, x1); c02 = madd(c02, w0, x2); c03 = madd(c03, w0, x3)  # noqa: E702
                w1 = wload(w, a1 + k)
                c10 = madd(c10, w1, x0); c11 = madd(c11, w1, x1); c12 = madd(c12, w1, x2); c13 = madd(c13, w1, x3)  # noqa: E702
                w2 = wload(w, a2 + k)
                c20 = madd(c20, w2, x0); c21 = madd(c21, w2, x1); c22 = madd(c22, w2, x2); c23 = madd(c23, w2, x3)  # noqa: E702
                w3 = wload(w, a3 + k)
                c30 = madd(c30, w3, x0); c31 = madd(c31, w3, x1); c32 = madd(c32, w3, x2); c33 = madd(c33, w3, x3)  # noqa: E702
            nt = min(4, n - t0)
            nr = min(4, p1 - r0)
            _put(out, rows, t0, r0, nt, nr, 0, 0, c00); _put(out, rows, t0, r0, nt, nr, 1, 0, c01)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 2, 0, c02); _put(out, rows, t0, r0, nt, nr, 3, 0, c03)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 0, 1, c10); _put(out, rows, t0, r0, nt, nr, 1, 1, c11)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 2, 1, c12); _put(out, rows, t0, r0, nt, nr, 3, 1, c13)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 0, 2, c20); _put(out, rows, t0, r0, nt, nr, 1, 2, c21)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 2, 2, c22); _put(out, rows, t0, r0, nt, nr, 3, 2, c23)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 0, 3, c30); _put(out, rows, t0, r0, nt, nr, 1, 3, c31)  # noqa: E702
            _put(out, rows, t0, r0, nt, nr, 2, 3, c32); _put(out, rows, t0, r0, nt, nr, 3, 3, c33)  # noqa: E702


@njit(parallel=True, cache=True)
def matmul_panels_f32(w, x, rows, cols, n, out):
    """out[t * rows + r] = sum_c w[r * cols + c] * x[t * cols + c]; w float32, all flat, cols % 16 == 0."""
    for p in prange((rows + PANEL - 1) // PANEL):
        panel(w, x, rows, cols, n, out, p, _w_f32, _w_f32, _fma, LANES)


@njit(parallel=True, cache=True)
def matmul_panels_f16(w, x, rows, cols, n, out):
    """As matmul_panels_f32 with w: IEEE half bits, uint16."""
    for p in prange((rows + PANEL - 1) // PANEL):
        panel(w, x, rows, cols, n, out, p, _w_f16, _w_f32, _fma, LANES)


@njit(parallel=True, cache=True)
def matmul_panels_bf16(w, x, rows, cols, n, out):
    """As matmul_panels_f32 with w: bfloat16 bits, uint16."""
    for p in prange((rows + PANEL - 1) // PANEL):
        panel(w, x, rows, cols, n, out, p, _w_bf16, _w_f32, _fma, LANES)


def matvec_ref(w_f32, x):
    return w_f32 @ x


# Decode rows of several sequences (the serving engine): each token's result is bit for bit what the
# matvec above gives it alone (same loop, vectorized alike), whatever the other tokens, each row read once.
@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_f32(w, X, out):
    """out[t] = matvec_f32(w, X[t]) for every t; X float32 [n, C], out float32 [n, R]."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += w[r, c] * X[t, c]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_f16(w, X, out):
    """out[t] = matvec_f16(w, X[t]) for every t."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += f16_to_f32(w[r, c]) * X[t, c]
            out[t, r] = acc


@njit(parallel=True, cache=True, fastmath=True)
def matvec_rows_bf16(w, X, out):
    """out[t] = matvec_bf16(w, X[t]) for every t."""
    rows, cols = w.shape
    for r in prange(rows):
        for t in range(X.shape[0]):
            acc = np.float32(0.0)
            for c in range(cols):
                acc += bf16_to_f32(w[r, c]) * X[t, c]
            out[t, r] = acc


# ---- interleaved by 16 rows: one kernel for decode, batched decode and prefill ------------------------------
# Row by row, a decode token streams each weight row beside the whole activation vector: a 5632-wide float32
# x (22.5 KB) and the row's weights overflow the 32 KB L1 together, so x is fetched again from L2 for every
# row and the F16 down projection read DRAM at ~60% of the rate of the 2048-wide ones (bench/README.md
# "F16 and BF16 interleaved"). Interleaved, group g holds rows 16g .. 16g+15 column by column
# (packed[(g * cols + c) * 16 + lane] = w[16g + lane, c]): one contiguous stream per group, each 32-byte
# column of 16 weights widened into one float32 vector and multiplied by the broadcast x[c], so x is read
# once per 16 rows and 16 outputs sit in one accumulator (no horizontal sums). The copy lands in NumPy's
# memory, which asks for transparent huge pages (fewer TLB misses than the checkpoint's 4 KiB file pages).
# bf16 compute (dtype="bfloat16") keeps each pair of columns side by side instead ("pairs": packed[(g * cols
# + 2k) * 16 + 2 * lane + j] = w[16g + lane, 2k + j]), the operand layout of `vdpbf16ps`, whose prefill
# multiplies 32 weights by one broadcast pair of bf16 activations; its exact float32 kernel widens a pair
# with two shifts and runs the same FMAs in the same order as the column layout (the same bits).
GROUP = 16  # rows per group: the 16 float32 lanes of one vector
SPLIT = 4   # partial sums per output (columns c % 4): four independent FMA chains; cols % SPLIT == 0
TOKEN_BLOCK = 64  # prefill: tokens whose activations stay in L2 while every group passes over them


def interleave16_ref(w: np.ndarray, pairs: bool = False) -> np.ndarray:
    """NumPy reference of the layout: [R, C] (R % 16 == 0; C even for pairs) -> flat [R * C]."""
    rows, cols = w.shape
    if pairs:
        return np.ascontiguousarray(w.reshape(rows // GROUP, GROUP, cols // 2, 2).transpose(0, 2, 1, 3)).reshape(-1)
    return np.ascontiguousarray(w.reshape(rows // GROUP, GROUP, cols).transpose(0, 2, 1)).reshape(-1)


def deinterleave16(p: np.ndarray, rows: int, cols: int, pairs: bool = False) -> np.ndarray:
    """The stored row order back: flat [R * C] -> [R, C] (a copy)."""
    if pairs:
        return np.ascontiguousarray(p.reshape(rows // GROUP, cols // 2, GROUP, 2).transpose(0, 2, 1, 3)).reshape(rows, cols)
    return np.ascontiguousarray(p.reshape(rows // GROUP, cols, GROUP).transpose(0, 2, 1)).reshape(rows, cols)


@njit(parallel=True, cache=True)
def interleave16(w, out, pairs):
    """out = interleave16_ref(w, pairs) for w [R, C] (any dtype), out flat [R * C] of the same dtype."""
    rows, cols = w.shape
    for g in prange(rows // GROUP):
        base = g * cols * GROUP
        if pairs:
            for k in range(cols // 2):
                for lane in range(GROUP):
                    out[base + 2 * k * GROUP + 2 * lane] = w[g * GROUP + lane, 2 * k]
                    out[base + 2 * k * GROUP + 2 * lane + 1] = w[g * GROUP + lane, 2 * k + 1]
        else:
            for c in range(cols):
                for lane in range(GROUP):
                    out[base + c * GROUP + lane] = w[g * GROUP + lane, c]


def matmul16_ref(w_f32: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What the interleaved kernels compute, in float64 (their rounding order: four partial sums over the
    columns c % 4, each in column order, then (s0 + s1) + (s2 + s3)); x float32 [n, C] -> [n, R]."""
    w, x = w_f32.astype(np.float64), x.astype(np.float64)
    return sum(x[:, k::SPLIT] @ w[:, k::SPLIT].T for k in range(SPLIT))


# Two columns (c, c + 1) of a group's 16 rows as float32 vectors, from flat index i (the first's) per layout
@njit(inline="always")
def _cols_f16(p, i):
    return _w_f16(p, i), _w_f16(p, i + GROUP)


@njit(inline="always")
def _cols_bf16(p, i):
    return _w_bf16(p, i), _w_bf16(p, i + GROUP)


@njit(inline="always")
def _cols_bf16_pairs(p, i):
    v = bitcast(load(p, i, 32), np.uint32)  # 32 bf16 = 16 rows x 2 columns; lane r: w[r, c] | w[r, c + 1] << 16
    return bitcast(v << 16, np.float32), bitcast(v & np.uint32(0xFFFF0000), np.float32)


@njit(inline="always")
def _group1(p, base, x, xt, cols, wload2):
    """The 16 outputs of one group for the token whose activations start at x[xt]."""
    z = splat(np.float32(0.0), 16)
    s0 = z; s1 = z; s2 = z; s3 = z  # noqa: E702  partial sums over the columns c % 4
    for c in range(0, cols, SPLIT):
        i = base + c * GROUP
        w0, w1 = wload2(p, i)
        w2, w3 = wload2(p, i + 2 * GROUP)
        s0 = fma(w0, load_splat(x, xt + c, 16), s0)
        s1 = fma(w1, load_splat(x, xt + c + 1, 16), s1)
        s2 = fma(w2, load_splat(x, xt + c + 2, 16), s2)
        s3 = fma(w3, load_splat(x, xt + c + 3, 16), s3)
    return (s0 + s1) + (s2 + s3)


@njit(inline="always")
def _group4(p, base, x, xt, cols, wload2, out, o, rows):
    """_group1 for four tokens (activations at x[xt + k * cols], outputs at out[o + k * rows]): each column of
    weights widened once for the four, the same FMAs in the same order per output, so the same bits."""
    z = splat(np.float32(0.0), 16)
    a0 = z; a1 = z; a2 = z; a3 = z  # noqa: E702  token 0, partial sums 0..3
    b0 = z; b1 = z; b2 = z; b3 = z  # noqa: E702  token 1
    c0 = z; c1 = z; c2 = z; c3 = z  # noqa: E702  token 2
    d0 = z; d1 = z; d2 = z; d3 = z  # noqa: E702  token 3
    xa = xt; xb = xt + cols; xc = xt + 2 * cols; xd = xt + 3 * cols  # noqa: E702
    for c in range(0, cols, SPLIT):
        i = base + c * GROUP
        w, v = wload2(p, i)
        a0 = fma(w, load_splat(x, xa + c, 16), a0); b0 = fma(w, load_splat(x, xb + c, 16), b0)  # noqa: E702
        c0 = fma(w, load_splat(x, xc + c, 16), c0); d0 = fma(w, load_splat(x, xd + c, 16), d0)  # noqa: E702
        a1 = fma(v, load_splat(x, xa + c + 1, 16), a1); b1 = fma(v, load_splat(x, xb + c + 1, 16), b1)  # noqa: E702
        c1 = fma(v, load_splat(x, xc + c + 1, 16), c1); d1 = fma(v, load_splat(x, xd + c + 1, 16), d1)  # noqa: E702
        w, v = wload2(p, i + 2 * GROUP)
        a2 = fma(w, load_splat(x, xa + c + 2, 16), a2); b2 = fma(w, load_splat(x, xb + c + 2, 16), b2)  # noqa: E702
        c2 = fma(w, load_splat(x, xc + c + 2, 16), c2); d2 = fma(w, load_splat(x, xd + c + 2, 16), d2)  # noqa: E702
        a3 = fma(v, load_splat(x, xa + c + 3, 16), a3); b3 = fma(v, load_splat(x, xb + c + 3, 16), b3)  # noqa: E702
        c3 = fma(v, load_splat(x, xc + c + 3, 16), c3); d3 = fma(v, load_splat(x, xd + c + 3, 16), d3)  # noqa: E702
    store(out, o, (a0 + a1) + (a2 + a3))
    store(out, o + rows, (b0 + b1) + (b2 + b3))
    store(out, o + 2 * rows, (c0 + c1) + (c2 + c3))
    store(out, o + 3 * rows, (d0 + d1) + (d2 + d3))


@njit(inline="always")
def _group_tokens(p, g, x, rows, cols, t0, t1, out, wload2):
    """Group g's 16 outputs for tokens t0 .. t1-1: four at a time, then one by one (the same bits)."""
    base = g * cols * GROUP
    t = t0
    while t + 4 <= t1:
        _group4(p, base, x, t * cols, cols, wload2, out, t * rows + g * GROUP, rows)
        t += 4
    while t < t1:
        store(out, t * rows + g * GROUP, _group1(p, base, x, t * cols, cols, wload2))
        t += 1


@njit(inline="always")
def matmul16(p, x, rows, cols, n, out, wload2):
    """out[t * rows + r] = sum_c w[r, c] * x[t * cols + c] for every token t < n, over p = interleave16(w):
    every row's result the same bits whatever n (tested). Flat operands, rows % 16 == 0, cols % 4 == 0."""
    for t0 in range(0, n, TOKEN_BLOCK):
        t1 = min(n, t0 + TOKEN_BLOCK)
        for g in prange(rows // GROUP):
            _group_tokens(p, g, x, rows, cols, t0, t1, out, wload2)


@njit(inline="always")
def matmul16_shared(a, b, c, X, oa, ob, oc, wload2):
    """matmul16 for up to three matrices that share their input (q/k/v, gate/up) in one parallel loop over all
    their groups, with the calling convention of the quantized kernels (quant/vnni.py), which the compiled
    decode step relies on: a, b, c = the interleaved matrices' bytes as uint8 [rows, 2 * cols] (b, c with no
    rows: absent), X float32 [n, cols], oa / ob / oc float32 [n, rows of a / b / c], all C-contiguous. Each
    output the same bits as matmul16 gives it."""
    n, cols = X.shape
    x = X.reshape(-1)
    ra, rb, rc = a.shape[0], b.shape[0], c.shape[0]
    pa, pb, pc = a.reshape(-1).view(np.uint16), b.reshape(-1).view(np.uint16), c.reshape(-1).view(np.uint16)
    fa, fb, fc = oa.reshape(-1), ob.reshape(-1), oc.reshape(-1)
    ga, gb = ra // GROUP, rb // GROUP
    for t0 in range(0, n, TOKEN_BLOCK):
        t1 = min(n, t0 + TOKEN_BLOCK)
        for g in prange((ra + rb + rc) // GROUP):
            if g < ga:
                _group_tokens(pa, g, x, ra, cols, t0, t1, fa, wload2)
            elif g < ga + gb:
                _group_tokens(pb, g - ga, x, rb, cols, t0, t1, fb, wload2)
            else:
                _group_tokens(pc, g - ga - gb, x, rc, cols, t0, t1, fc, wload2)


@njit(parallel=True, cache=True)
def matmul16_f16(p, x, rows, cols, n, out):
    """matmul16 on IEEE half bits (uint16)."""
    matmul16(p, x, rows, cols, n, out, _cols_f16)


@njit(parallel=True, cache=True)
def matmul16_bf16(p, x, rows, cols, n, out):
    """matmul16 on bfloat16 bits (uint16)."""
    matmul16(p, x, rows, cols, n, out, _cols_bf16)


@njit(parallel=True, cache=True)
def matmul16_bf16_pairs(p, x, rows, cols, n, out):
    """matmul16 on bfloat16 bits in the pairs layout: the bits matmul16_bf16 gives on the column layout."""
    matmul16(p, x, rows, cols, n, out, _cols_bf16_pairs)


@njit(parallel=True, cache=True)
def matmul16_shared_f16(a, b, c, X, oa, ob, oc, unused):
    """matmul16_shared on IEEE half bits (`unused`: the quantized kernels' flag, same signature)."""
    matmul16_shared(a, b, c, X, oa, ob, oc, _cols_f16)


@njit(parallel=True, cache=True)
def matmul16_shared_bf16(a, b, c, X, oa, ob, oc, unused):
    """matmul16_shared on bfloat16 bits."""
    matmul16_shared(a, b, c, X, oa, ob, oc, _cols_bf16)


@njit(parallel=True, cache=True)
def matmul16_shared_bf16_pairs(a, b, c, X, oa, ob, oc, unused):
    """matmul16_shared on bfloat16 bits in the pairs layout."""
    matmul16_shared(a, b, c, X, oa, ob, oc, _cols_bf16_pairs)
