"""Attention for a ragged batch [arXiv:1706.03762, eq. (1); GQA arXiv:2305.13245]: the tokens of several
independent sequences, concatenated, each reading the KV-cache slot of its own sequence.

The generation engine (llamacpu.serving) runs one forward pass over the new tokens of every running
sequence at once (one decode token each, plus prompt chunks of joining sequences). Each sequence owns
a slot of a preallocated pool, holding its keys/values at positions 0, 1, 2, ... with no padding, so
the query of token n reads slots[n] at positions 0 .. last[n] (causal), with no mask. One launch per
layer covers every sequence: a launch per sequence would cost more than the work at decode.
"""
import numpy as np
import numba
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _item(q, k_pool, v_pool, layer, slots, last, scale, out, row, item):
    """One (token, head): softmax(q k^T * scale) v over positions 0..last of its slot."""
    n_heads, head_dim = q.shape[1], q.shape[2]
    n_rep = n_heads // k_pool.shape[2]
    n = item // n_heads
    h = item % n_heads
    kv = h // n_rep
    s_ = slots[n]
    end = last[n] + 1
    m = np.float32(0.0)
    for s in range(end):
        dot = np.float32(0.0)
        for d in range(head_dim):
            dot += q[n, h, d] * k_pool[s_, layer, kv, s, d]
        row[s] = dot * scale
        if s == 0 or row[s] > m:
            m = row[s]
    for d in range(head_dim):
        out[n, h, d] = 0.0
    total = np.float32(0.0)
    for s in range(end):
        p = np.exp(row[s] - m)
        total += p
        for d in range(head_dim):
            out[n, h, d] += p * v_pool[s_, layer, kv, s, d]
    inv = np.float32(1.0) / total
    for d in range(head_dim):
        out[n, h, d] *= inv


@njit(parallel=True, cache=True, fastmath=True)
def slot_attention(q, k_pool, v_pool, layer, slots, last, scale, out, scores):
    """q: float32 [N, H, hd] (N tokens of several sequences); k_pool, v_pool: float32 [n_slots, L, KV, S, hd]
    (a slot's layers contiguous: its [L, 1, KV, S, hd] view is the compiled decode step's cache), layer; slots: int64 [N] slot of each token; last: int64 [N] its position (it reads 0..last);
    out: float32 [N, H, hd]; scores: float32 [n_threads, S] scratch. (token, head) pairs in parallel."""
    n_tok, n_heads, _ = q.shape
    for item in prange(n_tok * n_heads):
        _item(q, k_pool, v_pool, layer, slots, last, scale, out, scores[numba.get_thread_id()], item)


@njit(cache=True, fastmath=True)
def slot_attention_serial(q, k_pool, v_pool, layer, slots, last, scale, out, scores):
    """The same on the calling thread: little work, where a thread launch costs more."""
    n_tok, n_heads, _ = q.shape
    for item in range(n_tok * n_heads):
        _item(q, k_pool, v_pool, layer, slots, last, scale, out, scores[0], item)


def slot_attention_ref(q, k_pool, v_pool, slots, last, scale):
    """NumPy reference: float32 [N, H, hd], one token at a time, GQA by repeating K/V heads."""
    n_tok, n_heads, _ = q.shape
    n_rep = n_heads // k_pool.shape[1]
    out = np.zeros(q.shape, np.float32)
    for n in range(n_tok):
        k = np.repeat(k_pool[slots[n], :, :last[n] + 1], n_rep, axis=0)  # [H, S, hd]
        v = np.repeat(v_pool[slots[n], :, :last[n] + 1], n_rep, axis=0)
        z = np.einsum("hd,hsd->hs", q[n].astype(np.float64), k) * scale
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out[n] = np.einsum("hs,hsd->hd", p, v)
    return out
