"""Parity with transformers' LlamaForCausalLM (fp32) on committed fixtures made by
tools/make_fixtures.py: logits within 1e-4 x max|logit|, greedy tokens identical."""
from pathlib import Path

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
CASES = sorted(p.name for p in FIXTURES.iterdir() if (p / "reference.npz").is_file())


def load_case(name):
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    # rope_* cases run past max_position_embeddings on purpose: the cache must be longer
    context = max(64, ref["greedy_ids"].shape[1])
    return LlamaForCausalLM.from_pretrained(FIXTURES / name, max_context=context), ref


def assert_close_logits(ours, theirs):
    tol = 1e-4 * np.abs(theirs).max()
    err = np.abs(ours - theirs).max()
    assert err <= tol, f"max |Δ| {err:.3g} > {tol:.3g}"


def test_all_cases_present():
    assert {"mha_f32", "gqa_f16", "mqa_bf16", "head_dim", "bias", "sharded", "rope_linear", "rope_dynamic",
            "rope_llama3", "config_v5", "padded_batch", "pretraining_tp"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_logits_match_transformers(case):
    model, ref = load_case(case)
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"])
    keep = ref["attention_mask"].astype(bool)  # padded positions are undefined in both engines
    assert out.logits.shape == ref["logits"].shape
    assert_close_logits(out.logits[keep], ref["logits"][keep])


@pytest.mark.parametrize("case", CASES)
def test_greedy_tokens_match_transformers(case):
    model, ref = load_case(case)
    n_new = ref["greedy_ids"].shape[1] - ref["input_ids"].shape[1]
    ids = model.generate(ref["input_ids"], attention_mask=ref["attention_mask"], max_new_tokens=n_new,
                         do_sample=False, eos_token_id=[])
    np.testing.assert_array_equal(ids, ref["greedy_ids"])


def test_padded_rows_equal_unpadded_runs():
    model, ref = load_case("padded_batch")
    out = model(ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    for b in range(ref["input_ids"].shape[0]):
        keep = ref["attention_mask"][b].astype(bool)
        alone = model(ref["input_ids"][b][keep][None]).logits[0]
        assert_close_logits(out[b][keep], alone)
        assert_close_logits(alone, ref[f"logits_unpadded_{b}"])


def test_sixteen_bit_weights_stay_sixteen_bit():
    model, _ = load_case("gqa_f16")
    assert model.weights.layers[0].wq.dtype == "f16" and model.weights.layers[0].wq.data.itemsize == 2
    model, _ = load_case("mqa_bf16")
    assert model.weights.layers[0].wq.dtype == "bf16"
    widened = LlamaForCausalLM.from_pretrained(FIXTURES / "mqa_bf16", dtype="float32")
    assert widened.weights.layers[0].wq.dtype == "f32"


def test_weights_are_memory_mapped():
    model, _ = load_case("mha_f32")
    base = model.weights.layers[0].wq.data
    while getattr(base, "base", None) is not None:
        base = base.base
    import mmap
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)


@pytest.mark.parametrize("case", CASES)
def test_every_decode_step_matches_transformers(case):
    """The logits of each generate step (prefill, then one token at a time through the KV cache)."""
    model, ref = load_case(case)
    steps = ref["greedy_logits"]  # [B, N, V]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    cache = model.new_cache(ids.shape[0])
    logits = model.next_token_logits(ids, mask, cache)
    T = ids.shape[1]
    for i in range(steps.shape[1]):
        assert_close_logits(logits, steps[:, i])
        nxt = ref["greedy_ids"][:, T + i : T + i + 1]
        logits = model.next_token_logits(nxt, np.ones_like(nxt), cache)
