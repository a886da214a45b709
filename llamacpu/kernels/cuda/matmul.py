"""Matrix-matrix product for prefill, one kernel per weight format: out[n, R] = X[n, C] @ W.T.

Shared-memory tiling with register micro-tiles, the classic GEMM layout: a block of tile x tile threads
computes a (tile * MICRO) x (tile * MICRO) tile of `out`, each thread a MICRO x MICRO grid of it
(rows r0 + tx + tile * i, tokens t0 + ty + tile * j). The block walks the inner dimension in steps of
K_STEP, loading x[tokens, k : k + K_STEP] and W[rows, k : k + K_STEP] into shared memory, the weights
decoded on the way (`formats.Format.at`): each decoded weight serves tile * MICRO tokens, and each
value read from shared memory serves MICRO products.

Reference: `X @ W.dequantize().T` (`llamacpu.quant.<fmt>.matmul_ref`).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from .common import barrier
from .formats import FORMATS, Format

TILE = 16  # largest tile edge in threads (the geometry's `tile` may be smaller)
MICRO = 4  # outputs per thread along rows and along tokens
K_STEP = 32  # inner-dimension columns per shared-memory step
SPAN = TILE * MICRO  # largest block tile edge in rows / tokens
ROW = K_STEP + 1  # shared-memory row length: the +1 keeps column reads free of bank conflicts


def reference(w_f32: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w_f32.T


def _matmul_kernel(fmt: Format):
    at = fmt.at

    @cuda.jit
    def matmul(w, x, out):
        """w: the format's storage [R, ...]; x: float32 [n, C]; out: float32 [n, R]."""
        xs = cuda.shared.array((SPAN, ROW), np.float32)  # x[t0 : t0 + span, k0 : k0 + K_STEP]
        ws = cuda.shared.array((SPAN, ROW), np.float32)  # W[r0 : r0 + span, k0 : k0 + K_STEP], decoded
        acc = cuda.local.array((MICRO, MICRO), np.float32)  # [row i, token j]
        n, cols = x.shape
        n_rows = out.shape[1]
        tile = cuda.blockDim.x
        span = tile * MICRO
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        me = ty * tile + tx
        tiles_r = (n_rows + span - 1) // span
        tiles_t = (n + span - 1) // span
        for job in range(cuda.blockIdx.x, tiles_r * tiles_t, cuda.gridDim.x):
            r0 = (job % tiles_r) * span
            t0 = (job // tiles_r) * span
            for i in range(MICRO):
                for j in range(MICRO):
                    acc[i, j] = 0.0
            for k0 in range(0, cols, K_STEP):
                # the block loads both tiles, consecutive threads on consecutive columns
                for e in range(me, span * K_STEP, tile * tile):
                    a = e // K_STEP
                    c = k0 + e % K_STEP
                    xv = np.float32(0.0)
                    wv = np.float32(0.0)
                    if c < cols:
                        if t0 + a < n:
                            xv = x[t0 + a, c]
                        if r0 + a < n_rows:
                            wv = at(w, r0 + a, c)
                    xs[a, e % K_STEP] = xv
                    ws[a, e % K_STEP] = wv
                barrier()
                for kk in range(K_STEP):
                    for i in range(MICRO):
                        wv = ws[tx + tile * i, kk]
                        for j in range(MICRO):
                            acc[i, j] += wv * xs[ty + tile * j, kk]
                barrier()
            for j in range(MICRO):
                t = t0 + ty + tile * j
                for i in range(MICRO):
                    r = r0 + tx + tile * i
                    if t < n and r < n_rows:
                        out[t, r] = acc[i, j]

    return matmul


MATMUL = {name: _matmul_kernel(fmt) for name, fmt in FORMATS.items()}  # format name -> kernel


def launch(name: str, geometry, w, x, out) -> None:
    """out = x @ W.T for W stored in format `name` (device arrays)."""
    tile = min(geometry.tile, TILE)
    n, rows = out.shape
    span = tile * MICRO
    jobs = -(-rows // span) * -(-n // span)
    MATMUL[name][geometry.blocks(jobs), (tile, tile)](w, x, out)
