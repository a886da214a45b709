"""The compiled decode step (llamacpu.kernels.decode_step, one call per token) against the readable forward
pass (`LlamaCore.forward_chunk`'s loop): greedy ids and the logits of every step bit-identical, on every
parity fixture quantized at load, the F16/BF16 fixtures as stored (interleaved at load), the demo's SmolLM2
(Q4_1 with a Q8_0 embedding, past the context length where attention goes parallel) and batches; and the
models and steps it must leave to the readable pass (F32 weights, stories260K's unquantizable 172-wide
matrix, more rows than the decode kernels take, tracing)."""
from pathlib import Path

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.kernels import simd
from llamacpu.model.weights import InterleavedDenseWeight
from llamacpu.quant import QuantizedWeight
from llamacpu.quant import kernels as quant_kernels

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file())
needs_vnni = pytest.mark.skipif(not simd.HAS_AVX512_VNNI,
                                reason="the compiled step calls the AVX512-VNNI decode kernels; this CPU (or "
                                       "LLAMACPU_PORTABLE=1) runs the readable pass only")


def greedy(model, ids, mask, n_new, compiled):
    model.compiled_decode = compiled
    r = model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, eos_token_id=[],
                       output_scores=True, return_dict_in_generate=True)
    return np.asarray(r.sequences), np.stack([np.asarray(s) for s in r.scores])


def assert_same_as_readable(model, ids, mask, n_new, calls, expect_compiled=True):
    seq0, scores0 = greedy(model, ids, mask, n_new, compiled=False)
    assert calls[0] == 0
    seq1, scores1 = greedy(model, ids, mask, n_new, compiled=True)
    assert (calls[0] > 0) == expect_compiled, calls[0]
    np.testing.assert_array_equal(seq1, seq0)
    np.testing.assert_array_equal(scores1, scores0)  # every step's logits, bit for bit


@needs_vnni
@pytest.mark.parametrize("quantization", ["q8_0", "q4_1", "q4_0"])
@pytest.mark.parametrize("case", CASES)
def test_parity_fixtures(case, quantization, calls):
    ref = dict(np.load(FIXTURES / case / "reference.npz"))
    ids, mask = ref["input_ids"], ref["attention_mask"]
    model = LlamaForCausalLM.from_pretrained(FIXTURES / case, max_context=max(64, ref["greedy_ids"].shape[1]),
                                             quantization=quantization)
    quantized = all(isinstance(w, QuantizedWeight) for l in model.weights.layers
                    for w in (l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down))
    assert (model.decode_step() is not None) == quantized  # a matrix too narrow for blocks stays dense
    assert_same_as_readable(model, ids, mask, 6, calls, expect_compiled=quantized)


@pytest.mark.parametrize("case", CASES)
def test_sixteen_bit_fixtures_as_stored(case, calls):
    """F16 and BF16 models run interleaved at load (InterleavedDenseWeight) on every CPU: compiled where every
    projection is, bit for bit the readable pass; F32 fixtures keep the readable pass."""
    ref = dict(np.load(FIXTURES / case / "reference.npz"))
    model = LlamaForCausalLM.from_pretrained(FIXTURES / case, max_context=max(64, ref["greedy_ids"].shape[1]))
    interleaved = all(type(w) is InterleavedDenseWeight for l in model.weights.layers
                      for w in (l.wq, l.wk, l.wv, l.wo, l.w_gate, l.w_up, l.w_down))
    assert interleaved == (case == "gqa_f16")  # mqa_bf16's k and v have 8 rows: stored, so the readable pass
    if case == "mqa_bf16":
        assert type(model.weights.layers[0].wq) is InterleavedDenseWeight
    assert (model.decode_step() is not None) == interleaved
    assert_same_as_readable(model, ref["input_ids"], ref["attention_mask"], 6, calls, expect_compiled=interleaved)


@needs_vnni
def test_dense_models_keep_the_readable_pass(shared_models, calls):
    """stories260K as stored (F32) and quantized (its 172-wide MLP input holds no whole block, so that
    matrix stays F32): no compiled step, same tokens as ever."""
    for quantization in (None, "q4_0"):
        model = LlamaForCausalLM.from_pretrained(shared_models / "stories260K", quantization=quantization)
        assert model.decode_step() is None
        assert_same_as_readable(model, np.array([[1, 403, 407, 261]]), None, 8, calls, expect_compiled=False)


@needs_vnni
def test_smollm2_demo_model(calls):
    """The demo's file, a prompt long enough that attention switches to its parallel kernel mid-decode
    (CPUBackend's serial_work rule, which the step follows)."""
    from llamacpu.errors import CheckpointError
    from llamacpu.hub import default_model

    try:
        path = default_model()
    except CheckpointError as e:
        pytest.skip(f"SmolLM2 GGUF not installed ({e})")
    model = LlamaForCausalLM.from_pretrained(path, max_context=160)
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, (1, 108))
    assert_same_as_readable(model, ids, None, 10, calls)


@needs_vnni
def test_batches_and_what_is_declined(calls):
    """Several sequences with left padding through one compiled step per token (quantized); more rows
    than the decode kernels take, and traced steps, keep the readable pass."""
    model = LlamaForCausalLM.from_pretrained(FIXTURES / "gqa_f16", quantization="q8_0", max_context=64)
    rng = np.random.default_rng(0)
    for batch in (3, quant_kernels.DECODE_MAX_TOKENS):
        ids = rng.integers(3, model.config.vocab_size, (batch, 5))
        mask = np.ones_like(ids)
        mask[0, :2] = 0
        calls[0] = 0
        assert_same_as_readable(model, ids, mask, 5, calls)
    ids = rng.integers(3, model.config.vocab_size, (quant_kernels.DECODE_MAX_TOKENS + 1, 5))
    calls[0] = 0
    assert_same_as_readable(model, ids, None, 3, calls, expect_compiled=False)
    model.compiled_decode = True
    with model.tracing() as rec:  # every decode step recorded: the readable pass
        model.generate(ids[:1], max_new_tokens=3, do_sample=False)
    assert calls[0] == 0 and len(rec.traces) == 3
