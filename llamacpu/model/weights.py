"""Weight matrices as the model sees them: `y = x @ W.T` for W of shape [out_features, in_features].

The forward pass never looks inside a weight; it calls the four methods below. Each storage format
(F32, F16, BF16 here; the quantized block formats in `llamacpu.quant`) is one subclass whose methods
call that format's Numba kernels. Storage stays as loaded (often a memory map of the checkpoint): we
never dequantize or widen a whole matrix in the decode path.
"""
from __future__ import annotations

import mmap

import numpy as np

from ..checkpoint.safetensors_mmap import bf16_to_f32, f32_to_bf16
from ..kernels import bf16, dense
from ..kernels.dense import matmul_tiled
from ..kernels.halfbits import f16_to_bf16_rows
from ..kernels.simd import HAS_AVX512_BF16


def _release_mapped_pages(arr: np.ndarray) -> None:
    """Drop the pages of `arr` from this process's resident set when it is a view into a read-only
    file mapping (the checkpoint) that was just converted: they stay in the page cache and fault back
    in if read again, but the source and the converted copy are no longer both counted (peak RSS of an
    F16 model loaded as bf16: 2x the weights without this)."""
    base = arr
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    mm = getattr(base, "obj", None) if isinstance(base, memoryview) else None
    if not isinstance(mm, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = arr.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the array only
    last = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    if 0 <= first < last <= len(mm):
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


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

    compute: "f32" (default): products in float32 with float32 activations, the 16-bit weights widened
    exactly. "bf16" (a bf16 weight loaded with dtype="bfloat16" asked for): prefill rounds the
    activations to bfloat16 and runs `vdpbf16ps` where the CPU has AVX512-BF16 (about twice the
    float32 rate; what llama.cpp and PyTorch do for bf16 weights); decode and other CPUs keep float32.
    """

    def __init__(self, data: np.ndarray, dtype: str, compute: str = "f32"):
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
        self._panels = {"f32": dense.matmul_panels_f32, "f16": dense.matmul_panels_f16,
                        "bf16": dense.matmul_panels_bf16}[dtype]
        self._rows = {"f32": dense.matvec_rows_f32, "f16": dense.matvec_rows_f16, "bf16": dense.matvec_rows_bf16}[dtype]
        if compute not in ("f32", "bf16") or (compute == "bf16" and dtype != "bf16"):
            raise ValueError(f"compute={compute!r} needs bf16 weights (got {dtype})")
        self.compute = compute

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def matvec(self, x, out):
        self._matvec(self.data, x, out)

    ROWS_PER_CALL = 64  # tokens per matvec_rows call: their activations stay in L2 while each row meets them

    def matmul_decode(self, x, out):
        """out[t] = matvec(x[t]) bit for bit, each weight row read once per 64 tokens. Also the prompt
        rows' kernel where the tiles do not fit (matmul_prompt): BLAS rounds a row differently with 1,
        2-4 or 5+ rows."""
        for t0 in range(0, x.shape[0], self.ROWS_PER_CALL):
            self._rows(self.data, x[t0:t0 + self.ROWS_PER_CALL], out[t0:t0 + self.ROWS_PER_CALL])

    def matmul_prompt(self, x, out):
        """Prompt rows of the serving engine: the register-tile kernels where the width allows (each
        output one accumulator over its own row and token: per-row invariant, tested), else matvec_rows.
        Float32 compute only: the bf16 path rounds x per call, also per row, but is opt-in speed."""
        cols = self.shape[1]
        if self.compute != "f32" or cols % dense.LANES != 0:
            return self.matmul_decode(x, out)
        x = np.ascontiguousarray(x, dtype=np.float32)
        flat = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
        self._panels(self.data.reshape(-1), x.reshape(-1), self.shape[0], cols, x.shape[0], flat.reshape(-1))
        if flat is not out:
            out[...] = flat

    def matmul(self, x, out):
        n, (rows, cols) = x.shape[0], self.shape
        if n == 1:
            self._matvec(self.data, x[0], out[0])
            return
        x = np.ascontiguousarray(x, dtype=np.float32)
        # the kernels write the flat output: a strided `out` (a column slice) gets a contiguous scratch
        flat = out if out.flags.c_contiguous else np.empty(out.shape, np.float32)
        if self.compute == "bf16" and HAS_AVX512_BF16 and cols % bf16.LANES == 0:
            xb = np.empty(x.shape, np.uint16)
            bf16.round_to_bf16(x.reshape(-1), xb.reshape(-1))
            bf16.matmul_bf16(self.data.reshape(-1), xb.reshape(-1), rows, cols, n, flat.reshape(-1))
        elif cols % dense.LANES == 0:
            self._panels(self.data.reshape(-1), x.reshape(-1), rows, cols, n, flat.reshape(-1))
        elif self.dtype == "f32":
            np.matmul(x, self.data.T, out=flat)
        else:
            matmul_tiled(self._widen, self.data, x, flat)
        if flat is not out:
            out[...] = flat

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
        `storage` is "auto" (keep it) or one of "float32", "float16", "bfloat16" (convert). Asking for
        "bfloat16" also asks for bf16 compute in prefill (see `compute`): speed over bit-exactness."""
        kind = {"F32": "f32", "F16": "f16", "BF16": "bf16"}[source_dtype]
        target = {"auto": kind, "float32": "f32", "float16": "f16", "bfloat16": "bf16"}[storage]
        compute = "bf16" if storage == "bfloat16" else "f32"
        if target == kind:
            return cls(arr, kind, compute)
        if (kind, target) == ("f16", "bf16"):  # in one pass, no float32 copy of the matrix
            bits = np.empty(arr.shape, np.uint16)
            f16_to_bf16_rows(np.ascontiguousarray(arr).view(np.uint16), bits)
            _release_mapped_pages(arr)
            return cls(bits, "bf16", compute)
        f32 = bf16_to_f32(arr) if kind == "bf16" else np.asarray(arr, dtype=np.float32)
        if target == "f32":
            return cls(np.ascontiguousarray(f32), "f32")
        if target == "f16":
            return cls(f32.astype(np.float16).view(np.uint16), "f16")
        return cls(f32_to_bf16(f32), "bf16", compute)
