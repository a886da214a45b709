"""Per-layer summaries of a Trace: how big the residual stream is, how focused each attention head
is, and the logit lens [nostalgebraist, "interpreting GPT: the logit lens", 2020]: what the model
would predict if decoding stopped after layer i (the final RMSNorm and the LM head applied to that
layer's residual stream).

Residual states are numbered 0..L: state 0 is the embedding, state i + 1 is layer i's output; the
last one, through the head, gives the model's own logits.
"""
from __future__ import annotations

import numpy as np

from ..kernels.rmsnorm import rmsnorm_ref
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
