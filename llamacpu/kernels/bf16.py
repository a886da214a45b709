"""Prefill (matrix-matrix) products on bfloat16 weights with AVX512-BF16 `vdpbf16ps`.

`vdpbf16ps` multiplies 32 bfloat16 pairs and adds them into 16 float32 lanes in one instruction: twice
the multiply-adds per cycle of an fp32 FMA on Zen 4 and Sapphire Rapids, and what llama.cpp's tinyBLAS
runs for BF16 weights. Both operands are bfloat16, so the activations are rounded to bfloat16 once per
call (relative error 2^-9 per element, as in llama.cpp and in PyTorch's bf16 matmul); the products are
exact and accumulate in float32.

Layout: the weights as stored (row-major [R, C], no repacking), so decode keeps its kernels. Each
output tile of 4 rows x 4 tokens is 16 accumulators held in registers over the whole row (a dot
product per pair, one horizontal sum per output at the end), as tinyBLAS does for row-major A and B.
Rows are split across threads in panels of PANEL rows; inside a panel the panel's weights (PANEL x C
bf16, in L2) are reused by every group of 4 tokens, whose activations (4 x C bf16) sit in L1.
"""
import numpy as np
from numba import njit, prange

from .simd import HAS_AVX512_BF16, dpbf16ps, hsum, load, splat

LANES = 32  # bf16 lanes of one vdpbf16ps operand; the width must be a multiple of it
PANEL = 32  # rows per parallel task: 32 x 2048 bf16 = 128 KB of weights kept in L2 across tokens


@njit(cache=True)
def round_to_bf16(x, out):
    """out[i] = bf16 bits of x[i], round to nearest even (x finite; NaN stays NaN, quiet)."""
    xi = x.view(np.uint32)
    for i in range(xi.size):
        b = xi[i]
        if (b & 0x7FFFFFFF) > 0x7F800000:  # NaN: keep it a NaN
            out[i] = np.uint16((b >> 16) | 0x40)
        else:
            out[i] = np.uint16((b + 0x7FFF + ((b >> 16) & 1)) >> 16)


@njit(parallel=True, cache=True)
def matmul_bf16(w, xb, rows, cols, n, out):
    """out[t, r] = sum_c w[r, c] * x[t, c]: w bf16 bits flat [rows * cols], xb bf16 bits flat [n * cols],
    out float32 flat [n * rows]. cols % 32 == 0 (the caller checks). Tails of rows and tokens compute on
    clamped (repeated) indices and store only the valid outputs."""
    panels = (rows + PANEL - 1) // PANEL
    for p in prange(panels):
        p0 = p * PANEL
        p1 = min(rows, p0 + PANEL)
        for t0 in range(0, n, 4):
            t1 = min(n - 1, t0 + 1) * cols
            t2 = min(n - 1, t0 + 2) * cols
            t3 = min(n - 1, t0 + 3) * cols
            tb = t0 * cols
            for r0 in range(p0, p1, 4):
                a0 = r0 * cols
                a1 = min(p1 - 1, r0 + 1) * cols
                a2 = min(p1 - 1, r0 + 2) * cols
                a3 = min(p1 - 1, r0 + 3) * cols
                z = splat(np.float32(0.0), 16)
                c00 = z; c01 = z; c02 = z; c03 = z
                c10 = z; c11 = z; c12 = z; c13 = z
                c20 = z; c21 = z; c22 = z; c23 = z
                c30 = z; c31 = z; c32 = z; c33 = z
                for k in range(0, cols, 32):
                    x0 = load(xb, tb + k, 32)
                    x1 = load(xb, t1 + k, 32)
                    x2 = load(xb, t2 + k, 32)
                    x3 = load(xb, t3 + k, 32)
                    w0 = load(w, a0 + k, 32)
                    c00 = dpbf16ps(c00, w0, x0); c01 = dpbf16ps(c01, w0, x1)
                    c02 = dpbf16ps(c02, w0, x2); c03 = dpbf16ps(c03, w0, x3)
                    w1 = load(w, a1 + k, 32)
                    c10 = dpbf16ps(c10, w1, x0); c11 = dpbf16ps(c11, w1, x1)
                    c12 = dpbf16ps(c12, w1, x2); c13 = dpbf16ps(c13, w1, x3)
                    w2 = load(w, a2 + k, 32)
                    c20 = dpbf16ps(c20, w2, x0); c21 = dpbf16ps(c21, w2, x1)
                    c22 = dpbf16ps(c22, w2, x2); c23 = dpbf16ps(c23, w2, x3)
                    w3 = load(w, a3 + k, 32)
                    c30 = dpbf16ps(c30, w3, x0); c31 = dpbf16ps(c31, w3, x1)
                    c32 = dpbf16ps(c32, w3, x2); c33 = dpbf16ps(c33, w3, x3)
                nt = min(4, n - t0)
                nr = min(4, p1 - r0)
                _put(out, rows, t0, r0, nt, nr, 0, 0, c00); _put(out, rows, t0, r0, nt, nr, 1, 0, c01)
                _put(out, rows, t0, r0, nt, nr, 2, 0, c02); _put(out, rows, t0, r0, nt, nr, 3, 0, c03)
                _put(out, rows, t0, r0, nt, nr, 0, 1, c10); _put(out, rows, t0, r0, nt, nr, 1, 1, c11)
                _put(out, rows, t0, r0, nt, nr, 2, 1, c12); _put(out, rows, t0, r0, nt, nr, 3, 1, c13)
                _put(out, rows, t0, r0, nt, nr, 0, 2, c20); _put(out, rows, t0, r0, nt, nr, 1, 2, c21)
                _put(out, rows, t0, r0, nt, nr, 2, 2, c22); _put(out, rows, t0, r0, nt, nr, 3, 2, c23)
                _put(out, rows, t0, r0, nt, nr, 0, 3, c30); _put(out, rows, t0, r0, nt, nr, 1, 3, c31)
                _put(out, rows, t0, r0, nt, nr, 2, 3, c32); _put(out, rows, t0, r0, nt, nr, 3, 3, c33)


@njit(inline="always")
def _put(out, rows, t0, r0, nt, nr, dt, dr, acc):
    if dt < nt and dr < nr:
        out[(t0 + dt) * rows + r0 + dr] = hsum(acc)
