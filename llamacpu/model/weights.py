"""Weight matrices as the model sees them: `y = x @ W.T` for W of shape [out_features, in_features].

The forward pass never looks inside a weight; it calls the four methods below. Each storage format
(F32, F16, BF16 here; the quantized block formats in `llamacpu.quant`) is one subclass whose methods
call that format's Numba kernels. Storage stays as loaded (often a memory map of the checkpoint) or is
permuted once at load for the CPU's kernels (`InterleavedDenseWeight`, the quantized `InterleavedWeight`):
we never dequantize or widen a whole matrix in the decode path.
"""
from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

from ..errors import InputError
from ..checkpoint.safetensors_mmap import bf16_to_f32, f32_to_bf16
from ..kernels import bf16, dense
from ..kernels.dense import matmul_tiled
from ..kernels.halfbits import f16_to_bf16_rows
from ..kernels.simd import HAS_AVX512_BF16


def _mapped_range(arr: np.ndarray):
    """(mmap, offset, length) of the whole pages of `arr` when it is a view into a file mapping (the
    checkpoint), else None."""
    base = arr
    while getattr(base, "base", None) is not None and not isinstance(base, memoryview):
        base = base.base
    mm = getattr(base, "obj", None) if isinstance(base, memoryview) else None
    if not isinstance(mm, mmap.mmap):
        return None
    start = arr.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8).ctypes.data
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the array only
    last = (start + arr.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
    return (mm, first, last - first) if 0 <= first < last <= len(mm) else None


def _release_mapped_pages(arr: np.ndarray) -> None:
    """Drop the pages of `arr` from this process's resident set when it is a view into a read-only
    file mapping (the checkpoint) that was just converted: they stay in the page cache and fault back
    in if read again, but the source and the converted copy are no longer both counted (peak RSS of an
    F16 model loaded as bf16: 2x the weights without this)."""
    r = _mapped_range(arr)
    if r is not None and hasattr(mmap, "MADV_DONTNEED"):
        r[0].madvise(mmap.MADV_DONTNEED, r[1], r[2])


MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23  # Linux >= 5.14; Python's mmap module does not name them


def _populate_mapped_pages(arr: np.ndarray) -> None:
    """Map the pages of `arr` (a view into the checkpoint's file mapping) in one system call before a kernel
    reads all of it once (a repack at load): first-touch faults, one per 4 KiB page, made packing an F16
    TinyLlama take 3.2 s instead of 0.7. Best effort: older kernels and other systems just fault."""
    r = _mapped_range(arr)
    if r is not None:
        try:
            r[0].madvise(MADV_POPULATE_READ, r[1], r[2])
        except (OSError, ValueError):
            pass


def _libc_madvise():
    try:
        f = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):  # no C library to ask (Windows)
        return None
    f.argtypes, f.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return f


_madvise = _libc_madvise() if sys.platform.startswith("linux") else None


def empty_populated(n: int, dtype) -> np.ndarray:
    """np.empty(n, dtype) (NumPy advises transparent huge pages for it), its pages faulted in by one system call
    before a repack writes it whole: on this VM first-touch faults wrote fresh memory at 0.4-0.7 GB/s, 2-10 GB/s
    populated (bench/README.md "F16 and BF16 interleaved"). Best effort, as np.empty elsewhere."""
    a = np.empty(n, dtype)
    if _madvise is not None and a.nbytes >= 1 << 21:
        start = -(-a.ctypes.data // mmap.PAGESIZE) * mmap.PAGESIZE
        end = (a.ctypes.data + a.nbytes) // mmap.PAGESIZE * mmap.PAGESIZE
        _madvise(start, end - start, MADV_POPULATE_WRITE)  # an error (an older kernel) leaves it to the faults
    return a


def check_operand(name: str, a, shape: tuple, writable: bool = False) -> None:
    """InputError unless `a` is a C-contiguous float32 array of `shape` (kernels do not bounds-check)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
        raise InputError(f"{name} must be float32 {list(shape)}, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if not a.flags.c_contiguous:
        raise InputError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise InputError(f"{name} must be writable")


def check_row_ids(ids, rows: int) -> np.ndarray:
    """ids as intp, InputError unless a 1-D integer array of row indices in [0, rows)."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise InputError(f"row ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= rows):
        raise InputError(f"row ids must lie in [0, {rows}), got {ids.min()}..{ids.max()}")
    return ids.astype(np.intp)


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

    def dequantize(self):  # converted straight from the (mapped) data: a gather of every row copied it first
        if self.dtype == "f32":
            return np.array(self.data, dtype=np.float32)
        if self.dtype == "f16":
            return self.data.view(np.float16).astype(np.float32)
        return (self.data.astype(np.uint32) << 16).view(np.float32)

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


# "no matrix" / "no output" for matmul16_shared's absent operands (the types quant/vnni.py's NO_ROWS, NO_OUT have)
_NO_MATRIX = np.empty((0, 64), np.uint8)
_NO_MATRIX.flags.writeable = False
_NO_OUT = np.empty((0, 0), np.float32)


class InterleavedDenseWeight(DenseWeight):
    """An F16 or BF16 matrix interleaved by 16 rows at load (kernels/dense.py, "interleaved by 16 rows"): the
    CPU backend makes these. Same values, permuted into NumPy's memory. Float32 compute: one kernel for decode,
    batched decode and prefill, so each row's result never depends on how many tokens share a call. bf16
    compute (dtype="bfloat16"): the pairs layout, the same float32 kernel (and bits) for decode and the
    serving engine's rows, and `vdpbf16ps` for the prefill of `matmul` where the CPU has AVX512-BF16.
    `packed` is what runs; `data` gives the stored row order back (a copy: writers, other backends)."""

    # by (dtype, layout): the float32 kernel, and its form for matrices sharing an input (the decode step's)
    KERNELS = {("f16", "columns"): dense.matmul16_f16, ("bf16", "columns"): dense.matmul16_bf16,
               ("bf16", "pairs"): dense.matmul16_bf16_pairs}
    SHARED = {("f16", "columns"): dense.matmul16_shared_f16, ("bf16", "columns"): dense.matmul16_shared_bf16,
              ("bf16", "pairs"): dense.matmul16_shared_bf16_pairs}

    @staticmethod
    def layout_of(w) -> str:
        return "pairs" if w.compute == "bf16" else "columns"

    @classmethod
    def eligible(cls, w) -> bool:
        """Whether the CPU backend interleaves `w`: a plain F16/BF16 DenseWeight, rows % 16 == 0, cols % 4 == 0."""
        rows, cols = w.shape
        return (type(w) is DenseWeight and (w.dtype, cls.layout_of(w)) in cls.KERNELS and rows > 0
                and rows % dense.GROUP == 0 and cols > 0 and cols % dense.SPLIT == 0)

    def __init__(self, source: DenseWeight):
        # Trusted: the CPU backend checks `eligible` first.
        self.shape, self.dtype, self.compute = source.shape, source.dtype, source.compute
        self.layout = self.layout_of(source)
        packed = empty_populated(source.data.size, np.uint16)
        _populate_mapped_pages(source.data)
        dense.interleave16(source.data, packed, self.layout == "pairs")
        packed.flags.writeable = False
        self.packed = packed
        self.key = (self.dtype, self.layout)
        self._kernel = self.KERNELS[self.key]

    @property
    def data(self) -> np.ndarray:
        return dense.deinterleave16(self.packed, *self.shape, self.layout == "pairs")

    @property
    def packed_bytes(self) -> np.ndarray:
        """`packed` as uint8 [rows, 2 * cols] (a view): what matmul16_shared and the compiled decode step take."""
        return self.packed.view(np.uint8).reshape(self.shape[0], 2 * self.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def matvec(self, x, out):
        rows, cols = self.shape
        check_operand("x", x, (cols,))
        check_operand("out", out, (rows,), writable=True)
        self._kernel(self.packed, x, rows, cols, 1, out)

    def _checked(self, x, out):
        """(n, a C-contiguous float32 [n, rows] to write: `out` itself or a scratch) on checked operands."""
        rows, cols = self.shape
        n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim == 2 else -1
        check_operand("x", x, (n, cols))
        if not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (n, rows)
                and out.flags.writeable):
            check_operand("out", out, (n, rows), writable=True)  # raises: says what is wrong
        # the kernels write the flat output: a strided `out` (a column slice) gets a contiguous scratch
        return n, (out if out.flags.c_contiguous else np.empty(out.shape, np.float32))

    def matmul_decode(self, x, out):
        """The float32 kernel for any n: each row the bits matvec gives it."""
        self._product(x, out, vdpbf16ps=False)

    matmul_prompt = matmul_decode  # float32 compute: the same kernel; bf16 compute: the per-row invariant one

    def matmul(self, x, out):
        """bf16 compute with several rows: vdpbf16ps on x rounded to bf16 (where the CPU has it); else matmul_decode."""
        self._product(x, out, vdpbf16ps=self.layout == "pairs" and HAS_AVX512_BF16)

    def _product(self, x, out, vdpbf16ps: bool):
        n, flat = self._checked(x, out)
        if n == 0:
            return
        if vdpbf16ps and n > 1:
            xb = np.empty(x.size, np.uint16)
            bf16.round_to_bf16(x.reshape(-1), xb)
            bf16.matmul16_pairs_bf16(self.packed, xb, self.shape[0], self.shape[1], n, flat.reshape(-1))
        else:
            self._kernel(self.packed, x.reshape(-1), self.shape[0], self.shape[1], n, flat.reshape(-1))
        if flat is not out:
            out[...] = flat

    @staticmethod
    def matmul_shared(weights, x, outs, any_rows: bool = False) -> bool:
        """outs[i] = x @ weights[i].T in ONE launch for two or three interleaved matrices of one dtype, layout
        and width that share their input (q/k/v, gate/up), each output the bits matmul_decode gives it.
        False, having written nothing, where they cannot share it, and for the prefill of bf16 compute
        (several rows, not `any_rows`: one `vdpbf16ps` matmul each instead)."""
        first = weights[0]
        if (not 2 <= len(weights) <= 3 or len(outs) != len(weights) or not isinstance(x, np.ndarray)
                or x.ndim != 2 or x.shape[0] < 1):
            return False
        if any(type(w) is not InterleavedDenseWeight or w.key != first.key or w.shape[1] != first.shape[1]
               for w in weights) or not all(isinstance(o, np.ndarray) and o.flags.c_contiguous for o in outs):
            return False  # (a strided output: one matmul each, which handles it)
        if first.layout == "pairs" and x.shape[0] > 1 and not any_rows and HAS_AVX512_BF16:
            return False
        n = x.shape[0]
        check_operand("x", x, (n, first.shape[1]))
        for w, out in zip(weights, outs):
            check_operand("out", out, (n, w.shape[0]), writable=True)
        m = [w.packed_bytes for w in weights] + [_NO_MATRIX] * (3 - len(weights))
        o = list(outs) + [_NO_OUT] * (3 - len(outs))
        first.SHARED[first.key](m[0], m[1], m[2], x, o[0], o[1], o[2], False)
        return True

    def rows(self, ids):
        ids = check_row_ids(ids, self.shape[0])
        rows, cols = self.shape
        if self.layout == "pairs":
            grid = self.packed.reshape(rows // dense.GROUP, cols // 2, dense.GROUP, 2)
            r = grid[ids // dense.GROUP, :, ids % dense.GROUP].reshape(len(ids), cols)
        else:
            r = self.packed.reshape(rows // dense.GROUP, cols, dense.GROUP)[ids // dense.GROUP, :, ids % dense.GROUP]
        if self.dtype == "f16":
            return r.view(np.float16).astype(np.float32)
        return (r.astype(np.uint32) << 16).view(np.float32)
