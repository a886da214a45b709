"""llamacpu.model.pooling.embed: pooled hidden states equal the same pooling done in NumPy on the
model's own last_hidden_state, each text independent of the others in its list."""
import numpy as np
import pytest

from llamacpu import InputError, LlamaForCausalLM
from llamacpu.model.pooling import embed
from llamacpu.tokenizer.llama import LlamaTokenizer

TEXTS = ["Once upon a time there was a cat.", "Lily went to the park", "Hi"]


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path), LlamaTokenizer.from_pretrained(path)


@pytest.mark.parametrize("pooling", ["mean", "last", "cls"])
def test_matches_numpy_pooling_of_last_hidden_state(stories, pooling):
    model, tok = stories
    got = embed(model, tok, TEXTS, pooling=pooling)
    assert got.shape == (3, model.config.hidden_size) and got.dtype == np.float32
    for row, text in enumerate(TEXTS):
        h = model(np.array([tok.encode(text)])).last_hidden_state[0].astype(np.float64)  # [T, hidden]
        v = {"mean": h.mean(0), "last": h[-1], "cls": h[0]}[pooling]
        np.testing.assert_allclose(got[row], v / np.linalg.norm(v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_unnormalized_and_independent_of_the_batch(stories):
    model, tok = stories
    raw = embed(model, tok, TEXTS, normalize=False)
    alone = embed(model, tok, TEXTS[1], normalize=False)
    np.testing.assert_array_equal(raw[1], alone[0])
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    # different texts give different vectors; cls pooling of a BOS-first tokenizer is the same for all
    assert not np.allclose(raw[0], raw[1])
    cls = embed(model, tok, TEXTS, pooling="cls")
    np.testing.assert_allclose(cls[0], cls[1], rtol=1e-5)


@pytest.mark.parametrize("texts, pooling", [([], "mean"), ([1, 2], "mean"), ("a", "max"), (None, "mean")])
def test_refuses_bad_arguments(stories, texts, pooling):
    model, tok = stories
    with pytest.raises(InputError):
        embed(model, tok, texts, pooling=pooling)


def test_refuses_text_longer_than_the_context(shared_models):
    path = shared_models / "stories260K"
    model = LlamaForCausalLM.from_pretrained(path, max_context=8)
    with pytest.raises(InputError, match="context"):
        embed(model, LlamaTokenizer.from_pretrained(path), "one two three four five six seven eight nine ten")
