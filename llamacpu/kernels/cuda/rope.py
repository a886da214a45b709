"""Rotary position embedding [arXiv:2104.09864, eq. (34)] on the GPU, in Hugging Face's rotate-half
layout (pair i of a head is (i, i + head_dim/2); see `llamacpu.kernels.rope`).

One thread per (token, pair): the angle is computed in float32 as position * inv_freq, as transformers
and the CPU kernel do, then the pair is rotated in every head. Reference: `llamacpu.kernels.rope.rope_ref`.
"""
from __future__ import annotations


import numpy as np
from numba import cuda

from ..rope import rope_ref as reference  # noqa: F401  (the NumPy function this must match)
from ..rope import rotate_pair
from .common import device

_rotate_pair = device(rotate_pair)  # the CPU kernel's rotation, compiled for the GPU


@cuda.jit
def rope(x, positions, inv_freq):
    """Rotate in place. x: float32 [N, n_heads, head_dim], positions: int64 [N], inv_freq: float32 [head_dim/2]."""
    n, _, head_dim = x.shape
    half = head_dim // 2
    for item in range(cuda.grid(1), n * half, cuda.gridsize(1)):
        t = item // half
        i = item % half
        _rotate_pair(x, t, i, np.float32(positions[t]) * inv_freq[i])


def launch(geometry, x, positions, inv_freq) -> None:
    items = x.shape[0] * (x.shape[2] // 2)
    rope[geometry.blocks(items, geometry.threads), geometry.threads](x, positions, inv_freq)
