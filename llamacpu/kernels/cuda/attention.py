"""Scaled dot-product attention [arXiv:1706.03762, eq. (1)] over the KV cache on the GPU, with
grouped-query heads [arXiv:2305.13245] (query head h reads KV head h // n_rep), and the cache write.

The cache stays on the device: `store_kv` writes the new keys and values into their slots, and the
query written at slot start + t reads the slots 0 .. start + t whose `valid` byte is set (padding and
unused slots are 0), as the CPU kernel (`llamacpu.kernels.attention`) does.

One block per query (b, t, h). It walks the visible slots in chunks of blockDim.x, one slot per
thread, with the online softmax of flash attention [arXiv:2205.14135, sec. 3.1]: the running maximum m
and denominator l, and the output accumulator (in shared memory, one head_dim vector) rescaled by
exp(m_old - m_new) whenever a chunk raises the maximum. So any context length fits in a few KB of
shared memory. A query with nothing to attend to (a padding row) outputs zeros.

Reference: `llamacpu.kernels.attention.attention_ref`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..attention import attention_ref as reference  # noqa: F401  (the NumPy function this must match)
from .common import MAX_THREADS, barrier, row_max, row_sum

MAX_HEAD_DIM = 256


@cuda.jit
def store_kv(k_cache, v_cache, k, v, start):
    """k, v: float32 [B, T, KV, hd] -> k_cache, v_cache: float32 [B, KV, S, hd] at slots start .. start+T."""
    batch, n_new, n_kv, head_dim = k.shape
    for item in range(cuda.grid(1), batch * n_new * n_kv * head_dim, cuda.gridsize(1)):
        d = item % head_dim
        g = (item // head_dim) % n_kv
        t = (item // (head_dim * n_kv)) % n_new
        b = item // (head_dim * n_kv * n_new)
        k_cache[b, g, start + t, d] = k[b, t, g, d]
        v_cache[b, g, start + t, d] = v[b, t, g, d]


@cuda.jit
def attention(q, k_cache, v_cache, valid, start, scale, out):
    """q: float32 [B, T, H, hd]; k_cache, v_cache: float32 [B, KV, S, hd]; valid: uint8 [B, S];
    start: cache slot of q[:, 0]; scale: float32; out: float32 [B, T, H, hd]."""
    q_s = cuda.shared.array(MAX_HEAD_DIM, np.float32)  # this query
    acc = cuda.shared.array(MAX_HEAD_DIM, np.float32)  # sum_s p_s v_s, scaled to the running maximum
    p = cuda.shared.array(MAX_THREADS, np.float32)  # exp(score - m) of the chunk's slots
    buf = cuda.shared.array(MAX_THREADS, np.float32)  # reductions
    batch, n_new, n_heads, head_dim = q.shape
    n_rep = n_heads // k_cache.shape[1]
    tid = cuda.threadIdx.x
    chunk = cuda.blockDim.x
    for item in range(cuda.blockIdx.x, batch * n_new * n_heads, cuda.gridDim.x):
        b = item // (n_new * n_heads)
        t = (item // n_heads) % n_new
        h = item % n_heads
        kv = h // n_rep
        last = start + t  # causal: this query sees slots 0..last
        for d in range(tid, head_dim, chunk):
            q_s[d] = q[b, t, h, d]
            acc[d] = 0.0
        barrier()
        m = np.float32(-np.inf)  # the same in every thread: it only changes through block reductions
        l = np.float32(0.0)
        for s0 in range(0, last + 1, chunk):
            s = s0 + tid
            score = np.float32(-np.inf)
            if s <= last and valid[b, s] != 0:
                dot = np.float32(0.0)
                for d in range(head_dim):
                    dot += q_s[d] * k_cache[b, kv, s, d]
                score = dot * scale
            m_new = row_max(score, buf)
            if m > m_new:
                m_new = m
            if m_new == -np.inf:  # nothing visible yet (the same in every thread)
                continue
            alpha = np.float32(math.exp(m - m_new))  # 0 while m = -inf
            e = np.float32(0.0)
            if score != -np.inf:
                e = np.float32(math.exp(score - m_new))
            p[tid] = e
            l = l * alpha + row_sum(e, buf)  # (row_sum's barrier also publishes p)
            for d in range(tid, head_dim, chunk):
                a = acc[d] * alpha
                for j in range(last + 1 - s0 if last + 1 - s0 < chunk else chunk):
                    a += p[j] * v_cache[b, kv, s0 + j, d]
                acc[d] = a
            m = m_new
            barrier()  # p is rewritten by the next chunk
        for d in range(tid, head_dim, chunk):
            out[b, t, h, d] = acc[d] / l if l > 0 else np.float32(0.0)
        barrier()  # q_s and acc are rewritten by the next query


def launch_store_kv(geometry, k_cache, v_cache, k, v, start: int) -> None:
    size = k.shape[0] * k.shape[1] * k.shape[2] * k.shape[3]
    store_kv[geometry.blocks(size, geometry.threads), geometry.threads](k_cache, v_cache, k, v, start)


def launch(geometry, q, k_cache, v_cache, valid, start: int, scale, out) -> None:
    if q.shape[3] > MAX_HEAD_DIM:
        from ...errors import UnsupportedError

        raise UnsupportedError(f"head_dim {q.shape[3]} is larger than {MAX_HEAD_DIM}, the limit of the CUDA "
                               "attention kernel")
    queries = q.shape[0] * q.shape[1] * q.shape[2]
    attention[geometry.blocks(queries), geometry.threads](q, k_cache, v_cache, valid, start,
                                                          np.float32(scale), out)
