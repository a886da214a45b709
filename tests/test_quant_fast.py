"""The AVX512-VNNI kernels (each format's `matmul_vnni`: decode, batched decode, fused, prefill) against the NumPy references, and the CPU-feature
selection (LLAMACPU_PORTABLE=1 forces the portable kernels).

The fast matvec rounds x to 16-bit integers per x-block of 32 (sx = amax / 32639), so each product
W @ x may differ from float64 dequantize(blocks) @ x by sum_j |W_rj| * amax_j / 65278, amax_j the
largest |x| of element j's x-block (bounded here by the largest |x| of its 128-aligned group), plus fp32
rounding. The fast matmul uses the same activation scheme (row-interleaved, VNNI), hence the same bound.

Compile cost: one signature per kernel (read-only uint8 blocks, as QuantizedWeight passes them).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

from llamacpu.kernels import simd
from llamacpu.quant import FORMATS, kernels, vnni
from llamacpu.quant import registry as fast  # FAST_MATVEC, FAST_MATMUL: the VNNI kernels in use

NAMES = [m.NAME for m in kernels.VNNI_MODULES]  # the formats with VNNI kernels (the others: portable everywhere)
# the formats with a batched VNNI decode kernel (every VNNI format: its matmul_vnni); the others decline fusion
DECODE_NAMES = [m.NAME for m in kernels.VNNI_MODULES]
needs_vnni = pytest.mark.skipif(
    not simd.HAS_AVX512_VNNI,
    reason="LLAMACPU_PORTABLE=1 forces the portable kernels" if simd.PORTABLE else
    f"the fast kernels need AVX512-F/BW/VL + VNNI + F16C (this CPU: {simd.features()['cpu']}); "
    "the portable kernels cover it")


def readonly(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def activations(kind, n, rng):
    if kind == "gauss":
        return rng.standard_normal(n).astype(np.float32)
    # heavy-tailed, with a few huge channels (as in LLM residual streams)
    t = rng.standard_t(2, n) * np.where(rng.random(n) < 0.01, 50.0, 1.0)
    return t.astype(np.float32)


def x16_bound(W64, x):
    """Largest admissible |fast - reference| per row for the int16 activation scheme."""
    g = 128 if x.size % 128 == 0 else 32  # every x-block lies inside one aligned group of g elements
    amax = np.repeat(np.abs(x.astype(np.float64)).reshape(-1, g).max(axis=1), g)
    absW = np.abs(W64)
    return absW @ amax / 65278.0 * 1.01 + 1e-5 * (absW @ np.abs(x.astype(np.float64))) + 1e-30


def shapes(name):
    bs = FORMATS[name].block_size
    # the smallest legal width, a few blocks (tails of the 2- and 4-block steps), model widths (SmolLM2's
    # 576 = 18 blocks: an overlapping last step); rows not divisible by the thread count
    return [(3, bs), (37, 3 * bs), (29, 5 * bs), (11, 18 * bs if bs == 32 else 2 * bs), (67, 2048),
            (13, 5632 if 5632 % bs == 0 else 2304)]


@needs_vnni
@pytest.mark.parametrize("name", NAMES)
def test_matvec_fast_matches_reference(name):
    fmt = FORMATS[name]
    kernel = fast.FAST_MATVEC[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    for rows, cols in shapes(name):
        W = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 1.0, (rows, 1)).astype(np.float32)
        blocks = readonly(fmt.quantize(W))
        W64 = fmt.dequantize(blocks, cols).astype(np.float64)
        for kind in ("gauss", "heavy"):
            x = activations(kind, cols, rng)
            out = np.full(rows, np.nan, np.float32)
            kernel(blocks, x, out)
            ref = W64 @ x.astype(np.float64)
            err = np.abs(out - ref)
            bound = x16_bound(W64, x)
            assert np.all(err <= bound), (name, rows, cols, kind, float((err / bound).max()))
            if cols >= 2048:  # the typical error is far below the bound: ~2e-5 relative
                assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 2e-4, (name, kind)


@needs_vnni
def test_matvec_fast_tiny_and_huge_activations():
    fmt = FORMATS["q4_k"]
    rng = np.random.default_rng(5)
    W = rng.standard_normal((9, 512)).astype(np.float32)
    blocks = readonly(fmt.quantize(W))
    W64 = fmt.dequantize(blocks, 512).astype(np.float64)
    for scale in (1e-35, 1e-20, 1e30):  # 1e-35: 32639 / amax overflows float32 without rescaling
        x = (rng.standard_normal(512) * scale).astype(np.float32)
        out = np.empty(9, np.float32)
        fast.FAST_MATVEC["q4_k"](blocks, x, out)
        ref = W64 @ x.astype(np.float64)
        assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 1e-3, scale


@needs_vnni
@pytest.mark.parametrize("name", NAMES)
def test_matvec_fast_propagates_nan_and_zero_blocks(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(7)
    cols = 2 * max(fmt.block_size, 128)
    W = rng.standard_normal((5, cols)).astype(np.float32)
    blocks = readonly(fmt.quantize(W))
    x = np.zeros(cols, np.float32)  # all-zero x-blocks: scale 0, output exactly 0
    out = np.full(5, np.nan, np.float32)
    fast.FAST_MATVEC[name](blocks, x, out)
    assert np.all(out == 0)
    x[cols // 2 + 3] = np.nan
    fast.FAST_MATVEC[name](blocks, x, out)
    assert np.all(np.isnan(out))


@needs_vnni
@pytest.mark.parametrize("name", NAMES)
def test_matmul_fast_matches_reference(name):
    fmt = FORMATS[name]
    rng = np.random.default_rng(11)
    bs = fmt.block_size
    # partial groups of 16 rows and of 4 tokens, the smallest width, a few k-blocks
    for rows, cols, n in [(5, bs, 1), (70, 2 * bs if bs > 32 else 96, 7), (300, 1024, 9), (32, 512, 8), (17, bs, 6), (40, 512, 16)]:
        W = rng.standard_normal((rows, cols)).astype(np.float32)
        blocks = readonly(fmt.quantize(W))
        X = rng.standard_normal((n, cols)).astype(np.float32)
        out = np.full((n, rows), np.nan, np.float32)
        fast.FAST_MATMUL[name](blocks, X, out)  # n <= DECODE_MAX_TOKENS: the decode kernel; else the prefill one
        W64 = fmt.dequantize(blocks, cols).astype(np.float64)
        ref = X.astype(np.float64) @ W64.T
        bound = np.stack([x16_bound(W64, X[t]) for t in range(n)])
        assert np.all(np.abs(out - ref) <= bound), (name, rows, cols, n)


@needs_vnni
@pytest.mark.parametrize("name", DECODE_NAMES)
def test_decode_kernel_batched_matches_reference(name):
    """The decode kernel for n tokens at once (batched decode: each row read once for every token) on
    random shapes and activations: within the int16 bound of every token's own reference, and equal
    to the same kernel run on each token alone (the rows of a batch do not interact)."""
    fmt = FORMATS[name]
    module = next(m for m in kernels.MODULES if m.NAME == name)
    rng = np.random.default_rng(sum(map(ord, name)) + 3)
    bs = fmt.block_size
    for _ in range(6):
        rows = int(rng.integers(1, 70))
        cols = bs * int(rng.integers(1, max(2, 1024 // bs) + 1))
        # past DECODE_MAX_TOKENS too: the serving path sends every decode row of a batch through this kernel
        # (groups of four through dot4, the rest through dot, bit for bit the same)
        n = int(rng.integers(1, 2 * kernels.DECODE_MAX_TOKENS + 2))
        W = rng.standard_normal((rows, cols)).astype(np.float32) * rng.uniform(0.01, 1, (rows, 1)).astype(np.float32)
        blocks = readonly(fmt.quantize(W))
        W64 = fmt.dequantize(blocks, cols).astype(np.float64)
        X = np.stack([activations(("gauss", "heavy")[t % 2], cols, rng) for t in range(n)])
        out = np.full((n, rows), np.nan, np.float32)
        module.matmul_vnni(blocks, vnni.NO_ROWS, vnni.NO_ROWS, X, out, vnni.NO_OUT, vnni.NO_OUT, False)
        ref = X.astype(np.float64) @ W64.T
        bound = np.stack([x16_bound(W64, X[t]) for t in range(n)])
        assert np.all(np.abs(out - ref) <= bound), (name, rows, cols, n)
        for t in range(n):
            one = np.empty(rows, np.float32)
            fast.FAST_MATVEC[name](blocks, X[t], one)
            if name == "int4_g128":  # its scalar sum of minimums is reassociated per copy of the token loop
                np.testing.assert_allclose(out[t], one, rtol=1e-5, atol=1e-6 * np.abs(one).max())
            else:
                np.testing.assert_array_equal(out[t], one)


@needs_vnni
@pytest.mark.parametrize("name", DECODE_NAMES)
def test_fused_projections_equal_separate_calls(name):
    """q/k/v (three matrices) and gate/up (two) sharing one input in one call give exactly what one
    call per matrix gives; mixed formats, other widths or prefill-sized inputs are declined untouched."""
    from llamacpu.quant import QuantizedWeight

    fmt = FORMATS[name]
    rng = np.random.default_rng(sum(map(ord, name)) + 5)
    cols = 2 * max(fmt.block_size, 128) + (fmt.block_size if fmt.block_size == 32 else 0)  # a tail for 32-blocks
    for count in (2, 3):
        weights = [QuantizedWeight.quantize(name, rng.standard_normal((int(rng.integers(1, 50)), cols)))
                   for _ in range(count)]
        for n in (1, 3, kernels.DECODE_MAX_TOKENS):
            X = rng.standard_normal((n, cols)).astype(np.float32)
            outs = [np.full((n, w.shape[0]), np.nan, np.float32) for w in weights]
            assert QuantizedWeight.matmul_shared(weights, X, outs)
            for w, out in zip(weights, outs):
                alone = np.empty_like(out)
                w.matmul(X, alone)
                np.testing.assert_array_equal(out, alone)
    X = rng.standard_normal((kernels.DECODE_MAX_TOKENS + 1, cols)).astype(np.float32)
    outs = [np.zeros((X.shape[0], w.shape[0]), np.float32) for w in weights]
    assert not QuantizedWeight.matmul_shared(weights, X, outs)  # prefill: one matmul each
    other = "q8_0" if name != "q8_0" else "q4_0"
    mixed = weights[:2] + [QuantizedWeight.quantize(other, rng.standard_normal((4, cols)))]
    outs = [np.zeros((1, w.shape[0]), np.float32) for w in mixed]
    assert not QuantizedWeight.matmul_shared(mixed, X[:1], outs)
    assert all(np.all(o == 0) for o in outs)


@needs_vnni
def test_simd_dot_instructions():
    from numba import njit
    from llamacpu.kernels.simd import dpbf16ps, dpbusd, dpwssd, hsum, hsum_int, load, splat

    @njit
    def dots(u8, s8, a16, b16, bf):
        z = splat(np.int32(0), 16)
        z8 = splat(np.int32(0), 8)
        return (hsum_int(dpbusd(z, load(u8, 0, 64), load(s8, 0, 64))),
                hsum_int(dpbusd(z8, load(u8, 0, 32), load(s8, 0, 32))),
                hsum_int(dpwssd(z, load(a16, 0, 32), load(b16, 0, 32))),
                hsum(dpbf16ps(splat(np.float32(0.0), 16), load(bf, 0, 32), load(bf, 32, 32))))

    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 256, 64).astype(np.uint8)
    s8 = rng.integers(-128, 128, 64).astype(np.int8)
    a16 = rng.integers(-3000, 3000, 32).astype(np.int16)
    b16 = rng.integers(-3000, 3000, 32).astype(np.int16)
    f = rng.standard_normal(64).astype(np.float32)
    bf = (f.view(np.uint32) >> 16).astype(np.uint16)  # truncated to bf16
    fb = (bf.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    r = dots(u8, s8, a16, b16, bf)
    assert r[0] == int(u8.astype(np.int64) @ s8)
    assert r[1] == int(u8[:32].astype(np.int64) @ s8[:32])
    assert r[2] == int(a16.astype(np.int64) @ b16)
    assert abs(r[3] - fb[:32] @ fb[32:]) < 1e-5 * np.abs(fb[:32]) @ np.abs(fb[32:])


def test_selection_follows_the_cpu_features():
    portable = {name: fast.PORTABLE[name].matvec for name in NAMES}
    for name in NAMES:
        chosen = FORMATS[name].matvec
        assert chosen is (fast.FAST_MATVEC[name] if simd.HAS_AVX512_VNNI else portable[name])
    assert bool(fast.FAST_MATVEC) == simd.HAS_AVX512_VNNI


def test_portable_env_var_forces_the_portable_kernels():
    code = ("from llamacpu.kernels import simd; from llamacpu.quant import registry as fast, FORMATS;"
            "assert simd.PORTABLE and not simd.HAS_AVX512_VNNI and not simd.HAS_AVX512_BF16;"
            "assert fast.FAST_MATVEC == {} and fast.FAST_MATMUL == {};"
            "assert FORMATS['q4_0'] is fast.PORTABLE['q4_0'];"
            "print('portable ok')")
    env = dict(os.environ, LLAMACPU_PORTABLE="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "portable ok" in r.stdout, r.stderr


@pytest.mark.parametrize("name", ["q4_0", "q2_k"])
def test_formats_without_decode_kernel_decline_fusion_and_still_batch(name):
    """A format without a VNNI decode kernel (the portable kernels: every format on a CPU without
    AVX512-VNNI, here forced by taking registry.PORTABLE's entry) declines the fused call (writing nothing)
    and its batched matmul for a decode-sized input gives one matvec per token (to fp32 rounding: the
    portable matmul sums in another order than the fused matvec)."""
    from llamacpu.quant import QuantizedWeight

    fmt = fast.PORTABLE[name]
    assert fmt.fused is None
    rng = np.random.default_rng(sum(map(ord, name)) + 7)
    cols = 2 * fmt.block_size
    weights = [QuantizedWeight.quantize(fmt, rng.standard_normal((int(rng.integers(1, 40)), cols))) for _ in range(2)]
    X = rng.standard_normal((3, cols)).astype(np.float32)
    outs = [np.full((3, w.shape[0]), np.nan, np.float32) for w in weights]
    assert not QuantizedWeight.matmul_shared(weights, X, outs)
    assert all(np.isnan(o).all() for o in outs)
    for w in weights:
        got = np.empty((3, w.shape[0]), np.float32)
        w.matmul(X, got)
        for t in range(3):
            one = np.empty(w.shape[0], np.float32)
            w.matvec(X[t], one)
            np.testing.assert_allclose(got[t], one, rtol=0, atol=1e-5 * (np.abs(w.dequantize()) @ np.abs(X[t])).max())
