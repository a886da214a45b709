"""Prefill (matrix-matrix) products on bfloat16 weights with AVX512-BF16 `vdpbf16ps`.

`vdpbf16ps` multiplies 32 bfloat16 pairs and adds them into 16 float32 lanes in one instruction: twice
the multiply-adds per cycle of an fp32 FMA on Zen 4 and Sapphire Rapids, and what llama.cpp's tinyBLAS
runs for BF16 weights. Both operands are bfloat16, so the activations are rounded to bfloat16 once per
call (relative error 2^-9 per element, as in llama.cpp and in PyTorch's bf16 matmul); the products are
exact and accumulate in float32.

`matmul16_pairs_bf16` runs on the CPU backend's interleaved copy (dense.py, the pairs layout: decode then
has the interleaved float32 kernel); `matmul_bf16` on the weights as stored (row-major [R, C]). Its tiles
are `dense.panel`'s (4 rows x 4 tokens of float32 accumulators over the whole row, one horizontal sum
per output, as tinyBLAS does for row-major A and B; rows split across threads in panels of 32, whose
weights stay in L2 while every group of 4 tokens passes) with `vdpbf16ps` as the multiply-add.
"""
import numpy as np
from numba import njit, prange

from .dense import GROUP, PANEL, TOKEN_BLOCK, panel
from .simd import dpbf16ps, load, load_splat, splat, store

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


@njit(parallel=True, cache=True)
def matmul16_pairs_bf16(p, xb, rows, cols, n, out):
    """out[t * rows + r] = sum_c w[r, c] * xb[t * cols + c] over p = dense.interleave16(w, pairs=True) (bf16
    bits; rows % 16 == 0, cols % 4 == 0), xb bf16 bits flat [n * cols] (round_to_bf16), out float32 flat
    [n * rows]. Per group of 16 rows and pair of columns: one 64-byte load of weights, one `vdpbf16ps` per
    token with that token's bf16 pair broadcast (no horizontal sums); four tokens at a time, each with two
    accumulators (even and odd pairs) for eight independent chains. Only on CPUs with AVX512-BF16."""
    x32 = xb.view(np.uint32)  # one bf16 pair of activations per 32-bit lane
    half = cols // 2
    for t0 in range(0, n, TOKEN_BLOCK):
        t1 = min(n, t0 + TOKEN_BLOCK)
        for g in prange(rows // GROUP):
            base = g * cols * GROUP
            for t in range(t0, t1, 4):
                # a tail's missing tokens repeat the last one (clamped) and are not stored
                xa = t * half
                xb_ = min(t + 1, t1 - 1) * half
                xc = min(t + 2, t1 - 1) * half
                xd = min(t + 3, t1 - 1) * half
                z = splat(np.float32(0.0), 16)
                a0 = z; a1 = z; b0 = z; b1 = z; c0 = z; c1 = z; d0 = z; d1 = z  # noqa: E702
                for k in range(0, half, 2):
                    w = load(p, base + k * 2 * GROUP, 32)
                    a0 = dpbf16ps(a0, w, load_splat(x32, xa + k, 16))
                    b0 = dpbf16ps(b0, w, load_splat(x32, xb_ + k, 16))
                    c0 = dpbf16ps(c0, w, load_splat(x32, xc + k, 16))
                    d0 = dpbf16ps(d0, w, load_splat(x32, xd + k, 16))
                    w = load(p, base + (k + 1) * 2 * GROUP, 32)
                    a1 = dpbf16ps(a1, w, load_splat(x32, xa + k + 1, 16))
                    b1 = dpbf16ps(b1, w, load_splat(x32, xb_ + k + 1, 16))
                    c1 = dpbf16ps(c1, w, load_splat(x32, xc + k + 1, 16))
                    d1 = dpbf16ps(d1, w, load_splat(x32, xd + k + 1, 16))
                o = t * rows + g * GROUP
                store(out, o, a0 + a1)
                if t + 1 < t1:
                    store(out, o + rows, b0 + b1)
                if t + 2 < t1:
                    store(out, o + 2 * rows, c0 + c1)
                if t + 3 < t1:
                    store(out, o + 3 * rows, d0 + d1)
