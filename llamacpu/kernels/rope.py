"""Rotary position embedding, RoPE [arXiv:2104.09864, eq. (34)], in Hugging Face's rotate-half layout.

Hugging Face checkpoints store Q/K rows so that pair i of a head is (i, i + head_dim/2), not (2i, 2i+1)
as in the paper and llama2.c; the GGUF reader undoes llama.cpp's permutation so that all checkpoints
meet here in the same layout. Frequencies (and their scaling for longer contexts) are computed in
`llamacpu.model.rope_scaling`; this kernel only rotates.
"""
import math

import numpy as np
from numba import njit, prange


def rotate_pair(x, t, i, angle):
    """Rotate pair (i, i + head_dim/2) of every head of token t of x [N, heads, head_dim] in place by
    `angle` (float32). Plain Python, compiled for both targets: here by njit, for the GPU by
    `llamacpu.kernels.cuda.rope` (one rotation written once)."""
    half = x.shape[2] // 2
    c = np.float32(math.cos(angle))
    s = np.float32(math.sin(angle))
    for h in range(x.shape[1]):
        a = x[t, h, i]
        b = x[t, h, i + half]
        x[t, h, i] = a * c - b * s
        x[t, h, i + half] = b * c + a * s


_rotate_pair = njit(inline="always")(rotate_pair)


@njit(cache=True, inline="always")
def _token(x, positions, inv_freq, t):
    p = np.float32(positions[t])
    for i in range(x.shape[2] // 2):
        _rotate_pair(x, t, i, p * inv_freq[i])


@njit(parallel=True, cache=True)
def rope(x, positions, inv_freq):
    """Rotate in place. x: float32 [N, n_heads, head_dim], positions: int64 [N], inv_freq: float32 [head_dim/2].
    Tokens in parallel.

    The angle is computed in float32 as transformers does (position * inv_freq), so that long
    positions round the same way."""
    for t in prange(x.shape[0]):
        _token(x, positions, inv_freq, t)


@njit(cache=True)
def rope_serial(x, positions, inv_freq):
    """The same on the calling thread (one decode token)."""
    for t in range(x.shape[0]):
        _token(x, positions, inv_freq, t)


def rope_ref(x, positions, inv_freq):
    angle = positions.astype(np.float32)[:, None] * inv_freq[None, :]  # [N, half]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
