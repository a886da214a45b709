"""RMSNorm [arXiv:1910.07467, eq. (4)] on the GPU: y = x / sqrt(mean(x^2) + eps) * g.

One block per row: the threads stride over the row, add their squares in shared memory, then scale
their own elements (so `out` may be `x`). Reference: `llamacpu.kernels.rmsnorm.rmsnorm_ref`.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ..rmsnorm import rmsnorm_ref as reference  # noqa: F401  (the NumPy function this must match)
from .common import MAX_THREADS, row_sum


@cuda.jit
def rmsnorm(x, weight, eps, out):
    """x: float32 [N, D], weight: float32 [D] -> out: float32 [N, D] (out may be x)."""
    buf = cuda.shared.array(MAX_THREADS, np.float32)
    n, d = x.shape
    for i in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        ss = np.float32(0.0)
        for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
            ss += x[i, j] * x[i, j]
        ss = row_sum(ss, buf)
        inv = np.float32(1.0) / np.float32(math.sqrt(ss / np.float32(d) + np.float32(eps)))
        for j in range(cuda.threadIdx.x, d, cuda.blockDim.x):
            out[i, j] = weight[j] * (x[i, j] * inv)


def launch(geometry, x, weight, eps, out) -> None:
    rmsnorm[geometry.blocks(x.shape[0]), geometry.threads](x, weight, eps, out)
