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
from .simd import bitcast, fma, fp16_to_f32, hsum, load, splat, zext


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
