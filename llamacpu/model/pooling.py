"""Sentence embeddings from a decoder: pool the final-normed hidden states of each text into one vector.

    vectors = embed(model, tokenizer, ["a cat", "a dog"], pooling="mean")   # float32 [2, hidden]

pooling: "mean" averages every token's state (BOS included, as llama.cpp's mean pooling does),
"last" takes the last token's (what decoder-only embedding models such as e5-mistral are trained for),
"cls" the first token's. normalize=True scales each row to unit L2 norm, so a dot product is the cosine.

Each text runs alone through a fresh KV cache of its own length: no padding to mask out, nothing shared
with other callers' caches (the serving engine calls this from its own threads), and the result of a
text does not depend on what else is in the list.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from .causal_lm import as_batch

POOLINGS = ("mean", "last", "cls")


def embed(model, tokenizer, texts, pooling: str = "mean", normalize: bool = True) -> np.ndarray:
    """-> float32 [n, hidden] for a string or a list of n strings."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise InputError("texts: expected a string or a non-empty list of strings")
    if pooling not in POOLINGS:
        raise InputError(f"pooling: expected one of {', '.join(POOLINGS)}, got {pooling!r}")
    out = np.empty((len(texts), model.config.hidden_size), np.float32)
    for row, text in enumerate(texts):
        ids = tokenizer.encode(text)
        if not ids:  # a tokenizer without BOS and an empty text: embed BOS-less nothing is undefined
            raise InputError(f"texts[{row}]: the text is empty and the tokenizer adds no special token")
        if len(ids) > model.max_context:
            raise InputError(f"texts[{row}]: {len(ids)} tokens, more than the context of {model.max_context}")
        ids, mask = as_batch([ids], None, model.config.vocab_size)
        hidden = model.decoder(ids, mask, model.new_cache(1, max_len=ids.shape[1]))[0]  # [T, hidden]
        out[row] = {"mean": lambda h: h.mean(axis=0), "last": lambda h: h[-1], "cls": lambda h: h[0]}[pooling](hidden)
    if normalize:
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out
