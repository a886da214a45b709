"""Weight matrices as the model sees them: `y = x @ W.T` for W of shape [out_features, in_features].

The forward pass never looks inside a weight; it calls the four methods below. Each storage format
(F32, F16, BF16 here; the quantized block formats in `llamacpu.quant`) is one subclass whose methods
call that format's Numba kernels. Storage stays as loaded (often a memory map of the checkpoint): we
never dequantize or widen a whole matrix in the decode path.
"""
from __future__ import annotations

import numpy as np

from ..checkpoint.safetensors_mmap import bf16_to_f32, f32_to_bf16
from ..kernels import dense
from ..kernels.dense import matmul_tiled


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

    # Batch-invariant products (the serving engine): each row of x gets the same bits whatever the other
    # rows of the call, so a sequence's numbers do not depend on what else runs in its step.
    def matmul_decode(self, x: np.ndarray, out: np.ndarray) -> None:
        """Like matmul, each row through the decode kernel: out[t] is what matvec(x[t]) gives."""
        for t in range(x.shape[0]):
            self.matvec(x[t], out[t])

    def matmul_prompt(self, x: np.ndarray, out: np.ndarray) -> None:
        """Like matmul, each row as the format's prompt (prefill) kernel gives it, whatever n. Here the
        decode kernel: the only one known to be per-row invariant for every format (BLAS is not)."""
        self.matmul_decode(x, out)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """float32 [len(ids), in_features]: selected rows, dequantized (embedding lookup)."""
        raise NotImplementedError

    def dequantize(self) -> np.ndarray:
        """float32 [out_features, in_features]: the whole matrix (tests, conversion; never decode)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dtype}, shape={self.shape})"


class DenseWeight(Weight):
    """Unquantized weight: float32, or float16 / bfloat16 kept as 16-bit in memory (uint16 bits).

    `data` may be a read-only view into a memory-mapped checkpoint: it is never written.
    """

    def __init__(self, data: np.ndarray, dtype: str):
        if dtype not in ("f32", "f16", "bf16"):
            raise ValueError(f"unknown dense dtype {dtype!r}")
        want = np.float32 if dtype == "f32" else np.uint16
        if data.dtype == np.float16:
            data = data.view(np.uint16)
        if data.dtype != want or data.ndim != 2:
            raise ValueError(f"{dtype} weight needs a 2-D {np.dtype(want).name} array, got {data.dtype} {data.shape}")
        self.data = np.ascontiguousarray(data)
        self.shape = tuple(data.shape)
        self.dtype = dtype
        self._matvec = {"f32": dense.matvec_f32, "f16": dense.matvec_f16, "bf16": dense.matvec_bf16}[dtype]
        self._widen = {"f32": None, "f16": dense.widen_f16, "bf16": dense.widen_bf16}[dtype]

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def matvec(self, x, out):
        self._matvec(self.data, x, out)

    ROWS_PER_CALL = 64  # tokens per matvec_rows call: their activations stay in L2 while each row meets them

    def matmul_decode(self, x, out):
        """out[t] = matvec(x[t]) bit for bit, each weight row read once per 64 tokens. Also the prompt
        rows' kernel (Weight.matmul_prompt): BLAS rounds a row differently with 1, 2-4 or 5+ rows."""
        rows_kernel = {"f32": dense.matvec_rows_f32, "f16": dense.matvec_rows_f16, "bf16": dense.matvec_rows_bf16}
        for t0 in range(0, x.shape[0], self.ROWS_PER_CALL):
            rows_kernel[self.dtype](self.data, x[t0:t0 + self.ROWS_PER_CALL], out[t0:t0 + self.ROWS_PER_CALL])

    def matmul(self, x, out):
        if x.shape[0] == 1:
            self._matvec(self.data, x[0], out[0])
        elif self.dtype == "f32":
            np.matmul(x, self.data.T, out=out)
        else:
            matmul_tiled(self._widen, self.data, x, out)

    def rows(self, ids):
        r = self.data[np.asarray(ids)]
        if self.dtype == "f32":
            return np.array(r, dtype=np.float32)
        if self.dtype == "f16":
            return r.view(np.float16).astype(np.float32)
        return (r.astype(np.uint32) << 16).view(np.float32)

    def dequantize(self):
        return self.rows(np.arange(self.shape[0]))

    @classmethod
    def from_array(cls, arr: np.ndarray, storage: str = "auto", source_dtype: str | None = None) -> "DenseWeight":
        """Wrap a checkpoint tensor. `source_dtype` names the stored type ("F32", "F16", "BF16");
        `storage` is "auto" (keep it) or one of "float32", "float16", "bfloat16" (convert)."""
        kind = {"F32": "f32", "F16": "f16", "BF16": "bf16"}[source_dtype]
        target = {"auto": kind, "float32": "f32", "float16": "f16", "bfloat16": "bf16"}[storage]
        if target == kind:
            return cls(arr, kind)
        f32 = bf16_to_f32(arr) if kind == "bf16" else np.asarray(arr, dtype=np.float32)
        if target == "f32":
            return cls(np.ascontiguousarray(f32), "f32")
        if target == "f16":
            return cls(f32.astype(np.float16).view(np.uint16), "f16")
        return cls(f32_to_bf16(f32), "bf16")
