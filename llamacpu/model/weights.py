"""Weight matrices as the model sees them: `y = x @ W.T` for W of shape [out_features, in_features].

The forward pass never looks inside a weight; it calls the four methods below. Each storage format
(F32, F16, BF16 here; the quantized block formats in `llamacpu.quant`) is one subclass whose methods
call that format's Numba kernels. Storage stays as loaded (often a memory map of the checkpoint): we
never dequantize or widen a whole matrix in the decode path.
"""
from __future__ import annotations

import numpy as np


class Weight:
    """Protocol every weight format implements.

    shape:    (out_features, in_features)
    dtype:    short format name ("f32", "f16", "bf16", "q8_0", ...)
    nbytes:   bytes of the stored representation (what a decode step reads)
    """

    shape: tuple[int, int]
    dtype: str

    @property
    def nbytes(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        """out[out_features] = W @ x, x: float32 [in_features]. Writes into `out`."""
        raise NotImplementedError

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        """out[n, out_features] = x @ W.T, x: float32 [n, in_features] C-contiguous."""
        raise NotImplementedError

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), in_features]: selected rows, dequantized (embedding lookup)."""
        raise NotImplementedError

    def dequantize(self) -> np.ndarray:
        """float32 [out_features, in_features]: the whole matrix (tests, conversion; never decode)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dtype}, shape={self.shape})"
