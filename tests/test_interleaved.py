"""Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS interleaved by 16 rows at load
(llamacpu/quant/interleaved.py, InterleavedWeight, CPUBackend.prepare_weights):
the layout against its NumPy reference and back, the one kernel against the float reference and bit for bit
against the VNNI prefill kernel it replaces, each token's result independent of the others, the weight's
protocol, and models: which matrices get interleaved, logits as with the stored layout, the compiled step."""
import numpy as np
import pytest

from llamacpu import InputError, LlamaForCausalLM
from llamacpu.backends import CPUBackend
from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.kernels import simd
from llamacpu.model.llama import LayerWeights, LlamaWeights
from llamacpu.quant import QuantizedWeight, interleaved, kernels
from llamacpu.quant.vnni import NO_OUT, NO_ROWS
from llamacpu.quant.weight import InterleavedWeight
from test_compiled_decode import greedy

pytestmark = pytest.mark.skipif(not simd.HAS_AVX512_VNNI,
                                reason="Q4_0 is interleaved only where the AVX512-VNNI kernels run (this CPU, or "
                                       "LLAMACPU_PORTABLE=1, keeps the stored layout)")
SHAPES = [(16, 32), (48, 96), (32, 576), (64, 2048)]  # 576 = SmolLM2's width: 18 k-blocks
MODULES = {m.NAME: m for m in kernels.MODULES}
FMTS = pytest.mark.parametrize("fmt", interleaved.FORMATS)


# the tiny shape's widths (64, 128) hold no super-block of 256: wider for the K-quants
WIDE = {f: dict(hidden_size=256, intermediate_size=512) if interleaved.SPECS[f].block == 256 else {}
        for f in interleaved.FORMATS}


def width(fmt, cols):
    """cols, rounded up to whole super-blocks of 256 for the K-quants."""
    return -(-cols // 256) * 256 if interleaved.SPECS[fmt].block == 256 else cols


def ro(a):
    """Read-only, as the model's blocks are: the kernels' compiled signatures (warmed by `make warm`) are reused."""
    a.flags.writeable = False
    return a


def q4_blocks(rng, rows, cols, fmt="q4_0"):
    return ro(MODULES[fmt].quantize((rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)))


def run(packed, X, more=(), fmt="q4_0"):
    outs = [np.full((X.shape[0], p.shape[0]), np.nan, np.float32) for p in (packed,) + tuple(more)]
    mats = [ro(m) for m in (packed, *more)] + [NO_ROWS] * (2 - len(more))
    o = outs + [NO_OUT] * (2 - len(more))
    interleaved.KERNELS[fmt](mats[0], mats[1], mats[2], X, o[0], o[1], o[2], False)
    return outs


@FMTS
@pytest.mark.parametrize("shape", SHAPES)
def test_layout_round_trip(shape, fmt):
    shape = shape[0], width(fmt, shape[1])
    rng = np.random.default_rng(shape[1])
    b = q4_blocks(rng, *shape, fmt)
    ref = interleaved.pack_ref(b, shape[1], fmt)
    got = np.empty_like(b)
    interleaved.pack(b, got, shape[1], fmt)
    np.testing.assert_array_equal(got, ref)
    assert not np.array_equal(got, b)  # a real permutation
    np.testing.assert_array_equal(interleaved.unpack(got, shape[1], fmt), b)
    ids = rng.integers(0, shape[0], 9)
    np.testing.assert_array_equal(interleaved.unpack_rows(got, ids, shape[1], fmt), b[ids])
    # the documented byte layout: row 5's first header field (d) at bytes 10..11 of group 0, then its column 12
    flat = got.reshape(-1)
    h0 = interleaved.SPECS[fmt].header[0][0]
    np.testing.assert_array_equal(flat[10:12], b[5, h0:h0 + 2])
    if fmt in ("q4_0", "iq4_nl"):  # column 12 = 8 * 1 + 4 + 0: vector 1, high nibble
        assert flat[32 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 2 + 12] & 15
    elif fmt == "q8_0":  # column 12 = 4 * 3 + 0: vector 3, as an unsigned byte
        assert flat[32 + 64 * 3 + 4 * 5 + 0] == b[5, 2 + 12] ^ 0x80
    elif fmt in ("q4_1", "q5_1"):  # the minimum m at 32 + 10; (Q5_1: the fifth bits, then) the nibbles
        np.testing.assert_array_equal(flat[32 + 10:32 + 12], b[5, 2:4])
        if fmt == "q4_1":
            assert flat[64 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 4 + 12] & 15
        else:  # bit 12 of qh: byte 1, bit 4; in the fifth bits at bit 4 + 1 (high half of vector 1)
            assert flat[64 + 64 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 8 + 12] & 15
            assert (flat[64 + 4 * 5 + 0] >> 5) & 1 == (b[5, 4 + 1] >> 4) & 1
    elif fmt == "q5_0":
        assert flat[32 + 64 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 6 + 12] & 15
        assert (flat[32 + 4 * 5 + 0] >> 5) & 1 == (b[5, 2 + 1] >> 4) & 1
    elif fmt == "q6_k":  # scale 7 at 32 + 16 * 7 + 5; column 12 (ql[12] low, qh[12] bits 0-1): chunk 0, vector B
        assert flat[32 + 16 * 7 + 5] == b[5, 192 + 7]
        assert flat[288 + 128 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 12] & 15
        assert (flat[288 + 64 + 4 * 5 + 0] >> 2) & 3 == b[5, 128 + 12] & 3
    elif fmt == "q2_k":  # dmin at 32 + 10, scale byte 7 at 64 + 16 * 7 + 5; column 12 (qs[12] & 3): vector B, bits 2, 3
        np.testing.assert_array_equal(flat[32 + 10:32 + 12], b[5, 82:84])
        assert flat[64 + 16 * 7 + 5] == b[5, 7]
        assert (flat[320 + 64 + 4 * 5 + 0] >> 2) & 3 == b[5, 16 + 12] & 3
    elif fmt == "q3_k":  # scale byte 7 at 32 + 16 * 7 + 5; column 12: its third bit (hmask[12] bit 0), low bits
        assert flat[32 + 16 * 7 + 5] == b[5, 96 + 7]
        assert (flat[224 + 4 * 5 + 0] >> 5) & 1 == b[5, 12] & 1
        assert (flat[224 + 64 + 64 + 4 * 5 + 0] >> 2) & 3 == b[5, 32 + 12] & 3
    elif fmt == "iq4_xs":  # scales_h at 32 + 10, scales_l byte 3 at 64 + 16 * 3 + 5; sub-block 3's codes
        np.testing.assert_array_equal(flat[32 + 10:32 + 12], b[5, 2:4])
        assert flat[64 + 16 * 3 + 5] == b[5, 4 + 3]
        assert flat[128 + 256 * 3 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 8 + 16 * 3 + 12] & 15
    else:  # Q4_K, Q5_K: dmin at 32 + 10, scale byte 7 at 64 + 16 * 7 + 5; sub-block 3 (chunk 1, high nibbles)
        np.testing.assert_array_equal(flat[32 + 10:32 + 12], b[5, 2:4])
        assert flat[64 + 16 * 7 + 5] == b[5, 4 + 7]
        if fmt == "q4_k":
            assert flat[256 + 256 * 3 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 16 + 32 * 1 + 12] >> 4
        else:  # each sub-block: 64 bytes of fifth bits (bit 3 of qh[12]), then the nibbles
            assert flat[256 + 320 * 3 + 64 + 64 * 1 + 4 * 5 + 0] >> 4 == b[5, 48 + 32 * 1 + 12] >> 4
            assert (flat[256 + 320 * 3 + 4 * 5 + 0] >> 5) & 1 == (b[5, 16 + 12] >> 3) & 1


@FMTS
def test_packer_moves_every_bit_of_random_bytes(fmt):
    """The Numba packer (word-wise: 4 levels per operation) against the NumPy reference on random bytes, so every
    bit pattern of every level field and header byte occurs; the layout is a bit permutation, so it round-trips."""
    cols = width(fmt, 96)
    rng = np.random.default_rng(7)
    b = rng.integers(0, 256, (48, cols // interleaved.SPECS[fmt].block * interleaved.SPECS[fmt].type_size),
                     dtype=np.uint8)
    got = np.empty_like(b)
    interleaved.pack(ro(b), got, cols, fmt)
    np.testing.assert_array_equal(got, interleaved.pack_ref(b, cols, fmt))
    np.testing.assert_array_equal(interleaved.unpack(got, cols, fmt), b)


@FMTS
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_against_reference_and_prefill_kernel(shape, fmt):
    rows, cols = shape[0], width(fmt, shape[1])
    rng = np.random.default_rng(rows + cols)
    b = q4_blocks(rng, rows, cols, fmt)
    packed = interleaved.pack_ref(b, cols, fmt)
    w = MODULES[fmt].dequantize(b, cols)
    for n in (1, 2, 3, 4, 5, 9):
        X = rng.standard_normal((n, cols)).astype(np.float32)
        got, = run(packed, X, fmt=fmt)
        want = X @ w.T
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max(), n
        before = np.empty((n, rows), np.float32)
        MODULES[fmt].matmul_vnni(b, NO_ROWS, NO_ROWS, X, before, NO_OUT, NO_OUT, True)
        np.testing.assert_array_equal(got, before)  # prompt rows keep their bits


@FMTS
def test_each_token_independent_of_the_others(fmt):
    rng = np.random.default_rng(1)
    rows, cols = 48, width(fmt, 576)
    packed = interleaved.pack_ref(q4_blocks(rng, rows, cols, fmt), cols, fmt)
    X = rng.standard_normal((11, cols)).astype(np.float32)
    together, = run(packed, X, fmt=fmt)
    for t in range(len(X)):
        alone, = run(packed, X[t:t + 1], fmt=fmt)
        np.testing.assert_array_equal(together[t], alone[0])
    for n in (2, 3, 4, 5, 8):
        part, = run(packed, X[:n], fmt=fmt)
        np.testing.assert_array_equal(part, together[:n])
    shuffled, = run(packed, X[::-1].copy(), fmt=fmt)
    np.testing.assert_array_equal(shuffled, together[::-1])


@FMTS
def test_fused_matrices_equal_separate_calls(fmt):
    rng = np.random.default_rng(2)
    cols = width(fmt, 96)
    a, b, c = (interleaved.pack_ref(q4_blocks(rng, r, cols, fmt), cols, fmt) for r in (32, 16, 48))
    X = rng.standard_normal((6, cols)).astype(np.float32)
    oa, ob, oc = run(a, X, (b, c), fmt)
    np.testing.assert_array_equal(oa, run(a, X, fmt=fmt)[0])
    np.testing.assert_array_equal(ob, run(b, X, fmt=fmt)[0])
    np.testing.assert_array_equal(oc, run(c, X, fmt=fmt)[0])
    oa2, ob2 = run(a, X, (b,), fmt)
    np.testing.assert_array_equal(oa2, oa)
    np.testing.assert_array_equal(ob2, ob)


@FMTS
def test_nan_and_inf_in_activations_give_nan(fmt):
    rng = np.random.default_rng(3)
    cols = width(fmt, 64)
    packed = interleaved.pack_ref(q4_blocks(rng, 16, cols, fmt), cols, fmt)
    X = rng.standard_normal((3, cols)).astype(np.float32)
    X[0, 5], X[2, 40] = np.nan, np.inf
    got, = run(packed, X, fmt=fmt)
    assert np.isnan(got[0]).all() and np.isnan(got[2]).all() and np.isfinite(got[1]).all()


@FMTS
def test_interleaved_weight_protocol(fmt):
    rng = np.random.default_rng(4)
    rows, cols = 32, width(fmt, 96)
    src = QuantizedWeight.quantize(fmt, rng.standard_normal((rows, cols)).astype(np.float32))
    w = InterleavedWeight(src)
    assert w.shape == src.shape and w.dtype == fmt and w.nbytes == src.nbytes
    assert not w.packed.flags.writeable
    np.testing.assert_array_equal(w.blocks, src.blocks)
    np.testing.assert_array_equal(w.dequantize(), src.dequantize())
    ids = np.array([31, 0, 7, 7])
    np.testing.assert_array_equal(w.rows(ids), src.rows(ids))
    x = rng.standard_normal(cols).astype(np.float32)
    X = rng.standard_normal((5, cols)).astype(np.float32)
    out = np.empty(rows, np.float32)
    w.matvec(x, out)
    want = src.dequantize() @ x
    assert np.abs(out - want).max() <= 1e-4 * np.abs(want).max()
    for method in (w.matmul, w.matmul_decode, w.matmul_prompt):
        o = np.empty((5, rows), np.float32)
        method(X, o)
        np.testing.assert_array_equal(o[0], run(w.packed, X[:1], fmt=fmt)[0][0])
    with pytest.raises(InputError):
        w.matvec(x[:-1], out)
    with pytest.raises(InputError):
        w.matmul(X, np.empty((5, rows + 1), np.float32))
    with pytest.raises(InputError):
        w.rows(np.array([rows]))
    # q/k/v in one call only when every matrix is interleaved and of the same width
    other = InterleavedWeight(QuantizedWeight.quantize(fmt, rng.standard_normal((16, cols)).astype(np.float32)))
    outs = [np.empty((5, rows), np.float32), np.empty((5, 16), np.float32)]
    assert InterleavedWeight.matmul_shared([w, other], X, outs)
    np.testing.assert_array_equal(outs[1], run(other.packed, X, fmt=fmt)[0])
    assert not InterleavedWeight.matmul_shared([w, src], X, outs)
    stranger = "q8_0" if fmt != "q8_0" else "q4_0"  # another interleaved format: one call per matrix instead
    mixed = InterleavedWeight(QuantizedWeight.quantize(stranger, rng.standard_normal((16, cols)).astype(np.float32)))
    assert not InterleavedWeight.matmul_shared([w, mixed], X, outs)


@FMTS
def test_prepare_weights_interleaves_projections(monkeypatch, tmp_path, fmt):
    path = write_synthetic(tmp_path / "m", "tiny", seed=3, **WIDE[fmt])
    model = LlamaForCausalLM.from_pretrained(path, quantization=fmt)
    monkeypatch.setenv("LLAMACPU_REPACK", "0")
    stored = LlamaForCausalLM.from_pretrained(path, quantization=fmt)
    layer = model.weights.layers[0]
    kinds = {type(getattr(layer, n)) for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
    assert kinds == {InterleavedWeight}
    assert all(type(getattr(l, "wq")) is QuantizedWeight for l in stored.weights.layers)
    w = model.weights  # the embedding is looked up by rows: interleaved only when it is the LM head too
    assert (w.lm_head is w.embed) == (type(w.embed) is InterleavedWeight or not interleaved.eligible(fmt, w.embed.shape))
    ids = np.array([[1, 5, 9, 2, 7, 3]])
    a, b = model(ids).logits, stored(ids).logits
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    ga = model.generate(ids, max_new_tokens=12, do_sample=False)
    gb = stored.generate(ids, max_new_tokens=12, do_sample=False)
    np.testing.assert_array_equal(ga, gb)


@FMTS
def test_compiled_step_on_interleaved_weights_is_the_readable_pass(tmp_path, fmt):
    model = LlamaForCausalLM.from_pretrained(write_synthetic(tmp_path / "m", "tiny", seed=4, **WIDE[fmt]),
                                             quantization=fmt)
    assert isinstance(model.weights.layers[0].wq, InterleavedWeight)
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 5, 3]])
    runs = [greedy(model, ids, None, 8, compiled) for compiled in (False, True)]
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_array_equal(runs[0][1], runs[1][1])


def test_backend_keeps_ineligible_matrices():
    rng = np.random.default_rng(5)
    odd = QuantizedWeight.quantize("q4_0", rng.standard_normal((24, 64)).astype(np.float32))  # 24 rows
    other = QuantizedWeight.quantize("int4_g128", rng.standard_normal((32, 128)).astype(np.float32))  # not interleaved
    assert not interleaved.eligible("q4_0", odd.shape) and interleaved.eligible("q4_0", (32, 64))
    assert not interleaved.eligible("int4_g128", (32, 128)) and not interleaved.eligible("q4_k", (32, 64))
    layer = LayerWeights(attn_norm=np.ones(64, np.float32), wq=odd, wk=other, wv=other, wo=other,
                         mlp_norm=np.ones(64, np.float32), w_gate=other, w_up=other, w_down=other)
    w = CPUBackend().prepare_weights(LlamaWeights(embed=other, layers=[layer], norm=np.ones(64, np.float32),
                                                  lm_head=other))
    assert w.layers[0].wq is odd and w.layers[0].wk is other and w.lm_head is other


def test_tied_embedding_interleaved_once_and_rows_still_exact():
    rng = np.random.default_rng(6)
    emb = QuantizedWeight.quantize("q8_0", rng.standard_normal((48, 64)).astype(np.float32))
    own = QuantizedWeight.quantize("q8_0", rng.standard_normal((32, 64)).astype(np.float32))
    layer = LayerWeights(attn_norm=np.ones(64, np.float32), wq=own, wk=own, wv=own, wo=own,
                         mlp_norm=np.ones(64, np.float32), w_gate=own, w_up=own, w_down=own)
    want = emb.rows(np.array([0, 47, 5]))
    w = CPUBackend().prepare_weights(LlamaWeights(embed=emb, layers=[layer], norm=np.ones(64, np.float32), lm_head=emb))
    assert isinstance(w.embed, InterleavedWeight) and w.lm_head is w.embed
    np.testing.assert_array_equal(w.embed.rows(np.array([0, 47, 5])), want)
    untied = CPUBackend().prepare_weights(LlamaWeights(embed=emb, layers=[layer], norm=np.ones(64, np.float32),
                                                       lm_head=own))
    assert untied.embed is emb and isinstance(untied.lm_head, InterleavedWeight)
