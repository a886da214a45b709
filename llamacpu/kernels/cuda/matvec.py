"""Matrix-vector product for decode, one kernel per weight format: out[R] = W @ x.

A row is shared by `lanes` threads (a warp on the GPU): lane i dots units i, i + lanes, ... of the row
(`formats.Format.dot`, decoding the weights in registers), then the lanes add their partial sums in
shared memory. A block holds `rows` such rows. Decode reads every weight once, so this is the kernel
whose speed is the model's speed: the GB/s that `bench/gpu_check.py` reports.

Reference: `W.dequantize() @ x` (`llamacpu.kernels.dense.matvec_ref`, `llamacpu.quant.<fmt>.matvec_ref`).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from ..dense import matvec_ref as reference  # noqa: F401  (the NumPy product these must match)
from .common import MAX_THREADS, row_sum
from .formats import FORMATS, Format


def _matvec_kernel(fmt: Format):
    dot, unit = fmt.dot, fmt.unit

    @cuda.jit
    def matvec(w, x, out):
        """w: the format's storage [R, ...]; x: float32 [C]; out: float32 [R]."""
        buf = cuda.shared.array(MAX_THREADS, np.float32)
        n_rows = out.shape[0]
        n_units = x.shape[0] // unit
        per_block = cuda.blockDim.y
        # every thread of a block runs the same number of iterations: row_sum synchronises the block
        for group in range(cuda.blockIdx.x, (n_rows + per_block - 1) // per_block, cuda.gridDim.x):
            r = group * per_block + cuda.threadIdx.y
            acc = np.float32(0.0)
            if r < n_rows:
                for u in range(cuda.threadIdx.x, n_units, cuda.blockDim.x):
                    acc += dot(w, r, u, x)
            total = row_sum(acc, buf)
            if r < n_rows and cuda.threadIdx.x == 0:
                out[r] = total

    return matvec


MATVEC = {name: _matvec_kernel(fmt) for name, fmt in FORMATS.items()}  # format name -> kernel


def launch(name: str, geometry, w, x, out) -> None:
    """out = W @ x for W stored in format `name` (device arrays)."""
    rows = out.shape[0]
    MATVEC[name][geometry.blocks(rows, geometry.rows), (geometry.lanes, geometry.rows)](w, x, out)
