"""Scaled dot-product attention [arXiv:1706.03762, eq. (1)] over the KV cache, with grouped-query heads
[arXiv:2305.13245]: query head h reads KV head h // n_rep, so K/V are never repeated in memory.

Which cache slots a query may read is given by `valid` (padding and unused slots are 0) and causality:
the query written at slot `start + t` reads slots 0 .. start + t.
"""
import numpy as np
import numba
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _item(q, k_cache, v_cache, valid, start, scale, out, row, item):
    """One (batch row, query, head): softmax(q k^T * scale) v over the slots it may see."""
    batch, n_new, n_heads, head_dim = q.shape
    n_rep = n_heads // k_cache.shape[1]
    b = item // (n_new * n_heads)
    t = (item // n_heads) % n_new
    h = item % n_heads
    kv = h // n_rep
    last = start + t  # causal: this query sees slots 0..last
    # fastmath assumes no infinities, so track "seen any slot" explicitly instead of using -inf
    m = np.float32(0.0)
    seen = 0
    for s in range(last + 1):
        if valid[b, s]:
            dot = np.float32(0.0)
            for d in range(head_dim):
                dot += q[b, t, h, d] * k_cache[b, kv, s, d]
            row[s] = dot * scale
            if seen == 0 or row[s] > m:
                m = row[s]
            seen += 1
    for d in range(head_dim):
        out[b, t, h, d] = 0.0
    if seen == 0:  # nothing to attend to (a padding query): output zeros
        return
    total = np.float32(0.0)
    for s in range(last + 1):
        if valid[b, s]:
            p = np.exp(row[s] - m)
            total += p
            for d in range(head_dim):
                out[b, t, h, d] += p * v_cache[b, kv, s, d]
    inv = np.float32(1.0) / total
    for d in range(head_dim):
        out[b, t, h, d] *= inv


@njit(parallel=True, cache=True, fastmath=True)
def attention(q, k_cache, v_cache, valid, start, scale, out, scores):
    """q: float32 [B, T, H, hd]; k_cache, v_cache: float32 [B, KV, S, hd]; valid: uint8 [B, S];
    start: cache slot of q[:, 0]; out: float32 [B, T, H, hd];
    scores: float32 [n_threads, S] scratch, one row per Numba thread. (batch, query, head) in parallel."""
    batch, n_new, n_heads, _ = q.shape
    for item in prange(batch * n_new * n_heads):
        _item(q, k_cache, v_cache, valid, start, scale, out, scores[numba.get_thread_id()], item)


@njit(cache=True, fastmath=True)
def attention_serial(q, k_cache, v_cache, valid, start, scale, out, scores):
    """The same on the calling thread: short contexts at decode, where a thread launch costs more."""
    batch, n_new, n_heads, _ = q.shape
    for item in range(batch * n_new * n_heads):
        _item(q, k_cache, v_cache, valid, start, scale, out, scores[0], item)


def attention_probs_ref(q, k_cache, valid, start, scale):
    """NumPy reference: probabilities float32 [B, H, T, S] (zeros where masked)."""
    batch, n_new, n_heads, head_dim = q.shape
    n_rep = n_heads // k_cache.shape[1]
    k = np.repeat(k_cache, n_rep, axis=1)  # [B, H, S, hd]
    s_len = k.shape[2]
    logits = np.einsum("bthd,bhsd->bhts", q, k) * scale
    causal = np.arange(s_len)[None, :] <= (start + np.arange(n_new))[:, None]  # [T, S]
    mask = causal[None, None] & (valid[:, None, None, :] != 0)
    logits = np.where(mask, logits, -np.inf)
    m = logits.max(-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    p = np.where(mask, np.exp(logits - m), 0)
    denom = p.sum(-1, keepdims=True)
    return (p / np.where(denom > 0, denom, 1)).astype(np.float32)


def attention_ref(q, k_cache, v_cache, valid, start, scale):
    n_rep = q.shape[2] // k_cache.shape[1]
    p = attention_probs_ref(q, k_cache, valid, start, scale)
    v = np.repeat(v_cache, n_rep, axis=1)  # [B, H, S, hd]
    return np.einsum("bhts,bhsd->bthd", p, v).astype(np.float32)
