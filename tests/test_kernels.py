"""Each Numba kernel against its NumPy reference on random inputs."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llamacpu.kernels import dense
from llamacpu.kernels.attention import attention, attention_ref, attention_serial
from llamacpu.kernels.rmsnorm import rmsnorm, rmsnorm_ref, rmsnorm_serial
from llamacpu.kernels.rope import rope, rope_ref, rope_serial
from llamacpu.kernels.swiglu import swiglu, swiglu_ref, swiglu_serial
from llamacpu.checkpoint.safetensors_mmap import bf16_to_f32, f32_to_bf16
from llamacpu.model.weights import DenseWeight

import numba

SETTINGS = settings(max_examples=15, deadline=None)


def rand(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


@SETTINGS
@given(n=st.integers(1, 5), d=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_rmsnorm(n, d, seed):
    rng = np.random.default_rng(seed)
    x, w = rand(rng, n, d), rand(rng, d)
    for kernel in (rmsnorm, rmsnorm_serial):  # parallel (prefill) and serial (decode) drivers
        out = np.empty_like(x)
        kernel(x, w, 1e-5, out)
        np.testing.assert_allclose(out, rmsnorm_ref(x, w, 1e-5), rtol=2e-5, atol=2e-6)


@SETTINGS
@given(n=st.integers(1, 5), m=st.integers(1, 70), seed=st.integers(0, 2**31))
def test_swiglu(n, m, seed):
    rng = np.random.default_rng(seed)
    g, u = rand(rng, n, m) * 4, rand(rng, n, m)
    for kernel in (swiglu, swiglu_serial):
        out = np.empty_like(g)
        kernel(g, u, out)
        np.testing.assert_allclose(out, swiglu_ref(g, u), rtol=2e-5, atol=2e-6)


@SETTINGS
@given(n=st.integers(1, 6), heads=st.integers(1, 4), half=st.integers(1, 16), seed=st.integers(0, 2**31))
def test_rope(n, heads, half, seed):
    rng = np.random.default_rng(seed)
    x = rand(rng, n, heads, 2 * half)
    pos = rng.integers(0, 5000, n).astype(np.int64)
    inv = (1.0 / 10000 ** (np.arange(half) / half)).astype(np.float32)
    want = rope_ref(x, pos, inv)
    for kernel in (rope, rope_serial):
        y = x.copy()
        kernel(y, pos, inv)
        np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(b=st.integers(1, 3), t=st.integers(1, 5), kv=st.sampled_from([1, 2]), rep=st.sampled_from([1, 2, 3]),
       hd=st.sampled_from([2, 8, 16]), past=st.integers(0, 7), seed=st.integers(0, 2**31))
def test_attention(b, t, kv, rep, hd, past, seed):
    rng = np.random.default_rng(seed)
    S = past + t + 3
    q = rand(rng, b, t, kv * rep, hd)
    kc, vc = rand(rng, b, kv, S, hd), rand(rng, b, kv, S, hd)
    valid = (rng.random((b, S)) < 0.8).astype(np.uint8)
    valid[:, past + t:] = 0  # slots beyond the written ones are never valid
    out = np.empty_like(q)
    scores = np.zeros((numba.config.NUMBA_NUM_THREADS, S), np.float32)
    scale = np.float32(hd ** -0.5)
    for kernel in (attention, attention_serial):
        kernel(q, kc, vc, valid, past, scale, out, scores)
        np.testing.assert_allclose(out, attention_ref(q, kc, vc, valid, past, scale), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@SETTINGS
@given(rows=st.integers(1, 40), cols=st.integers(1, 90), n=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_dense_matvec_matmul(kind, rows, cols, n, seed):
    rng = np.random.default_rng(seed)
    w32 = rand(rng, rows, cols)
    store = {"f32": w32, "f16": w32.astype(np.float16).view(np.uint16), "bf16": f32_to_bf16(w32)}[kind]
    w = DenseWeight(store, kind)
    exact = w.dequantize().astype(np.float64)
    x = rand(rng, n, cols)
    out = np.empty((n, rows), np.float32)
    w.matmul(x, out)
    np.testing.assert_allclose(out, x @ exact.T, rtol=1e-4, atol=1e-4)
    w.matvec(x[0], out[0])
    np.testing.assert_allclose(out[0], exact @ x[0], rtol=1e-4, atol=1e-4)


def test_tiled_prefill_crosses_tiles():
    rng = np.random.default_rng(0)
    w32 = rand(rng, 300, 4096)  # 1 MiB tiles of 64 rows: several tiles and a ragged last one
    w = DenseWeight(w32.astype(np.float16).view(np.uint16), "f16")
    x = rand(rng, 3, 4096)
    out = np.empty((3, 300), np.float32)
    w.matmul(x, out)
    np.testing.assert_allclose(out, x @ w.dequantize().T, rtol=1e-4, atol=1e-3)


def test_bf16_round_trip_and_rounding():
    x = np.array([1.0, -2.5, 3.14159, 1e-30, 65504.0, np.inf, -np.inf], np.float32)
    back = bf16_to_f32(f32_to_bf16(x))
    np.testing.assert_allclose(back, x, rtol=2 ** -8)
    assert np.isnan(bf16_to_f32(f32_to_bf16(np.array([np.nan], np.float32))))[0]
    # round to nearest even: 1 + 2^-8 is a tie between 1 and 1 + 2^-7 -> 1
    assert bf16_to_f32(f32_to_bf16(np.array([1 + 2 ** -8], np.float32)))[0] == 1.0


def test_attention_query_with_nothing_to_attend_gives_zeros():
    """A left-padding query sees no valid slot: zeros, not NaN (fastmath must not drop the check)."""
    rng = np.random.default_rng(1)
    q = rand(rng, 1, 2, 1, 2)
    kc, vc = rand(rng, 1, 1, 5, 2), rand(rng, 1, 1, 5, 2)
    valid = np.array([[0, 1, 0, 0, 0]], np.uint8)
    out = np.empty_like(q)
    attention(q, kc, vc, valid, 0, np.float32(0.7), out, np.zeros((numba.config.NUMBA_NUM_THREADS, 5), np.float32))
    assert np.array_equal(out[0, 0], np.zeros((1, 2), np.float32))
    np.testing.assert_allclose(out[0, 1, 0], vc[0, 0, 1], rtol=1e-6)
