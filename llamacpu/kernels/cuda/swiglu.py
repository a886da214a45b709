"""SwiGLU [arXiv:2002.05202, eq. (5)] on the GPU: out = silu(gate) * up, one thread per element.
Reference: `llamacpu.kernels.swiglu.swiglu_ref`."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..swiglu import swiglu_ref as reference  # noqa: F401  (the NumPy function this must match)


@cuda.jit
def swiglu(gate, up, out):
    """gate, up: float32 [N, I] -> out = silu(gate) * up (out may alias gate)."""
    n, m = gate.shape
    for item in range(cuda.grid(1), n * m, cuda.gridsize(1)):
        i = item // m
        j = item % m
        g = gate[i, j]
        out[i, j] = g / (np.float32(1.0) + np.float32(math.exp(-g))) * up[i, j]


def launch(geometry, gate, up, out) -> None:
    size = gate.shape[0] * gate.shape[1]
    swiglu[geometry.blocks(size, geometry.threads), geometry.threads](gate, up, out)
