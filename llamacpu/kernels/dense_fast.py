"""F16 and BF16 matrix-vector products with explicit 512-bit vectors (decode of unquantized weights).

    matvec_fast_f16(w, x, out)    w: IEEE half bits uint16 [R, C]    same results as dense.matvec_f16
    matvec_fast_bf16(w, x, out)   w: bfloat16 bits uint16 [R, C]     same results as dense.matvec_bf16
    FAST_MATVEC["f16" | "bf16"]   those kernels, or empty where the CPU lacks AVX-512 (or LLAMACPU_PORTABLE=1)

Exact fp32 arithmetic, like the plain loops of `dense`: each weight is widened in registers (one
`vcvtph2ps` per 16 halves; a bf16 is the top half of an fp32, one `vpslld` per 16) and multiplied by
fp32 x with an FMA. (Rounding x to bf16 for `vdpbf16ps` would cost 2**-9 relative per element, as much
as int8 activations: not done.) What the explicit loop adds over the plain one: four independent
accumulators over 64 columns per step and one horizontal sum per row.

Measured (bench/kernels.py, one core free): no gain that survives the noise. From DRAM both run at the
same speed: 2048 columns 15-16 G weights/s (30-32 GB/s, the bandwidth), 5632 columns 8.5 G weights/s
(17 GB/s, 54% of the plain read, F16 and BF16 alike); in L3 the
explicit loop is 0-10% faster on 2048 columns and 0-10% slower on 5632. Tried and dropped: a software
prefetch 1 KB ahead (slower from DRAM), two rows per pass sharing the x loads (half the DRAM speed:
two streams per thread), column panels of 2048 (x in L1, but the row stream breaks: -35%). The plain
loops in `dense` remain the ones to use; the 5632-column case (x: 22.5 KB of fp32 beside the weight
stream in a 32 KB L1) is the open problem.
"""
import numpy as np
from numba import njit, prange

from .simd import HAS_AVX512_VNNI, bitcast, fma, fp16_to_f32, hsum, load, splat, zext
from .halfbits import bf16_to_f32, f16_to_f32


@njit(parallel=True, cache=True, fastmath=True)
def matvec_fast_f16(w, x, out):
    """out[r] = sum_c w[r, c] * x[c]; w: IEEE half bits uint16 [R, C], x float32 [C], out float32 [R]."""
    rows, cols = w.shape
    n64 = cols // 64
    for r in prange(rows):
        row = w[r]
        a0 = splat(np.float32(0.0), 16)
        a1 = splat(np.float32(0.0), 16)
        a2 = splat(np.float32(0.0), 16)
        a3 = splat(np.float32(0.0), 16)
        for s in range(n64):
            c = 64 * s
            a0 = fma(fp16_to_f32(load(row, c, 16)), load(x, c, 16), a0)
            a1 = fma(fp16_to_f32(load(row, c + 16, 16)), load(x, c + 16, 16), a1)
            a2 = fma(fp16_to_f32(load(row, c + 32, 16)), load(x, c + 32, 16), a2)
            a3 = fma(fp16_to_f32(load(row, c + 48, 16)), load(x, c + 48, 16), a3)
        acc = hsum((a0 + a1) + (a2 + a3))
        for c in range(64 * n64, cols):
            acc += f16_to_f32(row[c]) * x[c]
        out[r] = acc


@njit(inline="always")
def _bf16x16(row, c):
    """16 bfloat16 at row[c] as float32 lanes: zero-extend to 32 bits and shift into the top half."""
    return bitcast(zext(load(row, c, 16), np.uint32) << 16, np.float32)


@njit(parallel=True, cache=True, fastmath=True)
def matvec_fast_bf16(w, x, out):
    """out[r] = sum_c w[r, c] * x[c]; w: bfloat16 bits uint16 [R, C], x float32 [C], out float32 [R]."""
    rows, cols = w.shape
    n64 = cols // 64
    for r in prange(rows):
        row = w[r]
        a0 = splat(np.float32(0.0), 16)
        a1 = splat(np.float32(0.0), 16)
        a2 = splat(np.float32(0.0), 16)
        a3 = splat(np.float32(0.0), 16)
        for s in range(n64):
            c = 64 * s
            a0 = fma(_bf16x16(row, c), load(x, c, 16), a0)
            a1 = fma(_bf16x16(row, c + 16), load(x, c + 16, 16), a1)
            a2 = fma(_bf16x16(row, c + 32), load(x, c + 32, 16), a2)
            a3 = fma(_bf16x16(row, c + 48), load(x, c + 48, 16), a3)
        acc = hsum((a0 + a1) + (a2 + a3))
        for c in range(64 * n64, cols):
            acc += bf16_to_f32(row[c]) * x[c]
        out[r] = acc


# AVX-512 is what these need (no VNNI instruction): HAS_AVX512_VNNI implies it and honours LLAMACPU_PORTABLE.
FAST_MATVEC = {"f16": matvec_fast_f16, "bf16": matvec_fast_bf16} if HAS_AVX512_VNNI else {}
