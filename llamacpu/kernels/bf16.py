"""Prefill (matrix-matrix) products on bfloat16 weights with AVX512-BF16 `vdpbf16ps`.

`vdpbf16ps` multiplies 32 bfloat16 pairs and adds them into 16 float32 lanes in one instruction: twice
the multiply-adds per cycle of an fp32 FMA on Zen 4 and Sapphire Rapids, and what llama.cpp's tinyBLAS
runs for BF16 weights. Both operands are bfloat16, so the activations are rounded to bfloat16 once per
call (relative error 2^-9 per element, as in llama.cpp and in PyTorch's bf16 matmul); the products are
exact and accumulate in float32.

Layout: the weights as stored (row-major [R, C], no repacking), so decode keeps its kernels. The tiles
are `dense.panel`'s (4 rows x 4 tokens of float32 accumulators over the whole row, one horizontal sum
per output, as tinyBLAS does for row-major A and B; rows split across threads in panels of 32, whose
weights stay in L2 while every group of 4 tokens passes) with `vdpbf16ps` as the multiply-add.
"""
import numpy as np
from numba import njit, prange

from .dense import PANEL, panel
from .simd import dpbf16ps, load

LANES = 32  # bf16 lanes of one vdpbf16ps operand; the width must be a multiple of it


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


@njit(inline="always")
def _bf16x32(a, i):
    return load(a, i, 32)


@njit(inline="always")
def _dp(acc, w, x):
    return dpbf16ps(acc, w, x)


@njit(parallel=True, cache=True)
def matmul_bf16(w, xb, rows, cols, n, out):
    """out[t, r] = sum_c w[r, c] * x[t, c]: w bf16 bits flat [rows * cols], xb bf16 bits flat [n * cols],
    out float32 flat [n * rows]. cols % 32 == 0 (the caller checks). Only on CPUs with AVX512-BF16."""
    for p in prange((rows + PANEL - 1) // PANEL):
        panel(w, xb, rows, cols, n, out, p, _bf16x32, _bf16x32, _dp, LANES)
