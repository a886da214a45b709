"""F16 and BF16 matrices interleaved by 16 rows at load (kernels/dense.py "interleaved by 16 rows",
model/weights.py InterleavedDenseWeight, CPUBackend.prepare_weights), in both layouts (columns; pairs of columns
for bf16 compute): the layout against its NumPy reference and back, the float32 kernel against a float64
reference within its rounding bound and the same bits in both layouts, every token's result the same bits
whatever else shares the call, the vdpbf16ps prefill on the pairs, the weight's protocol and its errors, and
models: which matrices get interleaved, logits and greedy ids as with the stored layout, the compiled step."""
import numpy as np
import pytest

from llamacpu import InputError, LlamaForCausalLM
from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.kernels import bf16 as bf16_kernels, dense, simd
from llamacpu.model.weights import DenseWeight, InterleavedDenseWeight
from test_compiled_decode import greedy

DTYPES = pytest.mark.parametrize("dtype", ["f16", "bf16"])
LAYOUTS = pytest.mark.parametrize("dtype,layout", [("f16", "columns"), ("bf16", "columns"), ("bf16", "pairs")])
KERNELS = InterleavedDenseWeight.KERNELS
needs_bf16 = pytest.mark.skipif(not simd.HAS_AVX512_BF16, reason="vdpbf16ps needs AVX512-BF16 (this CPU, or "
                                "LLAMACPU_PORTABLE=1, runs bf16 compute on the float32 kernel)")
SHAPES = [(16, 4), (32, 12), (48, 64), (64, 576), (256, 200)]


def bits(rng, dtype, shape, scale=0.05):
    """Random 16-bit weights as stored (uint16) and their exact float32 values."""
    w = (rng.standard_normal(shape) * scale).astype(np.float32)
    if dtype == "f16":
        b = w.astype(np.float16).view(np.uint16)
        return b, b.view(np.float16).astype(np.float32)
    b = (w.view(np.uint32) >> 16).astype(np.uint16)
    return b, (b.astype(np.uint32) << 16).view(np.float32)


def run(dtype, p, x, rows, cols, layout="columns"):
    out = np.full((x.shape[0], rows), np.nan, np.float32)
    KERNELS[dtype, layout](p, np.ascontiguousarray(x).reshape(-1), rows, cols, x.shape[0], out.reshape(-1))
    return out


@pytest.mark.parametrize("pairs", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_layout_is_the_reference_and_goes_back(shape, pairs):
    rng = np.random.default_rng(0)
    w = rng.integers(0, 1 << 16, size=shape, dtype=np.uint16)
    p = np.empty(w.size, np.uint16)
    dense.interleave16(w, p, pairs)
    np.testing.assert_array_equal(p, dense.interleave16_ref(w, pairs))
    np.testing.assert_array_equal(dense.deinterleave16(p, *shape, pairs), w)
    rows, cols = shape  # the documented position of w[r, c]
    for r, c in [(0, 0), (rows - 1, cols - 1), (17 % rows, 3 % cols), (rows // 2, cols // 2)]:
        at = (r // 16 * cols + c - c % 2) * 16 + 2 * (r % 16) + c % 2 if pairs else (r // 16 * cols + c) * 16 + r % 16
        assert p[at] == w[r, c]


@LAYOUTS
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_within_the_rounding_bound_of_float64(dtype, layout, shape):
    rng = np.random.default_rng(1)
    rows, cols = shape
    b, wf = bits(rng, dtype, shape)
    p = dense.interleave16_ref(b, layout == "pairs")
    for n in (1, 3, 4, 7, 70):  # 70 crosses TOKEN_BLOCK
        x = rng.standard_normal((n, cols)).astype(np.float32)
        got = run(dtype, p, x, rows, cols, layout)
        exact = dense.matmul16_ref(wf, x)
        # four partial sums of cols/4 terms, each rounded once per FMA, then two additions
        bound = (cols // dense.SPLIT + 2) * np.finfo(np.float32).eps * (np.abs(x).astype(np.float64) @ np.abs(wf).T)
        assert np.all(np.abs(got - exact) <= bound + 1e-30), (n, np.abs(got - exact).max(), bound.max())
        # and the plain product (any summation order) to float32 accuracy
        np.testing.assert_allclose(got, x.astype(np.float64) @ wf.T.astype(np.float64), rtol=1e-4,
                                   atol=1e-5 * np.abs(wf).sum(axis=1).max())


def test_pairs_layout_gives_the_column_layouts_bits():
    """bf16 compute's exact kernel (decode, the serving engine's rows) widens a pair with two shifts: the same
    FMAs in the same order as the column layout, so the same bits."""
    rng = np.random.default_rng(7)
    b, _ = bits(rng, "bf16", (48, 200))
    x = rng.standard_normal((9, 200)).astype(np.float32)
    np.testing.assert_array_equal(run("bf16", dense.interleave16_ref(b, True), x, 48, 200, "pairs"),
                                  run("bf16", dense.interleave16_ref(b), x, 48, 200))


@needs_bf16
@pytest.mark.parametrize("shape", SHAPES)
def test_vdpbf16ps_prefill_on_the_pairs(shape):
    """x rounded to bf16 once (round_to_bf16), products exact in float32, float32 accumulation: within the
    accumulation bound of float64 on the rounded x; every token (a tail of 1-3 too) written, no other."""
    rng = np.random.default_rng(8)
    rows, cols = shape
    b, wf = bits(rng, "bf16", shape)
    p = dense.interleave16_ref(b, True)
    for n in (1, 2, 3, 5, 70):
        x = rng.standard_normal((n, cols)).astype(np.float32)
        xb = np.empty(x.size, np.uint16)
        bf16_kernels.round_to_bf16(x.reshape(-1), xb)
        xr = (xb.astype(np.uint32) << 16).view(np.float32).reshape(n, cols)
        out = np.full((n + 1, rows), np.nan, np.float32)  # one row more: must stay untouched
        bf16_kernels.matmul16_pairs_bf16(p, xb, rows, cols, n, out.reshape(-1))
        exact = xr.astype(np.float64) @ wf.T.astype(np.float64)
        bound = (cols + 4) * np.finfo(np.float32).eps * (np.abs(xr).astype(np.float64) @ np.abs(wf).T)
        assert np.all(np.abs(out[:n] - exact) <= bound + 1e-30)
        assert np.isnan(out[n]).all()


@DTYPES
def test_each_token_gets_the_same_bits_whatever_the_call(dtype):
    """Decode (n = 1), batched decode and prefill are one kernel: a row's result never depends on n or on the
    other rows (the serving engine's batch invariance, and prompt rows equal to decode rows)."""
    rng = np.random.default_rng(2)
    rows, cols = 64, 96
    b, _ = bits(rng, dtype, (rows, cols))
    p = dense.interleave16_ref(b)
    x = rng.standard_normal((70, cols)).astype(np.float32)
    alone = np.concatenate([run(dtype, p, x[t:t + 1], rows, cols) for t in range(len(x))])
    for n in (2, 3, 4, 5, 8, 9, 64, 65, 70):
        np.testing.assert_array_equal(run(dtype, p, x[:n], rows, cols), alone[:n])
    shuffled = rng.permutation(len(x))
    np.testing.assert_array_equal(run(dtype, p, x[shuffled], rows, cols), alone[shuffled])


@DTYPES
def test_nan_and_inf_stay_in_their_token(dtype):
    rng = np.random.default_rng(3)
    b, _ = bits(rng, dtype, (32, 64))
    p = dense.interleave16_ref(b)
    x = rng.standard_normal((5, 64)).astype(np.float32)
    x[1, 7] = np.inf
    x[3, 0] = np.nan
    out = run(dtype, p, x, 32, 64)
    assert not np.isfinite(out[1]).any() and np.isnan(out[3]).all()
    np.testing.assert_array_equal(out[[0, 2, 4]], run(dtype, p, x[[0, 2, 4]], 32, 64))


@LAYOUTS
def test_weight_protocol(dtype, layout):
    rng = np.random.default_rng(4)
    b, wf = bits(rng, dtype, (48, 64))
    stored = DenseWeight(b, dtype, compute="bf16" if layout == "pairs" else "f32")
    w = InterleavedDenseWeight(stored)
    assert w.layout == layout
    assert w.shape == (48, 64) and w.dtype == dtype and w.nbytes == b.nbytes and isinstance(w, DenseWeight)
    np.testing.assert_array_equal(w.data, b)  # the stored order back, for writers and other backends
    np.testing.assert_array_equal(w.dequantize(), wf)
    ids = np.array([0, 47, 16, 5, 5])
    np.testing.assert_array_equal(w.rows(ids), stored.rows(ids))
    x = rng.standard_normal((6, 64)).astype(np.float32)
    full = np.empty((6, 48), np.float32)
    w.matmul_decode(x, full)
    for method in (w.matmul, w.matmul_prompt):
        out = np.empty((6, 48), np.float32)
        method(x, out)
        if layout == "pairs" and method == w.matmul and simd.HAS_AVX512_BF16:  # vdpbf16ps: x rounded to bf16
            np.testing.assert_allclose(out, full, rtol=2e-2, atol=2e-2 * np.abs(full).max())
            assert not np.array_equal(out, full)
        else:
            np.testing.assert_array_equal(out, full)
    one = np.empty(48, np.float32)
    w.matvec(x[2], one)
    np.testing.assert_array_equal(one, full[2])
    wide = np.zeros((6, 60), np.float32)  # a strided output (a column slice of a wider buffer)
    w.matmul(x, wide[:, 4:52])
    expect = np.empty((6, 48), np.float32)
    w.matmul(x, expect)
    np.testing.assert_array_equal(wide[:, 4:52], expect)
    np.testing.assert_allclose(full, x @ wf.T, rtol=1e-4, atol=1e-5)
    w.matmul(np.empty((0, 64), np.float32), np.empty((0, 48), np.float32))  # nothing to do


def test_weight_errors_are_input_errors():
    w = InterleavedDenseWeight(DenseWeight(np.zeros((16, 8), np.uint16), "f16"))
    for x, out in [(np.zeros(9, np.float32), np.zeros(16, np.float32)),
                   (np.zeros(8, np.float64), np.zeros(16, np.float32)),
                   (np.zeros(8, np.float32), np.zeros(15, np.float32))]:
        with pytest.raises(InputError):
            w.matvec(x, out)
    with pytest.raises(InputError):
        w.matmul(np.zeros((2, 9), np.float32), np.zeros((2, 16), np.float32))
    with pytest.raises(InputError):
        w.matmul(np.zeros((2, 8), np.float32), np.zeros((3, 16), np.float32))
    with pytest.raises(InputError):
        w.matmul(np.zeros((2, 16), np.float32)[:, ::2], np.zeros((2, 16), np.float32))  # strided x
    readonly = np.zeros((2, 16), np.float32)
    readonly.flags.writeable = False
    with pytest.raises(InputError):
        w.matmul(np.zeros((2, 8), np.float32), readonly)
    for ids in ([16], [-1], [[0]], [0.5]):
        with pytest.raises(InputError):
            w.rows(np.array(ids))


def test_which_matrices_are_eligible():
    z = np.zeros((32, 8), np.uint16)
    assert InterleavedDenseWeight.eligible(DenseWeight(z, "f16"))
    assert InterleavedDenseWeight.eligible(DenseWeight(z, "bf16"))
    assert InterleavedDenseWeight.eligible(DenseWeight(z, "bf16", compute="bf16"))  # the pairs layout
    assert not InterleavedDenseWeight.eligible(DenseWeight(np.zeros((32, 8), np.float32), "f32"))
    assert not InterleavedDenseWeight.eligible(DenseWeight(np.zeros((24, 8), np.uint16), "f16"))  # rows % 16
    assert not InterleavedDenseWeight.eligible(DenseWeight(np.zeros((32, 6), np.uint16), "f16"))  # cols % 4


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
@pytest.mark.parametrize("tied", [False, True])
def test_models_interleaved_and_stored_agree(tmp_path, monkeypatch, dtype, tied):
    path = write_synthetic(tmp_path / "m", "tiny", dtype=dtype, seed=5, tie_word_embeddings=tied)
    model = LlamaForCausalLM.from_pretrained(path)
    monkeypatch.setenv("LLAMACPU_REPACK", "0")
    stored = LlamaForCausalLM.from_pretrained(path)
    names = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
    assert {type(getattr(l, n)) for l in model.weights.layers for n in names} == {InterleavedDenseWeight}
    assert {type(getattr(l, n)) for l in stored.weights.layers for n in names} == {DenseWeight}
    w = model.weights
    assert type(w.lm_head) is InterleavedDenseWeight
    assert (w.embed is w.lm_head) == tied and type(w.embed) is (InterleavedDenseWeight if tied else DenseWeight)
    ids = np.array([[1, 5, 9, 2, 7, 3], [4, 4, 8, 1, 0, 2]])
    a, b = model(ids).logits, stored(ids).logits
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    ga = model.generate(ids, max_new_tokens=12, do_sample=False)
    np.testing.assert_array_equal(ga, stored.generate(ids, max_new_tokens=12, do_sample=False))
    # prompt rows and decode rows are one kernel: feeding the generated ids back as a prompt gives, at each
    # position, exactly the logits the decode steps gave
    steps = model.generate(ids[:1], max_new_tokens=6, do_sample=False, output_scores=True,
                           return_dict_in_generate=True, eos_token_id=[])
    full = model(steps.sequences[:, :-1]).logits[0, ids.shape[1] - 1:]
    np.testing.assert_array_equal(full, np.stack([s[0] for s in steps.scores]))


@DTYPES
def test_shared_input_one_launch(dtype):
    """q/k/v and gate/up: one launch over all their groups (the compiled decode step calls the same kernel),
    each output the bits its own matmul gives; declined (nothing written) where they cannot share it."""
    rng = np.random.default_rng(6)
    ws = [InterleavedDenseWeight(DenseWeight(bits(rng, dtype, (r, 64))[0], dtype)) for r in (64, 16, 32)]
    for n in (1, 3, 70):
        x = rng.standard_normal((n, 64)).astype(np.float32)
        for k in (2, 3):
            outs = [np.full((n, w.shape[0]), np.nan, np.float32) for w in ws[:k]]
            assert InterleavedDenseWeight.matmul_shared(ws[:k], x, outs)
            for w, out in zip(ws, outs):
                alone = np.empty_like(out)
                w.matmul(x, alone)
                np.testing.assert_array_equal(out, alone)
    x = rng.standard_normal((2, 64)).astype(np.float32)
    other = "bf16" if dtype == "f16" else "f16"
    declined = [
        ([ws[0], InterleavedDenseWeight(DenseWeight(bits(rng, other, (16, 64))[0], other))], None),  # two dtypes
        ([ws[0], InterleavedDenseWeight(DenseWeight(bits(rng, dtype, (16, 32))[0], dtype))], None),  # two widths
        ([ws[0], DenseWeight(bits(rng, dtype, (16, 64))[0], dtype)], None),  # one stored as loaded
        (ws[:2], [np.zeros((2, 64), np.float32), np.zeros((2, 40), np.float32)[:, :16]]),  # a strided output
        (ws[:1], None),
    ]
    for weights, outs in declined:
        outs = outs or [np.zeros((2, w.shape[0]), np.float32) for w in weights]
        before = [o.copy() for o in outs]
        assert not InterleavedDenseWeight.matmul_shared(weights, x, outs)
        for o, b in zip(outs, before):
            np.testing.assert_array_equal(o, b)


def test_shared_input_bf16_compute():
    """bf16 compute: several rows of the readable prefill go one vdpbf16ps matmul each (declined here);
    decode rows (`any_rows`, one row) share one launch of the float32 kernel, matmul_decode's bits."""
    rng = np.random.default_rng(9)
    ws = [InterleavedDenseWeight(DenseWeight(bits(rng, "bf16", (r, 64))[0], "bf16", compute="bf16")) for r in (32, 16)]
    for n, any_rows in ((1, False), (1, True), (5, True), (5, False)):
        x = rng.standard_normal((n, 64)).astype(np.float32)
        outs = [np.zeros((n, w.shape[0]), np.float32) for w in ws]
        shared = InterleavedDenseWeight.matmul_shared(ws, x, outs, any_rows=any_rows)
        if n > 1 and not any_rows and simd.HAS_AVX512_BF16:
            assert not shared and not any(o.any() for o in outs)
            continue
        assert shared
        for w, out in zip(ws, outs):
            alone = np.empty_like(out)
            w.matmul_decode(x, alone)
            np.testing.assert_array_equal(out, alone)


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_bf16_compute_models(tmp_path, monkeypatch, dtype, calls):
    """dtype="bfloat16": every projection in the pairs layout, logits as the stored rows' vdpbf16ps path gives
    them (the same rounding of x, another summation order), greedy ids equal, decode steps compiled for one
    sequence (bit for bit the readable pass) and left to the readable pass for several."""
    path = write_synthetic(tmp_path / "m", "tiny", dtype=dtype, seed=6)
    model = LlamaForCausalLM.from_pretrained(path, dtype="bfloat16")
    monkeypatch.setenv("LLAMACPU_REPACK", "0")
    stored = LlamaForCausalLM.from_pretrained(path, dtype="bfloat16")
    layer = model.weights.layers[0]
    assert {getattr(w, "layout", None) for w in (layer.wq, layer.wk, layer.w_gate, layer.w_down)} == {"pairs"}
    ids = np.array([[1, 5, 9, 2, 7, 3, 8, 8, 4]])
    a, b = model(ids).logits, stored(ids).logits
    assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max()
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=10, do_sample=False),
                                  stored.generate(ids, max_new_tokens=10, do_sample=False))
    step = model.decode_step()
    assert step is not None and step.accepts(1) and not step.accepts(2)
    runs = [greedy(model, ids, None, 6, compiled) for compiled in (False, True)]
    assert calls[0] > 0
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
