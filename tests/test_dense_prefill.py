"""Prefill kernels of unquantized weights (kernels/dense.py register tiles, kernels/bf16.py vdpbf16ps)
against NumPy on random inputs, the weight's dispatch between them, and model parity through them."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from llamacpu import LlamaForCausalLM
from llamacpu.checkpoint.safetensors_mmap import bf16_to_f32, f32_to_bf16
from llamacpu.kernels import bf16, dense
from llamacpu.kernels.simd import HAS_AVX512_BF16
from llamacpu.model import weights as weights_mod
from llamacpu.model.weights import DenseWeight

SETTINGS = settings(max_examples=12, deadline=None)
PARITY = Path(__file__).parent / "fixtures" / "parity"
needs_bf16 = pytest.mark.skipif(not HAS_AVX512_BF16, reason="this CPU has no AVX512-BF16 (vdpbf16ps)")


def stored(kind, w32):
    return {"f32": w32, "f16": w32.astype(np.float16).view(np.uint16), "bf16": f32_to_bf16(w32)}[kind]


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
@SETTINGS
@given(rows=st.integers(1, 75), blocks=st.integers(1, 5), n=st.integers(2, 11), seed=st.integers(0, 2**31))
def test_panel_kernels_match_numpy(kind, rows, blocks, n, seed):
    """Rows and tokens not multiples of the 4 x 4 tile or of the 32-row panel: the tails are exact too."""
    rng = np.random.default_rng(seed)
    cols = blocks * dense.LANES
    w32 = rng.standard_normal((rows, cols)).astype(np.float32)
    w = stored(kind, w32)
    exact = DenseWeight(w, kind).dequantize().astype(np.float64)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    out = np.full((n, rows), np.nan, np.float32)
    kernel = {"f32": dense.matmul_panels_f32, "f16": dense.matmul_panels_f16, "bf16": dense.matmul_panels_bf16}[kind]
    kernel(w.reshape(-1), x.reshape(-1), rows, cols, n, out.reshape(-1))
    np.testing.assert_allclose(out, x @ exact.T, rtol=1e-5, atol=1e-4 * np.sqrt(cols))


@SETTINGS
@given(x=st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_round_to_bf16_is_round_to_nearest_even(x):
    x = np.array(x, np.float32)
    out = np.empty(x.size, np.uint16)
    bf16.round_to_bf16(x, out)
    want = f32_to_bf16(x)
    finite = ~np.isnan(x)
    np.testing.assert_array_equal(out[finite], want[finite])
    assert np.isnan(bf16_to_f32(out[~finite])).all()
    ties = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -(1 + 2 ** -8)], np.float32)  # halfway: to the even one
    tied = np.empty(3, np.uint16)
    bf16.round_to_bf16(ties, tied)
    np.testing.assert_array_equal(bf16_to_f32(tied), np.array([1.0, 1 + 2 ** -6, -1.0], np.float32))


@needs_bf16
@SETTINGS
@given(rows=st.integers(1, 75), blocks=st.integers(1, 4), n=st.integers(2, 11), seed=st.integers(0, 2**31))
def test_vdpbf16ps_kernel_matches_numpy_on_rounded_inputs(rows, blocks, n, seed):
    """The products of bf16 numbers are exact in float32: only the summation order differs."""
    rng = np.random.default_rng(seed)
    cols = blocks * bf16.LANES
    w = f32_to_bf16(rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal((n, cols)).astype(np.float32)
    xb = np.empty(x.shape, np.uint16)
    bf16.round_to_bf16(x.reshape(-1), xb.reshape(-1))
    out = np.full((n, rows), np.nan, np.float32)
    bf16.matmul_bf16(w.reshape(-1), xb.reshape(-1), rows, cols, n, out.reshape(-1))
    want = bf16_to_f32(xb).astype(np.float64) @ bf16_to_f32(w).astype(np.float64).T
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5 * np.sqrt(cols))


@pytest.mark.parametrize("fast", [True, False], ids=["vdpbf16ps", "portable"])
def test_bf16_compute_dispatch(monkeypatch, fast):
    """compute="bf16" rounds x to bf16 on the fast path (error ~2^-9 of |x||w|) and stays float32-exact on
    the portable one (a CPU without AVX512-BF16); a strided output slice is written correctly."""
    if fast and not HAS_AVX512_BF16:
        pytest.skip("this CPU has no AVX512-BF16 (vdpbf16ps)")
    monkeypatch.setattr(weights_mod, "HAS_AVX512_BF16", fast)
    rng = np.random.default_rng(5)
    w = DenseWeight(f32_to_bf16(rng.standard_normal((70, 96)).astype(np.float32)), "bf16", compute="bf16")
    x = rng.standard_normal((9, 96)).astype(np.float32)
    exact = x.astype(np.float64) @ w.dequantize().astype(np.float64).T
    wide = np.zeros((9, 100), np.float32)
    w.matmul(x, wide[:, 10:80])
    out = wide[:, 10:80]
    assert not wide[:, :10].any() and not wide[:, 80:].any()
    err = np.abs(out - exact).max() / np.abs(exact).max()
    if fast:
        xb = np.empty(x.shape, np.uint16)
        bf16.round_to_bf16(x.reshape(-1), xb.reshape(-1))
        np.testing.assert_allclose(out, bf16_to_f32(xb) @ w.dequantize().T, rtol=1e-5, atol=1e-4)
        assert 1e-5 < err < 1e-2
    else:
        assert err < 1e-6


def test_compute_option_needs_bf16_weights():
    with pytest.raises(ValueError, match="bf16 weights"):
        DenseWeight(np.zeros((2, 32), np.uint16), "f16", compute="bf16")


def test_bfloat16_dtype_asks_for_bf16_compute():
    model = LlamaForCausalLM.from_pretrained(PARITY / "gqa_f16", dtype="bfloat16")
    wq = model.weights.layers[0].wq
    assert (wq.dtype, wq.compute) == ("bf16", "bf16")
    auto = LlamaForCausalLM.from_pretrained(PARITY / "mqa_bf16")
    assert (auto.weights.layers[0].wq.dtype, auto.weights.layers[0].wq.compute) == ("bf16", "f32")


@pytest.mark.parametrize("fast", [True, False], ids=["vdpbf16ps", "portable"])
def test_f16_model_as_bf16_stays_close_to_reference(monkeypatch, fast):
    """Model parity through the bf16 path: an F16 fixture loaded with dtype="bfloat16" (weights rounded
    to bf16 at load, activations in prefill too on the fast path) against transformers' fp32 logits:
    within bf16 precision, and the prefill agrees with the same model run one token at a time."""
    if fast and not HAS_AVX512_BF16:
        pytest.skip("this CPU has no AVX512-BF16 (vdpbf16ps)")
    monkeypatch.setattr(weights_mod, "HAS_AVX512_BF16", fast)
    ref = dict(np.load(PARITY / "gqa_f16" / "reference.npz"))
    model = LlamaForCausalLM.from_pretrained(PARITY / "gqa_f16", dtype="bfloat16", max_context=64)
    ids = ref["input_ids"]
    logits = model(ids).logits
    scale = np.abs(ref["logits"]).max()
    assert np.abs(logits - ref["logits"]).max() <= 3e-2 * scale
    cache = model.new_cache(ids.shape[0], max_len=64)
    steps = np.concatenate([model(ids[:, t:t + 1], past_key_values=cache).logits for t in range(ids.shape[1])], axis=1)
    assert np.abs(steps - logits).max() <= (3e-2 if fast else 1e-5) * scale


def test_f16_to_bf16_at_load_rounds_like_numpy():
    rng = np.random.default_rng(2)
    half = (rng.standard_normal((7, 33)) * 10).astype(np.float16)
    half.flat[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 6.0e-8]  # and a subnormal
    w = DenseWeight.from_array(half.view(np.uint16), "bfloat16", "F16")
    want = f32_to_bf16(half.astype(np.float32))
    assert w.dtype == "bf16"
    np.testing.assert_array_equal(w.data.reshape(-1)[3:], want.reshape(-1)[3:])
    assert np.isnan(w.dequantize().flat[2]) and w.dequantize().flat[0] == np.inf and w.dequantize().flat[1] == -np.inf


@pytest.mark.parametrize("kind", ["f32", "f16", "bf16"])
def test_panel_kernels_are_per_row_invariant(kind):
    """A token's outputs do not depend on the other tokens of the call (each output is one accumulator
    over its own row and token, whatever the tile it falls in): bit-identical alone and in a batch."""
    rng = np.random.default_rng(9)
    rows, cols, n = 45, 64, 9
    w = stored(kind, rng.standard_normal((rows, cols)).astype(np.float32))
    x = rng.standard_normal((n, cols)).astype(np.float32)
    kernel = {"f32": dense.matmul_panels_f32, "f16": dense.matmul_panels_f16, "bf16": dense.matmul_panels_bf16}[kind]
    batch = np.empty((n, rows), np.float32)
    kernel(w.reshape(-1), x.reshape(-1), rows, cols, n, batch.reshape(-1))
    for t in range(n):
        alone = np.empty(rows, np.float32)
        kernel(w.reshape(-1), x[t].copy(), rows, cols, 1, alone)
        np.testing.assert_array_equal(alone, batch[t])
