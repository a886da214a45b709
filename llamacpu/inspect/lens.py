"""Per-layer summaries of a Trace: how big the residual stream is, how focused each attention head
is, and the logit lens [nostalgebraist, "interpreting GPT: the logit lens", 2020]: what the model
would predict if decoding stopped after layer i (the final RMSNorm and the LM head applied to that
layer's residual stream).

Residual states are numbered 0..L: state 0 is the embedding, state i + 1 is layer i's output; the
last one, through the head, gives the model's own logits.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..kernels.rmsnorm import rmsnorm_ref

if TYPE_CHECKING:  # annotations only: lens reads traces, it never imports the recorder
    from .trace import Trace


def residual_states(trace: Trace, position: int = -1) -> np.ndarray:
    """float32 [L + 1, B, hidden]: the residual stream at one token, after the embedding and after
    each layer."""
    return np.stack([trace.residual(i)[:, position] for i in range(trace.num_layers + 1)])


def residual_norms(trace: Trace, position: int = -1, row: int = 0) -> np.ndarray:
    """float32 [L + 1]: L2 norm of the residual stream at one token (embedding, then each layer)."""
    return np.linalg.norm(residual_states(trace, position)[:, row], axis=-1)


def update_norms(trace: Trace, position: int = -1, row: int = 0) -> np.ndarray:
    """float32 [L, 2]: L2 norms of what each layer's attention and MLP blocks add to the stream."""
    return np.array([[np.linalg.norm(trace[f"layers.{i}.{n}"][row, position]) for n in ("o_proj", "down")]
                     for i in range(trace.num_layers)], np.float32)


def attention_entropy(trace: Trace, row: int = 0) -> np.ndarray:
    """float32 [L, H]: entropy in bits of each head's attention distribution, averaged over the real
    query tokens. 0 = all weight on one token; log2(n) = spread evenly over n tokens."""
    real = trace.attention_mask[row].astype(bool)
    out = []
    for i in range(trace.num_layers):
        p = trace[f"layers.{i}.attn_probs"][row][:, real]  # [H, real queries, S]
        plogp = np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0)
        out.append(-plogp.sum(-1).mean(-1))
    return np.array(out, np.float32)


def logit_lens(model, trace: Trace, position: int = -1) -> np.ndarray:
    """float32 [L + 1, B, vocab]: final norm + LM head applied to every residual state at one token."""
    states = residual_states(trace, position)
    norm = np.asarray(model.backend.to_host(model.weights.norm), np.float32)
    normed = rmsnorm_ref(states, norm, model.config.rms_norm_eps)
    return model.head(model.weights.lm_head, normed)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_tokens(logits: np.ndarray, k: int) -> list:
    """[(id, probability), ...] of the k most likely tokens of one logits vector [vocab]."""
    p = softmax(logits.astype(np.float64))
    ids = np.argsort(-p, kind="stable")[:k]
    return [(int(i), float(p[i])) for i in ids]


def logit_lens_top(model, trace: Trace, k: int = 5, row: int = 0, chunk_bytes: int = 32 << 20) -> tuple:
    """The logit lens at every position: (ids int32 [L + 1, T, k], probabilities float32 [L + 1, T, k]),
    the k most likely tokens of each residual state through the final norm and the LM head, most likely
    first. Layers go through the head a few at a time so the [.., vocab] logits stay under chunk_bytes."""
    L, T = trace.num_layers, trace.input_ids.shape[1]
    norm = np.asarray(model.backend.to_host(model.weights.norm), np.float32)
    vocab = model.weights.lm_head.shape[0]
    per_chunk = max(1, chunk_bytes // (T * vocab * 4))
    ids, probs = np.zeros((L + 1, T, k), np.int32), np.zeros((L + 1, T, k), np.float32)
    for first in range(0, L + 1, per_chunk):
        layers = range(first, min(L + 1, first + per_chunk))
        states = np.stack([trace.residual(i)[row] for i in layers])  # [n, T, hidden]
        logits = model.head(model.weights.lm_head, rmsnorm_ref(states, norm, model.config.rms_norm_eps))
        # softmax in place in float32 (a float64 copy of [n, T, vocab] costs more than the head itself)
        np.subtract(logits, logits.max(-1, keepdims=True), out=logits)
        e = np.exp(logits, out=logits)
        total = e.sum(-1, dtype=np.float64, keepdims=True)
        top = top_k_indices(e, k)
        top_p = (np.take_along_axis(e, top, -1) / total).astype(np.float32)
        order = np.lexsort((top, -top_p), axis=-1)  # by probability, then id (as top_tokens)
        ids[first:first + len(layers)] = np.take_along_axis(top, order, -1)
        probs[first:first + len(layers)] = np.take_along_axis(top_p, order, -1)
    return ids, probs


def top_k_indices(x: np.ndarray, k: int, block: int = 64) -> np.ndarray:
    """Indices of the k largest values along the last axis, unordered: [..., n] -> [..., k].
    np.argpartition over a 50k vocabulary is the slowest step of a page; instead take each block of 64
    values' maximum (a fast reduction), keep the k blocks with the largest maxima (the k largest values
    can lie nowhere else), and partition only their k * 64 values."""
    n = x.shape[-1]
    if n <= 4 * k * block:
        return np.argpartition(x, n - k, axis=-1)[..., n - k:]
    nb = -(-n // block)
    padded = np.full(x.shape[:-1] + (nb * block,), -np.inf, x.dtype)
    padded[..., :n] = x
    blocks = padded.reshape(x.shape[:-1] + (nb, block))
    best = np.argpartition(blocks.max(-1), nb - k, axis=-1)[..., nb - k:]  # [..., k] block numbers
    cand = (best[..., :, None] * block + np.arange(block)).reshape(x.shape[:-1] + (k * block,))
    vals = np.take_along_axis(padded, cand, -1)
    pick = np.argpartition(vals, k * block - k, axis=-1)[..., k * block - k:]
    return np.take_along_axis(cand, pick, -1)
