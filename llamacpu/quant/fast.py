"""Fast kernels for the quantized formats: AVX512-VNNI integer dot products, decode at the memory-bandwidth
ceiling and prefill above the fp32 peak, with activations kept to 15 significant bits (llama.cpp's int8
activation blocks keep 8).

    matvec_fast_<fmt>(blocks, x, out)    decode; same signature and meaning as `<fmt>.matvec_<fmt>`
    matmul_fast_<fmt>(blocks, X, out)    prefill; same as `<fmt>.matmul_<fmt>` (a Python function: the
                                         VNNI kernel for n >= MM_MIN_TOKENS tokens, n matvecs below)
    FAST_MATVEC[name], FAST_MATMUL[name] those, or empty on CPUs without AVX512-VNNI / LLAMACPU_PORTABLE=1
    matvec_for(name, portable), matmul_for(name, portable)     the kernel to use on this CPU

LLVM cannot compile these kernels for CPUs without the instructions: use them only through the tables
(filled only when `llamacpu.kernels.simd.HAS_AVX512_VNNI`). Numba's cache only watches this file: after
editing `kernels/simd.py` or `base.py`, clear llamacpu/quant/__pycache__.

## The activation scheme: x as 16-bit integers, multiplied as two int8 halves

Each call first quantizes x once, in x-blocks of 32 elements: x16 = rint(x / sx) with sx = amax / 32639,
so |x16| <= 32639, split into a high and a low signed byte,

    x16 = 256 * H + L,   H = (x16 + 128) >> 8  in [-127, 127],   L = x16 - 256 H  in [-128, 127].

The weights' integer levels q are unsigned bytes (nibbles, 6-bit values; Q8_0's int8 XOR 0x80 is q + 128),
so `vpdpbusd` (unsigned x signed bytes, 64 products per instruction) computes sum q*H, the int32 lanes
are shifted left by 8, and a second `vpdpbusd` adds sum q*L: the lanes hold sum q*x16 exactly (no
overflow: |lane| < 2**31 for every format). The offset of the levels (Q4_0's q - 8, Q6_K's q - 32,
Q8_0's + 128) is a per-block correction -offset * sum(x16) * sx, computed once per call and applied in
float. Minimums (Q4_1, Q4_K, int4_g128: value = q * d + m) multiply the exact float sum of x; their levels
are centred on 8 the same way (see `_centre`: 2-3 times less error than uncentred). Each lane is converted
to float once per block and scaled by (weight scale) * sx; one horizontal sum per row.

So the only rounding beyond fp32 arithmetic is x -> x16: |x - sx * x16| <= sx / 2 = amax / 65278 per
element (int8: amax / 254). W @ x comes out with a relative error of 2-5e-5 (rms over rows), 100-250 times
less than with int8 activation blocks (llama.cpp: ~5e-3). Blocks holding NaN or inf give NaN outputs.

Measured on this machine (AMD Zen 4 EPYC, 2 cores, shared: another process held about one core during
every run, so 1 and 2 threads measured alike; see bench/kernels.py). Relative error = ||out - ref|| / ||ref||,
ref = float64 dequantize(blocks) @ x, x Gaussian / Student-t(2) with 1% of the entries x50, 2048 columns:

    choice of scheme, Q8_0:                     speed, 1 core, L3-resident    rel. error (Gauss / heavy)
    (b) int16 x as two int8 halves, vpdpbusd    24.7 G weights/s              2.1e-5 / 4.5e-5   <- chosen
    (a) int16 x, weights widened, vpdpwssd      13.2                          2.1e-5 / 4.5e-5 (same x16)
    (c) fp32 x, weights widened in registers    14.0                          1.6e-7 / 1.1e-7
    portable kernel (fp32, plain Numba)          6.6                          1.8e-7 / 1.7e-7

(a) and (c) need about twice the instructions per weight of (b) (a widening and a 32-product
instruction, or a widening, a conversion and a 16-product FMA, per 16 to 32 weights, plus the scales)
and stay under the 15.5 G weights/s per core that Q8_0 needs at 33 GB/s; the 4-bit formats need twice
that. (b) is half the throughput of llama.cpp's single int8 pass, still memory-bound:

    format      rel. error      matvec from DRAM (300 MB, 5632 columns)    prefill n = 128, 2048x2048
                Gauss / heavy   portable -> fast, G weights/s (% of read)  portable -> fast, GFLOP/s
    q8_0        2.1e-5 / 4.5e-5   5.8 -> 24.2  (82% of 31.4 GB/s)          38 -> 183
    q4_0        2.3e-5 / 4.5e-5   6.1 -> 41.4  (74%)                       46 -> 184
    q4_1        2.2e-5 / 5.0e-5   5.9 -> 35.3  (70%)                       46 -> 173
    q4_k        1.8e-5 / 5.7e-5   6.5 -> 32.2  (57%)                       38 -> 169
    q6_k        2.4e-5 / 4.5e-5   3.4 -> 28.9  (76%)                       44 -> 139
    int4_g128   2.4e-5 / 4.9e-5   8.2 -> 42.1  (69%)                       39 -> 172
    (one core: a single core reads 31-32 GB/s here; the 2-core figures need a quiet machine)

## Layouts

The kernels read each row once, 64 bytes of quants per step, with one accumulator (16 float lanes) per
row. The activation planes H and L are laid out in the order the weight bytes are unpacked, so a step
loads them contiguously:
  Q8_0       two blocks (68 bytes) per step: two overlapping 64-byte loads and one word permute give
             the 64 quants and the two fp16 scales; activations in natural order.
  Q4_0/Q4_1  four blocks per step: the low nibbles of the four blocks are elements 0..15 of each, the
             high nibbles 16..31; the activations are stored permuted to match (no nibble shuffles).
  int4_g128  one group (64 bytes of nibbles) per step; x-block j of a group = elements 16j..16j+15 and
             64+16j..64+16j+15 (the lanes of the low and high nibbles that share an accumulator lane).
  Q4_K       two 32-byte chunks per step: sub-blocks (0, 2) in the low nibbles, (1, 3) in the high ones;
             activations stored in that sub-block order. The 6-bit scales and minimums are unpacked with
             4-lane integer operations once per super-block.
  Q6_K       one 128-element half per step: 64 bytes of low bits and 32 bytes of high bits make two
             64-byte vectors of 6-bit levels, in natural order.
The x scales and corrections of a step are precomputed per lane (64-byte memory operands: cheaper than
spreading 2-4 values with shuffles, about 15%), except for Q8_0 rows over 4096 columns, where they would
push the activations out of L1 (see Q8_WIDE_BLOCKS). Activation buffers start on 64-byte boundaries.
Tails (Q8_0 with an odd number of blocks, Q4_0/Q4_1 with a number not a multiple of 4: only tiny
matrices) are done in scalar fp32 arithmetic, in a loop of their own.
Prefill (matmul) uses another layout, described above `MM_ROWS`.
"""
import numpy as np
from numba import njit, prange

from ..kernels.simd import (HAS_AVX512_VNNI, bitcast, dpbusd, fma, fp16_to_f32, hmax, hsum, hsum_int, load,
                            load_splat, round_i32, sext, shuffle, shuffle2, sitofp, splat, store, trunc, vmax, zext)
from .base import FASTMATH, f16_at
from .q4_k import scale_min

Q16 = np.float32(32639.0)  # largest |x16|: (32639 + 128) >> 8 = 127 keeps H a signed byte
XB = 32  # elements per x-block (two runs of 16)
TINY = np.float32(1e-30)  # blocks with a smaller largest |x| are scaled by BIG before rounding
BIG = np.float32(2.0 ** 100)

# plane layouts of the activations (see _runs)
NATURAL, K_ORDER, NIBBLE32, GROUP128 = 0, 1, 2, 3

# ---------------------------------------------------------------------------------------------
# Activation preparation (once per call, serial: O(cols))
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _runs(layout, b):
    """x-block b is two runs of 16 elements: (first source element of run 0, of run 1, plane position of
    run 0, of run 1). The plane is where the kernels read the activations, in weight-unpacking order."""
    if layout == NATURAL:  # Q8_0, Q6_K
        return 32 * b, 32 * b + 16, 32 * b, 32 * b + 16
    if layout == K_ORDER:  # Q4_K: sub-blocks 0,1,2,3 of each 128 go to plane slots 0,2,1,3
        r = b & 3
        s = b - r + (r == 1) * 2 + (r == 2) * 1 + (r == 3) * 3
        return 32 * b, 32 * b + 16, 32 * s, 32 * s + 16
    s = b >> 2
    k = b & 3
    if layout == NIBBLE32:  # Q4_0, Q4_1: block k of a 4-block step: low nibbles, then high nibbles
        return 32 * b, 32 * b + 16, 128 * s + 16 * k, 128 * s + 64 + 16 * k
    # GROUP128 (int4_g128): x-block k of a group = elements 16k.. and 64+16k..; planes in natural order
    return 128 * s + 16 * k, 128 * s + 64 + 16 * k, 128 * s + 16 * k, 128 * s + 64 + 16 * k


@njit(cache=True, fastmath=FASTMATH)
def _prep(x, layout, H, L, sx, r16, xe):
    """Quantize x float32 [C] into x-blocks of 32 (see module docstring), 16 lanes at a time.

    H, L  int8 [C]         high and low bytes of x16, in plane order
    sx    float32 [C/32]   x-block scales (NaN for a block holding NaN or inf: the outputs become NaN)
    r16   int32 [C/16]     sum of x16 over each run of 16 (run 2b and 2b+1 make x-block b)
    xe    float32 [C/32]   exact sum of x over each x-block (for the minimums of asymmetric formats)
    """
    nb = sx.shape[0]
    for b in range(nb):
        e0, e1, p0, p1 = _runs(layout, b)
        v0 = load(x, e0, 16)
        v1 = load(x, e1, 16)
        tot = hsum(v0 + v1)
        xe[b] = tot
        if not (tot - tot == 0):  # a NaN or an infinity in the block
            sx[b] = np.nan
            r16[2 * b] = 0
            r16[2 * b + 1] = 0
            zero = splat(np.int8(0), 16)
            store(H, p0, zero)
            store(L, p0, zero)
            store(H, p1, zero)
            store(L, p1, zero)
            continue
        # |x| as integers: for non-negative floats the bit patterns order like the values
        mag = vmax(bitcast(v0, np.uint32) & np.uint32(0x7FFFFFFF), bitcast(v1, np.uint32) & np.uint32(0x7FFFFFFF))
        amax = bitcast(splat(hmax(mag), 1), np.float32)  # <1 x float>
        a = hsum(amax)
        if a < TINY:  # Q16 / a would overflow: scale the block by 2**100 first (exact)
            v0 = v0 * splat(BIG, 16)
            v1 = v1 * splat(BIG, 16)
            inv = Q16 / (a * BIG) if a > 0 else np.float32(0.0)
            sx[b] = a * BIG / Q16 / BIG  # may be subnormal: such blocks keep fewer bits
        else:
            inv = Q16 / a
            sx[b] = a / Q16
        q0 = round_i32(v0 * splat(inv, 16))  # |q| <= 32639
        q1 = round_i32(v1 * splat(inv, 16))
        r16[2 * b] = hsum_int(q0)
        r16[2 * b + 1] = hsum_int(q1)
        h0 = (q0 + np.int32(128)) >> 8  # in [-127, 127]
        h1 = (q1 + np.int32(128)) >> 8
        store(H, p0, trunc(h0, np.int8))
        store(L, p0, trunc(q0 - (h0 << 8), np.int8))  # in [-128, 127]
        store(H, p1, trunc(h1, np.int8))
        store(L, p1, trunc(q1 - (h1 << 8), np.int8))


@njit(inline="always")
def _centre(k, sx, s16, xe, lanes):
    """Per-lane term that turns sum q * x16 * sx into sum (q - k) * x16 * sx + k * sum(x) (x exact) for
    levels q >= 0 with no offset of their own (Q4_1, Q4_K, int4_g128): the rounding of x then meets the
    centred levels q - k, as in the symmetric formats, instead of q (2-3 times the error otherwise)."""
    return np.float32(k) * (xe - sx * np.float32(s16)) / np.float32(lanes)


@njit(inline="always")
def _lanes(sc, i, n, a, c):
    """sc[i : i + n] = a and sc[i + 16 : i + 16 + n] = c: the per-lane scale and correction vectors of a
    step (read as 64-byte memory operands: cheaper than spreading 2-4 values with shuffles)."""
    for j in range(n):
        sc[i + j] = a
        sc[i + 16 + j] = c


@njit(inline="always")
def _zeros(n, dtype):
    """np.zeros(n, dtype) without a parfor: in a parallel=True kernel np.zeros becomes a parallel fill,
    one more thread launch (tens of microseconds on a busy machine) per array."""
    a = np.empty(n, dtype)
    for i in range(n):
        a[i] = 0
    return a


@njit(inline="always")
def _empty64(n, dtype):
    """np.empty(n, dtype) starting on a 64-byte boundary (Numba aligns to 32): every 64-byte load of the
    activation planes then reads one cache line, not two (worth about 10%)."""
    buf = np.empty(n + 64, dtype)
    skip = ((-buf.ctypes.data) & 63) // buf.itemsize
    return buf[skip: skip + n]


@njit(inline="always")
def _prepare(x, layout):
    """Allocate and fill the activation planes of x for `layout`."""
    C = x.shape[0]
    nb = C // XB
    H = _empty64(C, np.int8)
    L = _empty64(C, np.int8)
    sx = _empty64(nb, np.float32)
    r16 = np.empty(2 * nb, np.int32)
    xe = _empty64(nb, np.float32)
    _prep(x, np.int64(layout), H, L, sx, r16, xe)  # non-literal layout: one compiled _prep
    return H, L, sx, r16, xe


# ---------------------------------------------------------------------------------------------
# Constant shuffles
# ---------------------------------------------------------------------------------------------

FIRST8 = shuffle(list(range(8)))
LAST8 = shuffle(list(range(8, 16)))
CAT32 = shuffle2(list(range(64)))  # two <32 x u8> -> <64 x u8>

# Q8_0, a pair of blocks at byte o: A = the words at o (bytes o..o+63), B = the words at o+4.
# Block 0: d = word 0, quants = words 1..16; block 1: d = word 17, quants = words 18..33 (32, 33 = B's 30, 31)
Q8_QS = shuffle2(list(range(1, 17)) + list(range(18, 32)) + [32 + 30, 32 + 31])
Q8_D = shuffle([0] * 8 + [17] * 8)
SPREAD2 = shuffle([0] * 8 + [1] * 8)  # <2 x f32> -> 8 copies of each
# Q8_0 rows wider than this many blocks (4096 columns) use the compact scale layout: measured on the
# 5632-column down projection from DRAM, 22 G weights/s compact vs 15 with 64-byte scale vectors (1 thread)
Q8_WIDE_BLOCKS = 128

# Q4_0, four blocks at byte o: A = words at o, B = words at o+8 (B word i = A word i+4).
# Block k: d = word 9k, quants = words 9k+1 .. 9k+8 (block 3: 28..31 from A, 32..35 = B's 28..31)
Q40_QS = shuffle2([9 * k + 1 + i for k in range(3) for i in range(8)]
                  + [28, 29, 30, 31] + [32 + 28 + i for i in range(4)])
Q40_D = shuffle([9 * (i // 4) for i in range(16)])

# Q4_1, four blocks at byte o: A = words at o, B = words at o+16 (B word i = A word i+8).
# Block k: d = word 10k, m = word 10k+1, quants = words 10k+2 .. 10k+9 (block 3: 32..39 = B's 24..31)
Q41_QS = shuffle2([10 * k + 2 + i for k in range(3) for i in range(8)] + [32 + 24 + i for i in range(8)])
Q41_D = shuffle([10 * (i // 4) for i in range(16)])
Q41_M = shuffle([1, 11, 21, 31])

# Q4_K scale unpacking (4 x u32 lanes w0, w1, w2, junk = bytes 4..19 of the super-block)
K_X = shuffle([0, 2, 1, 2])
K_Y = shuffle([0, 0, 1, 1])
K_T = shuffle2([0, 5, 2, 3])
K_U = shuffle2([0, 1, 2, 7])
# cs = 8 sub-block scales -> the lanes of the two accumulators of each 128-element step
K_S = [shuffle([a] * 8 + [b] * 8) for a, b in ((0, 2), (1, 3), (4, 6), (5, 7))]
K_S0, K_S1, K_S2, K_S3 = K_S

# Q6_K: 16 sub-block scales -> 4 lanes each, for the two accumulators of each half
Q6_S = [shuffle([j0 + i // 4 for i in range(16)]) for j0 in (0, 4, 8, 12)]
Q6_S0, Q6_S1, Q6_S2, Q6_S3 = Q6_S
SPREAD2X8 = shuffle([i // 2 for i in range(16)])  # 8 x-block scales -> 16 sub-block lanes


# ---------------------------------------------------------------------------------------------
# Q8_0
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_q8_0(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 34], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = x.shape[0] // XB
    H, L, sx, r16, xe = _prepare(x, NATURAL)
    npair = nb // 2
    if nb > Q8_WIDE_BLOCKS:
        # wide rows: 16 floats of scales per pair would double the activations' L1 footprint (H and L
        # take 2 bytes per column already) and spill x from L1: keep 4 per pair, spread by shuffles
        sc = _empty64(4 * npair, np.float32)  # per pair: sx0, sx1, c0, c1
        for b in range(2 * npair):
            sc[4 * (b >> 1) + (b & 1)] = sx[b]
            sc[4 * (b >> 1) + 2 + (b & 1)] = np.float32(-16.0) * np.float32(r16[2 * b] + r16[2 * b + 1]) * sx[b]
        for r in prange(rows):
            row = blocks[r]
            acc = splat(np.float32(0.0), 16)
            for p in range(npair):
                o = p * 68
                wa = bitcast(load(row, o, 64), np.int16)
                wb = bitcast(load(row, o + 4, 64), np.int16)
                q = bitcast(Q8_QS(wa, wb), np.uint8) ^ np.uint8(0x80)
                ia = dpbusd(splat(np.int32(0), 16), q, load(H, 64 * p, 64))
                ia = dpbusd(ia << 8, q, load(L, 64 * p, 64))
                t = fma(sitofp(ia), SPREAD2(load(sc, 4 * p, 2)), SPREAD2(load(sc, 4 * p + 2, 2)))
                acc = fma(t, fp16_to_f32(Q8_D(wa)), acc)
            out[r] = hsum(acc)
    else:
        sc = _empty64(32 * npair, np.float32)  # per pair: 16 lanes of sx, 16 lanes of the correction
        for b in range(2 * npair):
            # weights q + 128: correct by -128 * sum(x16) * sx, spread over the block's 8 lanes
            _lanes(sc, 32 * (b >> 1) + 8 * (b & 1), 8, sx[b],
                   np.float32(-16.0) * np.float32(r16[2 * b] + r16[2 * b + 1]) * sx[b])
        for r in prange(rows):
            row = blocks[r]
            acc = splat(np.float32(0.0), 16)
            for p in range(npair):
                o = p * 68
                wa = bitcast(load(row, o, 64), np.int16)
                wb = bitcast(load(row, o + 4, 64), np.int16)
                q = bitcast(Q8_QS(wa, wb), np.uint8) ^ np.uint8(0x80)  # int8 -> q + 128, unsigned
                ia = dpbusd(splat(np.int32(0), 16), q, load(H, 64 * p, 64))
                ia = dpbusd(ia << 8, q, load(L, 64 * p, 64))
                t = fma(sitofp(ia), load(sc, 32 * p, 16), load(sc, 32 * p + 16, 16))
                acc = fma(t, fp16_to_f32(Q8_D(wa)), acc)
            out[r] = hsum(acc)
    if nb % 2:  # an odd last block (tiny matrices only): exact fp32, in its own loop (a tail inside the
        b = nb - 1  # row loop costs the main loop 8%)
        for r in prange(rows):
            o = b * 34
            tb = np.float32(0.0)
            for j in range(XB):
                tb += np.float32(np.int8(blocks[r, o + 2 + j])) * x[b * XB + j]
            out[r] += f16_at(blocks[r], o) * tb


# ---------------------------------------------------------------------------------------------
# Q4_0 and Q4_1
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_q4_0(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 18], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = x.shape[0] // XB
    H, L, sx, r16, xe = _prepare(x, NIBBLE32)
    nstep = nb // 4
    sc = _empty64(32 * nstep, np.float32)  # per step: 16 lanes of sx, 16 lanes of the correction
    for b in range(4 * nstep):
        # levels q - 8: correct by -8 * sum(x16) * sx, spread over the block's 4 lanes
        _lanes(sc, 32 * (b >> 2) + 4 * (b & 3), 4, sx[b],
               np.float32(-2.0) * np.float32(r16[2 * b] + r16[2 * b + 1]) * sx[b])
    for r in prange(rows):
        row = blocks[r]
        acc = splat(np.float32(0.0), 16)
        for s in range(nstep):
            o = s * 72
            wa = bitcast(load(row, o, 64), np.int16)
            wb = bitcast(load(row, o + 8, 64), np.int16)
            q = bitcast(Q40_QS(wa, wb), np.uint8)
            lo = q & np.uint8(15)
            hi = q >> 4
            p = 128 * s
            ia = dpbusd(splat(np.int32(0), 16), lo, load(H, p, 64))
            ia = dpbusd(ia, hi, load(H, p + 64, 64))
            ia = dpbusd(ia << 8, lo, load(L, p, 64))
            ia = dpbusd(ia, hi, load(L, p + 64, 64))
            t = fma(sitofp(ia), load(sc, 32 * s, 16), load(sc, 32 * s + 16, 16))
            acc = fma(t, fp16_to_f32(Q40_D(wa)), acc)
        out[r] = hsum(acc)
    if nb % 4:  # the last 1-3 blocks (tiny matrices only): exact fp32, in their own loop
        for r in prange(rows):
            row = blocks[r]
            tot = np.float32(0.0)
            for b in range(4 * nstep, nb):
                o = b * 18
                tb = np.float32(0.0)
                for j in range(16):
                    v = np.int32(row[o + 2 + j])
                    tb += np.float32((v & 15) - 8) * x[b * XB + j] + np.float32((v >> 4) - 8) * x[b * XB + 16 + j]
                tot += f16_at(row, o) * tb
            out[r] += tot


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_q4_1(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 32 * 20], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nb = x.shape[0] // XB
    H, L, sx, r16, xe = _prepare(x, NIBBLE32)
    nstep = nb // 4
    sc = _empty64(32 * nstep, np.float32)  # per step: 16 lanes of sx, 16 lanes of the centring term
    for b in range(4 * nstep):
        _lanes(sc, 32 * (b >> 2) + 4 * (b & 3), 4, sx[b], _centre(8, sx[b], r16[2 * b] + r16[2 * b + 1], xe[b], 4))
    for r in prange(rows):
        row = blocks[r]
        acc = splat(np.float32(0.0), 16)
        macc = splat(np.float32(0.0), 4)  # sum of m * sum(x) per block
        for s in range(nstep):
            o = s * 80
            wa = bitcast(load(row, o, 64), np.int16)
            wb = bitcast(load(row, o + 16, 64), np.int16)
            q = bitcast(Q41_QS(wa, wb), np.uint8)
            lo = q & np.uint8(15)
            hi = q >> 4
            p = 128 * s
            ia = dpbusd(splat(np.int32(0), 16), lo, load(H, p, 64))
            ia = dpbusd(ia, hi, load(H, p + 64, 64))
            ia = dpbusd(ia << 8, lo, load(L, p, 64))
            ia = dpbusd(ia, hi, load(L, p + 64, 64))
            t = fma(sitofp(ia), load(sc, 32 * s, 16), load(sc, 32 * s + 16, 16))
            acc = fma(t, fp16_to_f32(Q41_D(wa)), acc)
            macc = fma(fp16_to_f32(Q41_M(wa)), load(xe, 4 * s, 4), macc)
        out[r] = hsum(acc) + hsum(macc)
    if nb % 4:  # the last 1-3 blocks (tiny matrices only): exact fp32, in their own loop
        for r in prange(rows):
            row = blocks[r]
            tot = np.float32(0.0)
            for b in range(4 * nstep, nb):
                o = b * 20
                tb = np.float32(0.0)
                for j in range(16):
                    v = np.int32(row[o + 4 + j])
                    tb += np.float32(v & 15) * x[b * XB + j] + np.float32(v >> 4) * x[b * XB + 16 + j]
                tot += f16_at(row, o) * tb + f16_at(row, o + 2) * xe[b]
            out[r] += tot


# ---------------------------------------------------------------------------------------------
# int4_g128
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_int4_g128(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 128 * 68], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    ng = x.shape[0] // 128
    nb = 4 * ng
    H, L, sx, r16, xe = _prepare(x, GROUP128)
    sc = _empty64(8 * nb, np.float32)  # per group: 16 lanes of sx, 16 lanes of the centring term
    xg = np.empty(ng, np.float32)  # exact sum of x over each group
    for b in range(nb):
        _lanes(sc, 32 * (b >> 2) + 4 * (b & 3), 4, sx[b], _centre(8, sx[b], r16[2 * b] + r16[2 * b + 1], xe[b], 4))
    for g in range(ng):
        xg[g] = xe[4 * g] + xe[4 * g + 1] + xe[4 * g + 2] + xe[4 * g + 3]
    for r in prange(rows):
        row = blocks[r]
        acc = splat(np.float32(0.0), 16)
        msum = np.float32(0.0)
        for g in range(ng):
            o = g * 68
            q = load(row, o + 4, 64)
            lo = q & np.uint8(15)
            hi = q >> 4
            p = 128 * g
            ia = dpbusd(splat(np.int32(0), 16), lo, load(H, p, 64))
            ia = dpbusd(ia, hi, load(H, p + 64, 64))
            ia = dpbusd(ia << 8, lo, load(L, p, 64))
            ia = dpbusd(ia, hi, load(L, p + 64, 64))
            t = fma(sitofp(ia), load(sc, 32 * g, 16), load(sc, 32 * g + 16, 16))
            acc = fma(t, splat(f16_at(row, o), 16), acc)
            msum += f16_at(row, o + 2) * xg[g]
        out[r] = hsum(acc) + msum


# ---------------------------------------------------------------------------------------------
# Q4_K
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _q4k_scales(row, o):
    """The 8 sub-block scales and 8 minimums of the super-block at byte o, as float32 <16> (scales in
    lanes 0..7, minimums in 8..15): ggml's get_scale_min_k4 on four 32-bit lanes at once."""
    w = bitcast(load(row, o + 4, 16), np.uint32)  # w0 = bytes 0..3 of the packed scales, w1, w2, junk
    X = K_X(w)  # w0, w2, w1, w2
    Y = K_Y(w)  # w0, w0, w1, w1
    lo6 = X & np.uint32(0x3F3F3F3F)  # lanes 0, 2: sc[0..3], m[0..3]
    top = ((Y >> 6) & np.uint32(0x03030303)) << 4  # lanes 1, 3: the top 2 bits of sc[4..7], m[4..7]
    sc_hi = (X & np.uint32(0x0F0F0F0F)) | top  # lane 1: sc[4..7]
    m_hi = ((X >> 4) & np.uint32(0x0F0F0F0F)) | top  # lane 3: m[4..7]
    packed = K_U(K_T(lo6, sc_hi), m_hi)  # sc[0..3], sc[4..7], m[0..3], m[4..7]
    return sitofp(zext(bitcast(packed, np.uint8), np.int32))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_q4_k(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 256 * 144], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nsb = x.shape[0] // 256
    H, L, sx, r16, xe = _prepare(x, K_ORDER)
    nb = 8 * nsb
    cx = _empty64(nb, np.float32)
    for b in range(nb):
        cx[b] = _centre(8, sx[b], r16[2 * b] + r16[2 * b + 1], xe[b], 1)
    for r in prange(rows):
        row = blocks[r]
        acc0 = splat(np.float32(0.0), 16)  # two accumulators: chunks 0-1 and 2-3 (shorter FMA chains)
        acc1 = splat(np.float32(0.0), 16)
        acc8 = splat(np.float32(0.0), 8)  # per sub-block: centring terms and minimums
        for i in range(nsb):
            o = i * 144
            scm = _q4k_scales(row, o)
            sd = FIRST8(scm) * splat(f16_at(row, o), 8)  # d * sc
            cs = sd * load(sx, 8 * i, 8)
            acc8 = fma(sd, load(cx, 8 * i, 8), acc8)
            acc8 = fma(LAST8(scm) * splat(-f16_at(row, o + 2), 8), load(xe, 8 * i, 8), acc8)
            # chunks 0, 1: sub-blocks 0, 2 in the low nibbles and 1, 3 in the high ones; chunks 2, 3: 4..7
            q = load(row, o + 16, 64)
            lo = q & np.uint8(15)
            hi = q >> 4
            p = 256 * i
            il = dpbusd(splat(np.int32(0), 16), lo, load(H, p, 64))
            il = dpbusd(il << 8, lo, load(L, p, 64))
            ih = dpbusd(splat(np.int32(0), 16), hi, load(H, p + 64, 64))
            ih = dpbusd(ih << 8, hi, load(L, p + 64, 64))
            acc0 = fma(sitofp(il), K_S0(cs), acc0)
            acc0 = fma(sitofp(ih), K_S1(cs), acc0)
            q = load(row, o + 80, 64)
            lo = q & np.uint8(15)
            hi = q >> 4
            il = dpbusd(splat(np.int32(0), 16), lo, load(H, p + 128, 64))
            il = dpbusd(il << 8, lo, load(L, p + 128, 64))
            ih = dpbusd(splat(np.int32(0), 16), hi, load(H, p + 192, 64))
            ih = dpbusd(ih << 8, hi, load(L, p + 192, 64))
            acc1 = fma(sitofp(il), K_S2(cs), acc1)
            acc1 = fma(sitofp(ih), K_S3(cs), acc1)
        out[r] = hsum(acc0 + acc1) + hsum(acc8)


# ---------------------------------------------------------------------------------------------
# Q6_K
# ---------------------------------------------------------------------------------------------


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matvec_fast_q6_k(blocks, x, out):
    """out[r] = sum_c W[r, c] * x[c].  blocks uint8 [R, C // 256 * 210], x float32 [C], out float32 [R]."""
    rows = blocks.shape[0]
    nsb = x.shape[0] // 256
    H, L, sx, r16, xe = _prepare(x, NATURAL)
    cq = _empty64(16 * nsb, np.float32)  # levels q - 32: -32 * sum(x16) per sub-block of 16
    for j in range(16 * nsb):
        cq[j] = np.float32(-32.0) * np.float32(r16[j])
    for r in prange(rows):
        row = blocks[r]
        acc0 = splat(np.float32(0.0), 16)  # three accumulators: shorter FMA chains
        acc1 = splat(np.float32(0.0), 16)
        accc = splat(np.float32(0.0), 16)
        for i in range(nsb):
            o = i * 210
            scf = sitofp(sext(bitcast(load(row, o + 192, 16), np.int8), np.int32))
            cs = scf * splat(f16_at(row, o + 208), 16) * SPREAD2X8(load(sx, 8 * i, 8))  # per sub-block
            accc = fma(cs, load(cq, 16 * i, 16), accc)
            for h in range(2):
                a = load(row, o + 64 * h, 64)  # low 4 bits: elements l (bytes 0..31), l + 32 (32..63)
                c = load(row, o + 128 + 32 * h, 32)  # high 2 bits of l, l+32, l+64, l+96 in bits 0-1 .. 6-7
                c2 = CAT32(c, c >> 2)  # bits 0-1: elements l, l + 32; bits 4-5: l + 64, l + 96
                qa = (a & np.uint8(15)) | ((c2 << 4) & np.uint8(0x30))  # elements 0..63 of the half
                qb = (a >> 4) | (c2 & np.uint8(0x30))  # elements 64..127
                p = 256 * i + 128 * h
                ia = dpbusd(splat(np.int32(0), 16), qa, load(H, p, 64))
                ia = dpbusd(ia << 8, qa, load(L, p, 64))
                ib = dpbusd(splat(np.int32(0), 16), qb, load(H, p + 64, 64))
                ib = dpbusd(ib << 8, qb, load(L, p + 64, 64))
                if h == 0:
                    acc0 = fma(sitofp(ia), Q6_S0(cs), acc0)
                    acc0 = fma(sitofp(ib), Q6_S1(cs), acc0)
                else:
                    acc1 = fma(sitofp(ia), Q6_S2(cs), acc1)
                    acc1 = fma(sitofp(ib), Q6_S3(cs), acc1)
        out[r] = hsum((acc0 + acc1) + accc)


# ---------------------------------------------------------------------------------------------
# Prefill: W @ X.T for n tokens, one pass over the weights, VNNI with the same int16 activations
# ---------------------------------------------------------------------------------------------
# The matvec layout (one row per accumulator, 16 lanes of partial sums) needs a float epilogue per
# 64 weights of every (row, token) pair: too much work when each weight meets n tokens. Here 16 rows
# share an accumulator instead, one row per lane: a group of 16 rows is repacked once into
# "row-interleaved" form (64 bytes = 4 consecutive levels of each of the 16 rows) and each vpdpbusd
# multiplies them by 4 bytes of one token broadcast to all lanes ({1to16} memory operand). An int32
# lane then sums a whole k-block (32 columns, 16 for Q6_K) of one (row, token), and the float epilogue
# (convert, scale, correction) runs once per k-block, not once per 64 products.
#   Per k-group of 4 columns: one 64-byte weight load, 2 x MM_TOKENS vpdpbusd (H and L bytes of
#   MM_TOKENS tokens), MM_TOKENS = 4 tokens per pass. A group's levels (16 bytes per column) stay in L1/L2
#   while all token passes stream over them.
# Levels are unsigned bytes with the format's offset removed in the correction: Q8_0 int8 + 128,
# nibbles (Q4_0, Q4_1, Q4_K, int4_g128), Q6_K's 6-bit q. Scales and minimums per (row, k-block) in
# float. Measured on this machine (n = 128): 170-187 GFLOP/s on one core for the 32-column formats, 140
# for Q6_K, against a fp32 FMA peak of about 117 per core; OpenBLAS sgemm on dequantized fp32 tiles
# reached 165 on two idle cores and collapses when the machine is shared (20-60).

MM_ROWS = 16  # rows per group: the 16 int32 lanes of an accumulator
MM_TOKENS = 4  # tokens per pass over a group


@njit(cache=True, fastmath=FASTMATH)
def _prep_tokens(X, bk, z, centre, XH, XL, sxk, cck, xek):
    """Activation planes of every token (see _prep), natural order, for k-blocks of bk columns.

    XH, XL   int8 [n4 * C]        tokens >= n (padding to a multiple of MM_TOKENS) stay zero
    sxk      float32 [n4 * nkb]   x scale of each k-block (its x-block's)
    cck      float32 [n4 * nkb]   correction: -z * sum(x16) * sx (levels offset by z), plus z * sum(x)
                                  when `centre` (formats with minimums: levels centred on z, see _centre)
    xek      float32 [n4 * nkb]   exact sum of x over each k-block (for minimums; bk = 32 only)

    Serial (about 1 ns per element, 1-2% of a matmul): a parallel function called from the parallel
    matmul kernels costs 0.25 ms per call in Numba's nested-launch path.
    """
    n, C = X.shape
    nb = C // XB
    nkb = C // bk
    per = XB // bk  # k-blocks per x-block: 1, or 2 for Q6_K's 16-column sub-blocks
    sx = np.empty(nb, np.float32)
    r16 = np.empty(2 * nb, np.int32)
    xe = np.empty(nb, np.float32)
    for t in range(n):
        _prep(X[t], np.int64(NATURAL), XH[t * C: t * C + C], XL[t * C: t * C + C], sx, r16, xe)
        for kb in range(nkb):
            b = kb // per
            s16 = r16[kb] if per == 2 else r16[2 * b] + r16[2 * b + 1]
            sxk[t * nkb + kb] = sx[b]
            c = np.float32(-z) * np.float32(s16) * sx[b]
            if centre:
                c += np.float32(z) * xe[b]
            cck[t * nkb + kb] = c
            xek[t * nkb + kb] = xe[b]


@njit(cache=True, fastmath=FASTMATH)
def _mm_group(Wt, Dt, Mt, has_min, gpb, nkb, XH32, XL32, sxk, cck, xek, C4, n, n4, out, r0, rows, tmpf):
    """out[t, r0 : r0 + 16] for every token t, from one repacked group of 16 rows.

    Not inlined: called once per group (the call costs nothing), and compiled once per literal
    (has_min, gpb) pair, shared by the formats: (False, 8) Q8_0 and Q4_0, (True, 8) Q4_1, Q4_K and
    int4_g128, (False, 4) Q6_K. The literals matter: with a run-time gpb the k-group loop is not
    unrolled and the kernel runs 40% slower."""
    for tq in range(n4 // MM_TOKENS):
        t0 = MM_TOKENS * tq
        f0 = splat(np.float32(0.0), 16)
        f1 = f0
        f2 = f0
        f3 = f0
        a0 = t0 * C4  # dword offsets of the 4 tokens' planes
        a1 = a0 + C4
        a2 = a1 + C4
        a3 = a2 + C4
        for kb in range(nkb):
            h0 = splat(np.int32(0), 16)
            h1 = h0
            h2 = h0
            h3 = h0
            l0 = h0
            l1 = h0
            l2 = h0
            l3 = h0
            for g in range(gpb):
                k = kb * gpb + g
                w = load(Wt, k * 64, 64)  # columns 4k .. 4k+3 of the 16 rows
                h0 = dpbusd(h0, w, load_splat(XH32, a0 + k, 16))
                h1 = dpbusd(h1, w, load_splat(XH32, a1 + k, 16))
                h2 = dpbusd(h2, w, load_splat(XH32, a2 + k, 16))
                h3 = dpbusd(h3, w, load_splat(XH32, a3 + k, 16))
                l0 = dpbusd(l0, w, load_splat(XL32, a0 + k, 16))
                l1 = dpbusd(l1, w, load_splat(XL32, a1 + k, 16))
                l2 = dpbusd(l2, w, load_splat(XL32, a2 + k, 16))
                l3 = dpbusd(l3, w, load_splat(XL32, a3 + k, 16))
            D = load(Dt, 16 * kb, 16)
            e = t0 * nkb + kb
            e1 = e + nkb
            e2 = e1 + nkb
            e3 = e2 + nkb
            # lane = sum of q * x16 over the k-block; * sx + correction; * weight scale
            f0 = fma(fma(sitofp((h0 << 8) + l0), load_splat(sxk, e, 16), load_splat(cck, e, 16)), D, f0)
            f1 = fma(fma(sitofp((h1 << 8) + l1), load_splat(sxk, e1, 16), load_splat(cck, e1, 16)), D, f1)
            f2 = fma(fma(sitofp((h2 << 8) + l2), load_splat(sxk, e2, 16), load_splat(cck, e2, 16)), D, f2)
            f3 = fma(fma(sitofp((h3 << 8) + l3), load_splat(sxk, e3, 16), load_splat(cck, e3, 16)), D, f3)
            if has_min:
                M = load(Mt, 16 * kb, 16)
                f0 = fma(M, load_splat(xek, e, 16), f0)
                f1 = fma(M, load_splat(xek, e1, 16), f1)
                f2 = fma(M, load_splat(xek, e2, 16), f2)
                f3 = fma(M, load_splat(xek, e3, 16), f3)
        if r0 + MM_ROWS <= rows and t0 + MM_TOKENS <= n:
            store(out[t0], r0, f0)
            store(out[t0 + 1], r0, f1)
            store(out[t0 + 2], r0, f2)
            store(out[t0 + 3], r0, f3)
        else:  # the last group of rows or of tokens
            store(tmpf, 0, f0)
            store(tmpf, 16, f1)
            store(tmpf, 32, f2)
            store(tmpf, 48, f3)
            for j in range(min(MM_TOKENS, n - t0)):
                for i in range(min(MM_ROWS, rows - r0)):
                    out[t0 + j, r0 + i] = tmpf[16 * j + i]


@njit(inline="always")
def _mm_setup(X, bk, z, centre):
    """Token planes for a matmul: (XH32, XL32, sxk, cck, xek, n4)."""
    n, C = X.shape
    n4 = (n + MM_TOKENS - 1) // MM_TOKENS * MM_TOKENS
    nkb = C // bk
    XH = _zeros(n4 * C + 64, np.int8)  # + 64: whole-dword views whatever n4 * C
    XL = _zeros(n4 * C + 64, np.int8)
    sxk = _zeros(n4 * nkb, np.float32)
    cck = _zeros(n4 * nkb, np.float32)
    xek = _zeros(n4 * nkb, np.float32)
    # non-literal arguments: one compiled _prep_tokens for all formats
    _prep_tokens(X, np.int64(bk), np.int64(z), np.bool_(centre), XH, XL, sxk, cck, xek)
    return XH.view(np.int32), XL.view(np.int32), sxk, cck, xek, n4


# Repacking: each format yields the 32 levels of (row, k-block) as one <32 x u8> vector (16 for Q6_K);
# four rows at a time are transposed with two-source shuffles into 16-byte pieces (4 levels of each of
# the 4 rows) and stored at their place in the interleaved tile.
TR_AB = shuffle2([i // 2 + 8 * (i % 2) for i in range(16)])  # two <8 x u32> -> a0 b0 a1 b1 .. a7 b7
# ab, cd -> a0 b0 c0 d0 .. a3 b3 c3 d3, and a4 b4 c4 d4 .. a7 b7 c7 d7
TR_LO = shuffle2([2 * (i // 4) + (i % 4 % 2) + 16 * (i % 4 // 2) for i in range(16)])
TR_HI = shuffle2([8 + 2 * (i // 4) + (i % 4 % 2) + 16 * (i % 4 // 2) for i in range(16)])
TR_AB4 = shuffle2([i // 2 + 4 * (i % 2) for i in range(8)])  # two <4 x u32> -> a0 b0 .. a3 b3
TR_4 = shuffle2([2 * (i // 4) + (i % 4 % 2) + 8 * (i % 4 // 2) for i in range(16)])  # a0 b0 c0 d0 .. a3 b3 c3 d3
QUARTERS = [shuffle(list(range(4 * g, 4 * g + 4))) for g in range(4)]
Q0, Q1, Q2, Q3 = QUARTERS
CAT16 = shuffle2(list(range(32)))  # two <16 x u8> -> <32 x u8>


@njit(inline="always")
def _store4(Wt32, base, v):
    """The four 16-byte quarters of v (16 x u32) to Wt32[base + 16 g : + 4], g = 0..3 (k-groups)."""
    store(Wt32, base, Q0(v))
    store(Wt32, base + 16, Q1(v))
    store(Wt32, base + 32, Q2(v))
    store(Wt32, base + 48, Q3(v))


@njit(inline="always")
def _put8(Wt32, kb, quad, a, b, c, d):
    """Levels of 4 rows (quad) for k-block kb, each <32 x u8>, into the tile (8 k-groups)."""
    ab = TR_AB(bitcast(a, np.uint32), bitcast(b, np.uint32))
    cd = TR_AB(bitcast(c, np.uint32), bitcast(d, np.uint32))
    base = kb * 8 * MM_ROWS + 4 * quad  # u32 index of k-group 0, row 4 * quad
    _store4(Wt32, base, TR_LO(ab, cd))
    _store4(Wt32, base + 4 * MM_ROWS, TR_HI(ab, cd))


@njit(inline="always")
def _put4(Wt32, kb, quad, a, b, c, d):
    """Levels of 4 rows for a 16-column k-block (Q6_K), each <16 x u8>, into the tile (4 k-groups)."""
    ab = TR_AB4(bitcast(a, np.uint32), bitcast(b, np.uint32))
    cd = TR_AB4(bitcast(c, np.uint32), bitcast(d, np.uint32))
    _store4(Wt32, kb * 4 * MM_ROWS + 4 * quad, TR_4(ab, cd))


@njit(inline="always")
def _quad_rows(r0, quad, rows):
    """The 4 row indices of a quad; rows past the end repeat the last row (their scales stay 0)."""
    a = r0 + 4 * quad
    return min(a, rows - 1), min(a + 1, rows - 1), min(a + 2, rows - 1), min(a + 3, rows - 1)


@njit(inline="always")
def _lev_q8_0(blocks, r, kb):
    return load(blocks[r], kb * 34 + 2, 32) ^ np.uint8(0x80)  # int8 -> level + 128


@njit(inline="always")
def _lev_q4_0(blocks, r, kb):
    q = load(blocks[r], kb * 18 + 2, 16)
    return CAT16(q & np.uint8(15), q >> 4)


@njit(inline="always")
def _lev_q4_1(blocks, r, kb):
    q = load(blocks[r], kb * 20 + 4, 16)
    return CAT16(q & np.uint8(15), q >> 4)


@njit(inline="always")
def _lev_int4_g128(blocks, r, kb):
    """k-block kb = columns 32 (kb % 4) .. of group kb // 4: low nibbles of bytes 0..63, then high."""
    j = kb & 3
    q = load(blocks[r], (kb >> 2) * 68 + 4 + 32 * (j & 1), 32)
    return q & np.uint8(15) if j < 2 else q >> 4


@njit(inline="always")
def _lev_q4_k(blocks, r, kb):
    """Sub-block kb % 8 of super-block kb // 8: chunk c = (kb % 8) // 2, low nibbles for even kb."""
    j = kb & 7
    q = load(blocks[r], (kb >> 3) * 144 + 16 + 32 * (j >> 1), 32)
    return q & np.uint8(15) if (j & 1) == 0 else q >> 4


@njit(inline="always")
def _lev_q6_k(blocks, r, kb):
    """Sub-block s = kb % 16 (16 columns): half h, quarter qq, part p with s = 8h + 2qq + p."""
    s = kb & 15
    h = s >> 3
    qq = (s >> 1) & 3
    p = s & 1
    o = (kb >> 4) * 210
    a = load(blocks[r], o + 64 * h + 32 * (qq & 1) + 16 * p, 16)
    c = load(blocks[r], o + 128 + 32 * h + 16 * p, 16)
    lo = a & np.uint8(15) if qq < 2 else a >> 4
    if qq == 0:
        hi = c << 4
    elif qq == 1:
        hi = c << 2
    elif qq == 2:
        hi = c
    else:
        hi = c >> 2
    return lo | (hi & np.uint8(0x30))


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_q8_0(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // XB
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, XB, 128, False)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 8 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            for kb in range(nkb):
                Dt[16 * kb + i] = f16_at(blocks[r0 + i], kb * 34)
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put8(Wt32, kb, quad, _lev_q8_0(blocks, ra, kb), _lev_q8_0(blocks, rb, kb),
                      _lev_q8_0(blocks, rc, kb), _lev_q8_0(blocks, rd, kb))
        _mm_group(Wt, Dt, Dt, False, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_q4_0(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // XB
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, XB, 8, False)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 8 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            for kb in range(nkb):
                Dt[16 * kb + i] = f16_at(blocks[r0 + i], kb * 18)
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put8(Wt32, kb, quad, _lev_q4_0(blocks, ra, kb), _lev_q4_0(blocks, rb, kb),
                      _lev_q4_0(blocks, rc, kb), _lev_q4_0(blocks, rd, kb))
        _mm_group(Wt, Dt, Dt, False, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_q4_1(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // XB
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, XB, 8, True)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 8 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        Mt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            for kb in range(nkb):
                Dt[16 * kb + i] = f16_at(blocks[r0 + i], kb * 20)
                Mt[16 * kb + i] = f16_at(blocks[r0 + i], kb * 20 + 2)
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put8(Wt32, kb, quad, _lev_q4_1(blocks, ra, kb), _lev_q4_1(blocks, rb, kb),
                      _lev_q4_1(blocks, rc, kb), _lev_q4_1(blocks, rd, kb))
        _mm_group(Wt, Dt, Mt, True, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_int4_g128(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // XB
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, XB, 8, True)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 8 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        Mt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            for kb in range(nkb):  # a group of 128 = four k-blocks sharing a scale and a minimum
                Dt[16 * kb + i] = f16_at(blocks[r0 + i], (kb >> 2) * 68)
                Mt[16 * kb + i] = f16_at(blocks[r0 + i], (kb >> 2) * 68 + 2)
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put8(Wt32, kb, quad, _lev_int4_g128(blocks, ra, kb), _lev_int4_g128(blocks, rb, kb),
                      _lev_int4_g128(blocks, rc, kb), _lev_int4_g128(blocks, rd, kb))
        _mm_group(Wt, Dt, Mt, True, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_q4_k(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R]."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // XB
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, XB, 8, True)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 8 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        Mt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            row = blocks[r0 + i]
            for sb in range(nkb // 8):
                o = sb * 144
                d = f16_at(row, o)
                dmin = f16_at(row, o + 2)
                packed = row[o + 4: o + 16]
                for j in range(8):
                    sc, mn = scale_min(packed, j)
                    Dt[16 * (8 * sb + j) + i] = d * np.float32(sc)
                    Mt[16 * (8 * sb + j) + i] = -dmin * np.float32(mn)
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put8(Wt32, kb, quad, _lev_q4_k(blocks, ra, kb), _lev_q4_k(blocks, rb, kb),
                      _lev_q4_k(blocks, rc, kb), _lev_q4_k(blocks, rd, kb))
        _mm_group(Wt, Dt, Mt, True, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _matmul_vnni_q6_k(blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c].  X float32 [n, C], out float32 [n, R].  k-blocks of 16."""
    rows = blocks.shape[0]
    n, C = X.shape
    nkb = C // 16
    XH32, XL32, sxk, cck, xek, n4 = _mm_setup(X, 16, 32, False)
    for grp in prange((rows + MM_ROWS - 1) // MM_ROWS):
        r0 = MM_ROWS * grp
        Wt = np.empty(nkb * 4 * 64, np.uint8)
        Wt32 = Wt.view(np.uint32)
        Dt = _zeros(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        for i in range(min(MM_ROWS, rows - r0)):
            row = blocks[r0 + i]
            for kb in range(nkb):
                o = (kb >> 4) * 210
                Dt[16 * kb + i] = f16_at(row, o + 208) * np.float32(np.int8(row[o + 192 + (kb & 15)]))
        for quad in range(4):
            ra, rb, rc, rd = _quad_rows(r0, quad, rows)
            for kb in range(nkb):
                _put4(Wt32, kb, quad, _lev_q6_k(blocks, ra, kb), _lev_q6_k(blocks, rb, kb),
                      _lev_q6_k(blocks, rc, kb), _lev_q6_k(blocks, rd, kb))
        _mm_group(Wt, Dt, Dt, False, 4, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, r0, rows, tmpf)


MM_MIN_TOKENS = 6  # fewer tokens: one matvec per token is faster than repacking the rows (measured)


def _matmul(name, matvec, kernel):
    def matmul(blocks, X, out):
        """out[t, r] = sum_c W[r, c] * X[t, c].  blocks uint8 [R, bytes per row], X float32 [n, C]
        (C-contiguous), out float32 [n, R]. The VNNI kernel for n >= MM_MIN_TOKENS, else n matvecs."""
        n = X.shape[0]
        if n >= MM_MIN_TOKENS:
            kernel(blocks, X, out)
        else:
            for t in range(n):
                matvec(blocks, X[t], out[t])

    matmul.__name__ = matmul.__qualname__ = "matmul_fast_" + name
    return matmul


matmul_fast_q8_0 = _matmul("q8_0", matvec_fast_q8_0, _matmul_vnni_q8_0)
matmul_fast_q4_0 = _matmul("q4_0", matvec_fast_q4_0, _matmul_vnni_q4_0)
matmul_fast_q4_1 = _matmul("q4_1", matvec_fast_q4_1, _matmul_vnni_q4_1)
matmul_fast_q4_k = _matmul("q4_k", matvec_fast_q4_k, _matmul_vnni_q4_k)
matmul_fast_q6_k = _matmul("q6_k", matvec_fast_q6_k, _matmul_vnni_q6_k)
matmul_fast_int4_g128 = _matmul("int4_g128", matvec_fast_int4_g128, _matmul_vnni_int4_g128)


FAST_MATVEC = {} if not HAS_AVX512_VNNI else {
    "q8_0": matvec_fast_q8_0,
    "q4_0": matvec_fast_q4_0,
    "q4_1": matvec_fast_q4_1,
    "q4_k": matvec_fast_q4_k,
    "q6_k": matvec_fast_q6_k,
    "int4_g128": matvec_fast_int4_g128,
}

FAST_MATMUL = {} if not HAS_AVX512_VNNI else {
    "q8_0": matmul_fast_q8_0,
    "q4_0": matmul_fast_q4_0,
    "q4_1": matmul_fast_q4_1,
    "q4_k": matmul_fast_q4_k,
    "q6_k": matmul_fast_q6_k,
    "int4_g128": matmul_fast_int4_g128,
}


def matvec_for(name, portable):
    """The matvec kernel format `name` should use on this CPU: the fast one, else `portable`."""
    return FAST_MATVEC.get(name, portable)


def matmul_for(name, portable):
    """The matmul (prefill) function format `name` should use on this CPU: the fast one, else `portable`."""
    return FAST_MATMUL.get(name, portable)
