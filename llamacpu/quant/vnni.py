"""The VNNI side shared by every format: the activation scheme (x as 16-bit integers in two int8
planes), its per-call preparation, and the prefill machinery (token planes, the row-interleaved tile
and its 16-row VNNI product). Each format's own VNNI pieces (its matvec step, its levels and scales for
the prefill repack) live in its module; `kernels.matmul_vnni` drives the prefill for all of them.

LLVM cannot compile these for CPUs without AVX512-VNNI: the registry uses them only when
`llamacpu.kernels.simd.HAS_AVX512_VNNI`. Measurements (speed and error of the scheme per format, and the
alternatives tried) are in bench/README.md, "Quantized kernels".

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
are centred on 8 the same way (see `centre`: 2-3 times less error than uncentred). Each lane is converted
to float once per block and scaled by (weight scale) * sx; one horizontal sum per row.

So the only rounding beyond fp32 arithmetic is x -> x16: |x - sx * x16| <= sx / 2 = amax / 65278 per
element (int8: amax / 254). W @ x comes out with a relative error of 2-5e-5 (rms over rows), 100-250 times
less than with int8 activation blocks (llama.cpp: ~5e-3). Blocks holding NaN or inf give NaN outputs.

## Layouts

The matvecs read each row once, 64 bytes of quants per step, with one accumulator (16 float lanes) per
row. The activation planes H and L are laid out in the order the weight bytes are unpacked (`_runs`), so
a step loads them contiguously; each format module describes its step. The x scales and corrections of
a step are precomputed per lane (`lanes`: 64-byte memory operands, cheaper than spreading 2-4 values
with shuffles, about 15%). Activation buffers start on 64-byte boundaries.

Tails: when the step (k blocks) does not divide a row's nb blocks (SmolLM2's 576 columns are 18 blocks:
4 steps of 4 and 2 left), the last step is the row's last k blocks, overlapping the step before, and the
x of the overlapped blocks is 0 in its planes, so they add exactly 0 (`prepare_steps`). Every step then
runs the same VNNI code and reads only bytes of its row; the tail in a serial fp32 loop it replaces made
such matrices 2-3 times slower (bench/README.md, "Decode kernels at small widths"). Only rows narrower
than one step (tiny test matrices) go through the format's portable decoder in fp32 (`add_tails`).
"""
import numpy as np
from numba import njit, prange

from ..kernels.simd import (bit_bytes, bitcast, dpbusd, fma, hmax, hsum, hsum_int, load, load_splat, pshufb,
                            round_i32, shuffle, shuffle2, sitofp, splat, store, trunc, view, vmax)
from .common import FASTMATH, KVALUES

Q16 = np.float32(32639.0)  # largest |x16|: (32639 + 128) >> 8 = 127 keeps H a signed byte
XB = 32  # elements per x-block (two runs of 16)
TINY = np.float32(1e-30)  # blocks with a smaller largest |x| are scaled by BIG before rounding
BIG = np.float32(2.0 ** 100)

# the unused matrices and outputs of a decode_rows call (read-only, like every weight's blocks)
NO_ROWS = np.empty((0, 64), np.uint8)
NO_ROWS.flags.writeable = False
NO_OUT = np.empty((0, 0), np.float32)

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
def centre(k, sx, s16, xe, lanes):
    """Per-lane term that turns sum q * x16 * sx into sum (q - k) * x16 * sx + k * sum(x) (x exact) for
    levels q >= 0 with no offset of their own (Q4_1, Q4_K, int4_g128): the rounding of x then meets the
    centred levels q - k, as in the symmetric formats, instead of q (2-3 times the error otherwise)."""
    return np.float32(k) * (xe - sx * np.float32(s16)) / np.float32(lanes)


@njit(inline="always")
def lanes(sc, i, n, a, c):
    """sc[i : i + n] = a and sc[i + 16 : i + 16 + n] = c: the per-lane scale and correction vectors of a
    step (read as 64-byte memory operands: cheaper than spreading 2-4 values with shuffles)."""
    for j in range(n):
        sc[i + j] = a
        sc[i + 16 + j] = c


@njit(inline="always")
def zeros(n, dtype):
    """np.zeros(n, dtype) without a parfor: in a parallel=True kernel np.zeros becomes a parallel fill,
    one more thread launch (tens of microseconds on a busy machine) per array."""
    a = np.empty(n, dtype)
    for i in range(n):
        a[i] = 0
    return a


@njit(inline="always")
def empty64(n, dtype):
    """np.empty(n, dtype) starting on a 64-byte boundary (Numba aligns to 32): every 64-byte load of the
    activation planes then reads one cache line, not two (worth about 10%)."""
    buf = np.empty(n + 64, dtype)
    skip = ((-buf.ctypes.data) & 63) // buf.itemsize
    return buf[skip: skip + n]


@njit(inline="always")
def prepare(x, layout):
    """Allocate and fill the activation planes of x for `layout`."""
    C = x.shape[0]
    nb = C // XB
    H = empty64(C, np.int8)
    L = empty64(C, np.int8)
    sx = empty64(nb, np.float32)
    r16 = np.empty(2 * nb, np.int32)
    xe = empty64(nb, np.float32)
    _prep(x, np.int64(layout), H, L, sx, r16, xe)  # non-literal layout: one compiled _prep
    return H, L, sx, r16, xe



@njit(inline="always")
def prepare_tokens(X, layout):
    """The activation planes (see `prepare`) of every token of X float32 [n, C] for `layout`: token t's
    at offset t * C of H and L, t * C // 32 of sx and xe, t * C // 16 of r16."""
    n, C = X.shape
    nb = C // XB
    H = empty64(n * C, np.int8)
    L = empty64(n * C, np.int8)
    sx = empty64(n * nb, np.float32)
    r16 = np.empty(n * 2 * nb, np.int32)
    xe = empty64(n * nb, np.float32)
    for t in range(n):
        _prep(X[t], np.int64(layout), H[t * C: t * C + C], L[t * C: t * C + C], sx[t * nb: t * nb + nb],
              r16[2 * t * nb: 2 * t * nb + 2 * nb], xe[t * nb: t * nb + nb])
    return H, L, sx, r16, xe


@njit(inline="always")
def prepare_steps(X, layout, k):
    """The activation planes (see `prepare`) of every token of X float32 [n, C] for a matvec whose step covers
    k x-blocks: nstep = ceil(nb / k) steps per token (nb = C / 32; 0 when nb < k: such rows are left to
    `add_tails`), of which nfull = nb // k cover blocks k s .. k s + k - 1. When k does not divide nb, the
    last step covers the row's LAST k blocks, and the x of the blocks the step before already covered is 0
    there: their sx, r16, xe and planes are 0, so they add exactly 0 (see the module docstring, "Tails").

    Token t's planes start at t * 32 k nstep, its blocks (sx, xe; r16: twice) at t * k nstep.
    Returns H, L, sx, r16, xe, nstep, nfull."""
    n, C = X.shape
    nb = C // XB
    nfull = nb // k
    nstep = nfull + 1 if nb % k and nb >= k else nfull
    P = 32 * k * nstep  # plane elements per token
    F = 32 * k * nfull  # elements in the full steps
    kb = k * nstep  # blocks per token
    H = empty64(n * P, np.int8)
    L = empty64(n * P, np.int8)
    sx = empty64(n * kb, np.float32)
    r16 = np.empty(n * 2 * kb, np.int32)
    xe = empty64(n * kb, np.float32)
    last = np.empty(32 * k, np.float32)  # x of the last step, the overlapped part zero
    for t in range(n):
        b0 = t * kb
        _prep(X[t, :F], np.int64(layout), H[t * P: t * P + F], L[t * P: t * P + F], sx[b0: b0 + k * nfull],
              r16[2 * b0: 2 * b0 + 2 * k * nfull], xe[b0: b0 + k * nfull])
        if nstep > nfull:
            z = 32 * k - (C - F)
            for i in range(32 * k):
                last[i] = X[t, C - 32 * k + i] if i >= z else np.float32(0.0)
            b1 = b0 + k * nfull
            _prep(last, np.int64(layout), H[t * P + F: t * P + P], L[t * P + F: t * P + P], sx[b1: b1 + k],
                  r16[2 * b1: 2 * b1 + 2 * k], xe[b1: b1 + k])
    return H, L, sx, r16, xe, nstep, nfull


@njit(inline="always")
def decode_rows(setup, dot, dot4, step, spec, a, b, c, X, oa, ob, oc):
    """oa[t] = A @ X[t], ob[t] = B @ X[t], oc[t] = C @ X[t] for a few tokens (one decode step of n
    sequences) and up to three matrices that share the input (q/k/v, gate/up; pass 0-row blocks for
    the unused ones): `setup(X, spec)` prepares every token's activations once, then each row is read
    from memory once and, while it sits in L1, multiplied by every token (`dot(row, ctx, t, step, spec)`:
    the format's matvec step loop; a family's setup and dot serve several formats, which differ by their
    `step` function and their constants `spec`). So n sequences stream the weights once, not n times,
    and a fused q/k/v is one launch over all their rows. The matrices are never copied together: a row
    index picks one. `dot4(row, ctx, t, step, spec)` gives tokens t .. t + 3 at once, bit for bit what
    four `dot` calls give: the families with a dot4 of their own (dot4_4blocks, Q8_0's) unpack each step's
    weights once for the four; the others pass `each4(dot)`."""
    ctx = setup(X, spec)
    n = X.shape[0]
    ra = a.shape[0]
    rab = ra + b.shape[0]
    for r in prange(rab + c.shape[0]):
        # names unique in the kernels that inline this (a parfor body shares their namespace)
        ri = np.int64(r)  # a parfor index may be unsigned: keep the differences integer
        if ri < ra:
            w_row, dst, dst_r = a[ri], oa, ri
        elif ri < rab:
            w_row, dst, dst_r = b[ri - ra], ob, ri - ra
        else:
            w_row, dst, dst_r = c[ri - rab], oc, ri - rab
        for g in range(n // 4):  # four tokens per pass over the row's steps: its weights unpacked once
            dst[4 * g, dst_r], dst[4 * g + 1, dst_r], dst[4 * g + 2, dst_r], dst[4 * g + 3, dst_r] = \
                dot4(w_row, ctx, 4 * g, step, spec)
        for tok in range(n // 4 * 4, n):
            dst[tok, dst_r] = dot(w_row, ctx, tok, step, spec)


def each4(dot):
    """A dot4 (see decode_rows) made of four calls of `dot`: for families without one of their own."""

    @njit(inline="always")
    def dot4(row, ctx, t, step, spec):
        return (dot(row, ctx, t, step, spec), dot(row, ctx, t + 1, step, spec), dot(row, ctx, t + 2, step, spec),
                dot(row, ctx, t + 3, step, spec))

    return dot4


@njit(inline="always")
def add_tails(decode_block, a, b, c, X, oa, ob, oc, k, bs):
    """For rows narrower than one step of k blocks of bs (prepare_steps gave them no step): the whole row
    by add_tail, for each matrix of a decode_rows call and each token. Wider rows: nothing."""
    b0 = 0 if X.shape[1] // bs < k else X.shape[1] // bs
    for t in range(X.shape[0]):
        add_tail(decode_block, a, X[t], oa[t], b0, bs)
        add_tail(decode_block, b, X[t], ob[t], b0, bs)
        add_tail(decode_block, c, X[t], oc[t], b0, bs)


# shuffles several formats use
FIRST8 = shuffle(list(range(8)))
LAST8 = shuffle(list(range(8, 16)))
CAT16 = shuffle2(list(range(32)))  # two <16 x u8> -> <32 x u8>
CAT32 = shuffle2(list(range(64)))  # two <32 x u8> -> <64 x u8>


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
# float. Faster than fp32 BLAS on dequantized tiles (numbers in bench/README.md).

MM_ROWS = 16  # rows per group: the 16 int32 lanes of an accumulator
MM_TOKENS = 4  # tokens per pass over a group


@njit(cache=True, fastmath=FASTMATH)
def _prep_tokens(X, bk, z, centre, XH, XL, sxk, cck, xek):
    """Activation planes of every token (see _prep), natural order, for k-blocks of bk columns.

    XH, XL   int8 [n4 * C]        tokens >= n (padding to a multiple of MM_TOKENS) stay zero
    sxk      float32 [n4 * nkb]   x scale of each k-block (its x-block's)
    cck      float32 [n4 * nkb]   correction: -z * sum(x16) * sx (levels offset by z), plus z * sum(x)
                                  when `centre` (formats with minimums: levels centred on z, see _centre)
    xek      float32 [n4 * nkb]   exact sum of x over each k-block (for minimums)

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
            xs = xe[b]
            if per == 2 and centre:  # the exact sum of x over this 16-column k-block
                xs = np.float32(0.0)
                for l in range(bk):
                    xs += X[t, bk * kb + l]
            c = np.float32(-z) * np.float32(s16) * sx[b]
            if centre:
                c += np.float32(z) * xs
            cck[t * nkb + kb] = c
            xek[t * nkb + kb] = xs


@njit(cache=True, fastmath=FASTMATH)
def mm_group(Wt, Dt, Mt, has_min, gpb, nkb, XH32, XL32, sxk, cck, xek, C4, n, n4, out, r0, rows, tmpf):
    """out[t, r0 : r0 + 16] for every token t, from one repacked group of 16 rows.

    Not inlined: called once per group (the call costs nothing), and compiled once per literal
    (has_min, gpb) pair, shared by the formats: (False, 8) Q8_0, Q4_0 and the like, (True, 8) Q4_1, Q4_K,
    int4_g128 and the like, (False, 4) Q6_K and Q3_K, (True, 4) Q2_K. The literals matter: with a run-time gpb the k-group loop is not
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
def mm_setup(X, bk, z, centre):
    """Token planes for a matmul: (XH32, XL32, sxk, cck, xek, n4)."""
    n, C = X.shape
    n4 = (n + MM_TOKENS - 1) // MM_TOKENS * MM_TOKENS
    nkb = C // bk
    XH = zeros(n4 * C + 64, np.int8)  # + 64: whole-dword views whatever n4 * C
    XL = zeros(n4 * C + 64, np.int8)
    sxk = zeros(n4 * nkb, np.float32)
    cck = zeros(n4 * nkb, np.float32)
    xek = zeros(n4 * nkb, np.float32)
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


@njit(inline="always")
def _store4(Wt32, base, v):
    """The four 16-byte quarters of v (16 x u32) to Wt32[base + 16 g : + 4], g = 0..3 (k-groups)."""
    store(Wt32, base, Q0(v))
    store(Wt32, base + 16, Q1(v))
    store(Wt32, base + 32, Q2(v))
    store(Wt32, base + 48, Q3(v))


@njit(inline="always")
def put8(Wt32, kb, quad, a, b, c, d):
    """Levels of 4 rows (quad) for k-block kb, each <32 x u8>, into the tile (8 k-groups)."""
    ab = TR_AB(bitcast(a, np.uint32), bitcast(b, np.uint32))
    cd = TR_AB(bitcast(c, np.uint32), bitcast(d, np.uint32))
    base = kb * 8 * MM_ROWS + 4 * quad  # u32 index of k-group 0, row 4 * quad
    _store4(Wt32, base, TR_LO(ab, cd))
    _store4(Wt32, base + 4 * MM_ROWS, TR_HI(ab, cd))


@njit(inline="always")
def put4(Wt32, kb, quad, a, b, c, d):
    """Levels of 4 rows for a 16-column k-block (Q6_K), each <16 x u8>, into the tile (4 k-groups)."""
    ab = TR_AB4(bitcast(a, np.uint32), bitcast(b, np.uint32))
    cd = TR_AB4(bitcast(c, np.uint32), bitcast(d, np.uint32))
    _store4(Wt32, kb * 4 * MM_ROWS + 4 * quad, TR_4(ab, cd))


@njit(inline="always")
def quad_rows(r0, quad, rows):
    """The 4 row indices of a quad; rows past the end repeat the last row (their scales stay 0)."""
    a = r0 + 4 * quad
    return min(a, rows - 1), min(a + 1, rows - 1), min(a + 2, rows - 1), min(a + 3, rows - 1)




# ---------------------------------------------------------------------------------------------
# Pieces of the matvec steps
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def byte_dot(q, H, L, p):
    """<16 x i32>: sum of q * x16 over each 4-byte lane, q = 64 unsigned levels against the planes at p."""
    ia = dpbusd(splat(np.int32(0), 16), q, load(H, p, 64))
    return dpbusd(ia << 8, q, load(L, p, 64))


# IQ4_NL's levels as unsigned bytes (+ 128, an offset like Q8_0's), repeated in each 16-byte lane for pshufb
NL_LEVELS = np.tile((KVALUES.astype(np.int16) + 128).astype(np.uint8), 4)


@njit(inline="always")
def nibble_dot(q, H, L, p, nl):
    """<16 x i32>: the same for 64 bytes of nibbles, low nibbles against the planes at p, high ones at p + 64;
    with `nl` (a constant) the nibbles are IQ4_NL codes, looked up in NL_LEVELS (one vpshufb each)."""
    lo = q & np.uint8(15)
    hi = q >> 4
    if nl:
        table = load(NL_LEVELS, 0, 64)
        lo = pshufb(table, lo)
        hi = pshufb(table, hi)
    return pair_dot(lo, hi, H, L, p)


@njit(inline="always")
def pair_dot(lo, hi, H, L, p):
    """<16 x i32>: byte_dot of two 64-byte vectors of levels, lo against the planes at p, hi at p + 64."""
    ia = dpbusd(splat(np.int32(0), 16), lo, load(H, p, 64))
    ia = dpbusd(ia, hi, load(H, p + 64, 64))
    ia = dpbusd(ia << 8, lo, load(L, p, 64))
    return dpbusd(ia, hi, load(L, p + 64, 64))


@njit(inline="always")
def add_tail(decode_block, blocks, x, out, b0, bs):
    """out[r] += sum over blocks b0.. of row r of W x, in exact fp32 through the format's portable block
    decoder (rows narrower than one VNNI step: tiny matrices only)."""
    nb = x.shape[0] // bs
    if b0 < nb:
        acc = np.empty(bs, np.float32)
        for r in range(blocks.shape[0]):
            # explicit loops: in a parallel=True kernel `acc[:] = 0` and `acc.sum()` would become parallel
            # launches, and the sum's order would then depend on the thread split (not deterministic)
            for j in range(bs):
                acc[j] = 0
            for b in range(b0, nb):
                decode_block(blocks[r], b, acc, x[b * bs: b * bs + bs], True)
            s = np.float32(0.0)
            for j in range(bs):
                s += acc[j]
            out[r] += s


@njit(inline="always")
def setup_4blocks(X, spec):
    """The decode set-up (see decode_rows) of the family whose step is 64 bytes of 4-bit codes covering four
    x-blocks (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL: four blocks; IQ4_XS: four sub-blocks; int4_g128: one group),
    spec = (has minimums, activation layout, centre k, IQ4_NL table, bytes of a row per step): every
    token's planes in steps (prepare_steps) and, per step, 16 lanes of sx and 16 of the centring term.
    Levels are centred on k (the level offset of Q4_0 (8), Q5_0 (16), IQ4_NL (128); `centre` for the
    formats with minimums)."""
    has_min, layout, k = spec[0], spec[1], spec[2]
    n = X.shape[0]
    H, L, sx, r16, xe, nstep, nfull = prepare_steps(X, layout, 4)
    sc = empty64(n * 32 * nstep, np.float32)
    for e in range(n * 4 * nstep):  # block e = 4 (t * nstep + s) + j lies in step e >> 2 of the whole buffer
        lanes(sc, 32 * (e >> 2) + 4 * (e & 3), 4, sx[e],
              centre(k, sx[e], r16[2 * e] + r16[2 * e + 1], xe[e] if has_min else np.float32(0.0), 4))
    return H, L, sc, xe, nstep, nfull


@njit(inline="always")
def dot_4blocks(row, ctx, t, step, spec):
    """Row . token t for that family: `step(row, s, H, L, spec)` gives the int32 lanes of sum q * x16 of step s
    (4 lanes per x-block), its 16 lanes of weight scales and, with minimums (spec[0], a constant), its 4
    minimums, which multiply the exact x-block sums. The last step of a row with a tail reads the row's
    last step_bytes (`view` shifts the row so that step nfull lands there; see prepare_steps)."""
    has_min, step_bytes = spec[0], spec[4]
    H, L, sc, xe, nstep, nfull = ctx
    P = 128 * nstep
    Ht, Lt = view(H, t * P), view(L, t * P)  # this token's planes, as `step` indexes them
    shift = row.shape[0] - step_bytes * nstep  # <= 0
    s0 = 32 * t * nstep
    e0 = 4 * t * nstep
    acc = splat(np.float32(0.0), 16)
    macc = splat(np.float32(0.0), 4)  # sum of m * sum(x) per x-block
    for s in range(nstep):
        # one code path for every step (a branch that builds other arrays for the last one costs reference
        # counting per row: atomics on counters the threads share)
        ia, d, m = step(view(row, 0 if s < nfull else shift), s, Ht, Lt, spec)
        acc = fma(fma(sitofp(ia), load(sc, s0 + 32 * s, 16), load(sc, s0 + 32 * s + 16, 16)), d, acc)
        if has_min:
            macc = fma(m, load(xe, e0 + 4 * s, 4), macc)
    return hsum(acc) + hsum(macc)


@njit(inline="always")
def _acc4blocks(step, spec, r, s, Ht, Lt, sc, e, xe, acc, macc):
    """One step of dot_4blocks for one token (scale lanes at sc[e], minimums' x sums at xe[e // 8])."""
    ia, d, m = step(r, s, Ht, Lt, spec)
    acc = fma(fma(sitofp(ia), load(sc, e, 16), load(sc, e + 16, 16)), d, acc)
    if spec[0]:
        macc = fma(m, load(xe, e // 8, 4), macc)
    return acc, macc


@njit(inline="always")
def dot4_4blocks(row, ctx, t, step, spec):
    """dot_4blocks for tokens t .. t + 3 in one pass over the row's steps: the four `step` calls of a step
    read the same row bytes, so LLVM loads and unpacks them once (batched decode: 4-8 sequences); per
    token the same operations in the same order as dot_4blocks, hence the same results."""
    step_bytes = spec[4]
    H, L, sc, xe, nstep, nfull = ctx
    P = 128 * nstep
    H0, L0, H1, L1 = view(H, t * P), view(L, t * P), view(H, t * P + P), view(L, t * P + P)
    H2, L2, H3, L3 = view(H, t * P + 2 * P), view(L, t * P + 2 * P), view(H, t * P + 3 * P), view(L, t * P + 3 * P)
    shift = row.shape[0] - step_bytes * nstep
    S = 32 * nstep  # scale lanes per token (and 8 x its x-blocks)
    e0 = t * S
    a0 = splat(np.float32(0.0), 16)
    a1, a2, a3 = a0, a0, a0
    m0 = splat(np.float32(0.0), 4)
    m1, m2, m3 = m0, m0, m0
    for s in range(nstep):
        r = view(row, 0 if s < nfull else shift)
        e = e0 + 32 * s
        a0, m0 = _acc4blocks(step, spec, r, s, H0, L0, sc, e, xe, a0, m0)
        a1, m1 = _acc4blocks(step, spec, r, s, H1, L1, sc, e + S, xe, a1, m1)
        a2, m2 = _acc4blocks(step, spec, r, s, H2, L2, sc, e + 2 * S, xe, a2, m2)
        a3, m3 = _acc4blocks(step, spec, r, s, H3, L3, sc, e + 3 * S, xe, a3, m3)
    return hsum(a0) + hsum(m0), hsum(a1) + hsum(m1), hsum(a2) + hsum(m2), hsum(a3) + hsum(m3)


@njit(inline="always")
def nibble_levels(row, o, nl):
    """The 32 levels of the 16 bytes at o (low nibbles, then high ones) as <32 x u8>: a k-block of Q4_0, Q4_1,
    Q5_0, Q5_1, or with `nl` (a constant) of IQ4_NL (its codes looked up in NL_LEVELS)."""
    q = load(row, o, 16)
    levels = CAT16(q & np.uint8(15), q >> 4)
    if nl:
        levels = pshufb(load(NL_LEVELS, 0, 32), levels)
    return levels


def four_blocks(size, field, words, b_off):
    """shuffle2 lanes that gather `words` 16-bit words at byte `field` of each of four consecutive blocks of
    `size` bytes from A = the 32 words at the first block and B = the 32 words b_off bytes further on
    (a word past A from B)."""
    lanes = [(size * k + field) // 2 + i for k in range(4) for i in range(words)]
    assert all(w < 32 or 0 <= w - b_off // 2 < 32 for w in lanes)
    return [w if w < 32 else 32 + w - b_off // 2 for w in lanes]


@njit(inline="always")
def fifth_bits(lo, hi):
    """Bit 4 of the levels of four Q5_0 / Q5_1 blocks, given the low and the high 16-bit word of each block's
    qh (<4 x i16> each, gathered by the step's shuffles): (low half, high half) as <64 x u8> of 0 or 16
    in the step order of nibble_dot (byte 16k + j: element j of block k, and element 16 + j)."""
    return bit_bytes(lo, 64) & np.uint8(16), bit_bytes(hi, 64) & np.uint8(16)


# ---------------------------------------------------------------------------------------------
# The body of every format's kernel
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _repack(block, put, spec, blocks, r0, rows, nkb, Wt32, Dt, Mt):
    """Rows r0 .. r0 + 16 of W into the row-interleaved tile Wt32, their k-block scales and minimums into
    Dt, Mt [16 kb + row]. `block(row, kb, spec)` is the format's prefill_block; rows past the end repeat
    the last row (their lanes are computed and never stored)."""
    for quad in range(4):
        ra, rb, rc, rd = quad_rows(r0, quad, rows)
        for kb in range(nkb):
            la, Dt[16 * kb + 4 * quad], Mt[16 * kb + 4 * quad] = block(blocks[ra], kb, spec)
            lb, Dt[16 * kb + 4 * quad + 1], Mt[16 * kb + 4 * quad + 1] = block(blocks[rb], kb, spec)
            lc, Dt[16 * kb + 4 * quad + 2], Mt[16 * kb + 4 * quad + 2] = block(blocks[rc], kb, spec)
            ld, Dt[16 * kb + 4 * quad + 3], Mt[16 * kb + 4 * quad + 3] = block(blocks[rd], kb, spec)
            put(Wt32, kb, quad, la, lb, lc, ld)


@njit(inline="always")
def prefill_rows(block, put, pcfg, spec, blocks, X, out):
    """out[t, r] = sum_c W[r, c] * X[t, c] for any n >= 1: each group of 16 rows repacked once by the format's
    `block` (prefill_block) and `put` (put8, or put4 for 16-column k-blocks), then multiplied by every token
    (mm_group). pcfg = the format's PREFILL (k-block columns, level offset, has minimums)."""
    nrows = blocks.shape[0]
    n, C = X.shape
    kcols, offset, has_min = pcfg
    nkb = C // kcols
    XH32, XL32, sxk, cck, xek, n4 = mm_setup(X, kcols, offset, has_min)
    for grp in prange((nrows + MM_ROWS - 1) // MM_ROWS):
        g0 = MM_ROWS * grp
        Wt = np.empty(nkb * kcols * 16, np.uint8)
        Dt = np.empty(nkb * 16, np.float32)
        Mt = np.empty(nkb * 16, np.float32)
        tmpf = np.empty(64, np.float32)
        _repack(block, put, spec, blocks, g0, nrows, nkb, Wt.view(np.uint32), Dt, Mt)
        # mm_group with literal (minimums, k-groups per k-block): with a run-time k-group count its loop is
        # not unrolled and the kernel runs 40% slower
        if has_min and kcols == 32:
            mm_group(Wt, Dt, Mt, True, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, g0, nrows, tmpf)
        elif has_min:
            mm_group(Wt, Dt, Mt, True, 4, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, g0, nrows, tmpf)
        elif kcols == 32:
            mm_group(Wt, Dt, Mt, False, 8, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, g0, nrows, tmpf)
        else:
            mm_group(Wt, Dt, Mt, False, 4, nkb, XH32, XL32, sxk, cck, xek, np.int64(C // 4), n, n4, out, g0, nrows, tmpf)


@njit(inline="always")
def matmul(setup, dot, dot4, step, spec, tail, decode_block, block, put, pcfg, a, b, c, X, oa, ob, oc, prefill):
    """The body of every format's `matmul_vnni(a, b, c, X, oa, ob, oc, prefill)` kernel, compiled once per
    format with its pieces (setup, dot, dot4, step, spec: decode; block, put, pcfg: prefill; kernels.py):

    prefill False: oa[t] = A @ X[t], ob[t] = B @ X[t], oc[t] = C @ X[t] for a few tokens (decode_rows:
        each row read once for all of them; 0-row blocks for unused matrices); for formats whose decode
        step spans `tail` 32-element blocks, rows narrower than one step are done in fp32 by the format's
        portable `decode_block` (add_tails; tail 0: the step is a whole block, which every row holds);
    prefill True: oa = X @ A.T by the row-interleaved tile (prefill_rows; B and C unused).
    The caller (the registry) chooses: prefill above kernels.DECODE_MAX_TOKENS tokens."""
    if prefill:
        prefill_rows(block, put, pcfg, spec, a, X, oa)
    else:
        decode_rows(setup, dot, dot4, step, spec, a, b, c, X, oa, ob, oc)
        if tail > 0:
            add_tails(decode_block, a, b, c, X, oa, ob, oc, tail, XB)
