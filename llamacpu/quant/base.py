"""What every quantized block format shares: its description (`QuantFormat`), the `Weight` that holds
one quantized matrix (`QuantizedWeight`), and small helpers for the NumPy references and Numba kernels.

A quantized matrix W [rows, cols] is stored row by row: each row is cols // block_size blocks of
type_size bytes, one block per block_size consecutive input features. The blocks array is therefore
uint8 [rows, cols // block_size * type_size], exactly the bytes of a GGUF tensor of that type (ggml
stores a matrix as ne = (cols, rows), rows contiguous). Each format module (`q8_0`, `q4_0`, ...)
documents its block layout once and supplies:

    quantize(w: float32 [R, C]) -> uint8 [R, C // block * type_size]    NumPy reference
    dequantize(blocks, cols) -> float32 [R, C]                           NumPy reference
    matvec_<fmt>(blocks, x, out)    Numba, decode:  out[R]    = W @ x,   x float32 [C]
    matmul_<fmt>(blocks, X, out)    Numba, prefill: out[n, R] = X @ W.T, X float32 [n, C]
    matvec_ref / matmul_ref         the same products through `dequantize`, for tests

Kernels never dequantize the whole matrix: matvec streams each row once and multiplies as it decodes;
matmul decodes a tile of rows into a per-thread buffer and reuses it for all n tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

from ..errors import CheckpointError, InputError
from ..kernels.halfbits import f16_to_f32
from ..model.weights import Weight

# Fast-math flags of the quantized kernels: `contract` lets LLVM fuse multiply-adds, `reassoc` lets
# it vectorize the dot products of matmul. No `nnan`/`ninf`: a NaN in the weights or activations
# must still come out as NaN.
FASTMATH = {"contract", "reassoc", "nsz"}

# Rows of W that one matmul task decodes at once (float32 [MATMUL_TILE, C] per thread: 360 KB for
# C = 5632, inside the 1 MB L2 of a Zen 4 core), then multiplies by every token.
MATMUL_TILE = 16


@dataclass(frozen=True)
class QuantFormat:
    """One block format: its geometry, its ggml identity, and its four functions."""

    name: str  # "q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "int4_g128"
    block_size: int  # weights per block, consecutive along the input dimension
    type_size: int  # bytes per block
    ggml_type: object  # gguf.GGMLQuantizationType member, or None for our own formats
    quantize: Callable[[np.ndarray], np.ndarray]  # float32 [R, C] -> uint8 [R, C // block * type_size]
    dequantize: Callable[[np.ndarray, int], np.ndarray]  # (uint8 blocks [R, B], cols) -> float32 [R, C]
    matvec: Callable  # Numba kernel (blocks, x [C], out [R])
    matmul: Callable  # Numba kernel (blocks, X [n, C], out [n, R])

    def bytes_per_row(self, cols: int) -> int:
        return cols // self.block_size * self.type_size

    def __repr__(self) -> str:
        return f"QuantFormat({self.name}: {self.block_size} weights in {self.type_size} bytes)"


# ---------------------------------------------------------------------------------------------
# NumPy helpers shared by the reference quantizers / dequantizers
# ---------------------------------------------------------------------------------------------

def as_matrix(w: np.ndarray, block_size: int, fmt_name: str) -> np.ndarray:
    """float32 C-contiguous [R, C] copy-free where possible; InputError unless C % block_size == 0."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise InputError(f"{fmt_name}: expected a 2-D weight matrix [rows, cols], got shape {w.shape}")
    rows, cols = w.shape
    if cols == 0 or cols % block_size:
        raise InputError(
            f"{fmt_name}: the number of columns ({cols}) must be a positive multiple of the block size "
            f"{block_size}")
    w = np.ascontiguousarray(w, dtype=np.float32)
    if not np.isfinite(w).all():
        raise InputError(f"{fmt_name}: the weights contain NaN or infinity")
    return w


def as_blocks(blocks: np.ndarray, cols: int, block_size: int, type_size: int, fmt_name: str) -> np.ndarray:
    """uint8 blocks [R, bytes_per_row] viewed as [R, C // block_size, type_size] (checks the shape)."""
    blocks = np.asarray(blocks)
    nb = cols // block_size
    if blocks.dtype != np.uint8 or blocks.ndim != 2 or cols % block_size or blocks.shape[1] != nb * type_size:
        raise InputError(
            f"{fmt_name}: expected uint8 blocks [rows, {nb * type_size}] for {cols} columns, got "
            f"{blocks.dtype} {blocks.shape}")
    return blocks.reshape(blocks.shape[0], nb, type_size)


def f16_field(blocks3: np.ndarray, offset: int) -> np.ndarray:
    """The little-endian fp16 at byte `offset` of every block, as float32 [R, nb] (exact)."""
    lo = blocks3[..., offset].astype(np.uint16)
    hi = blocks3[..., offset + 1].astype(np.uint16)
    return (lo | (hi << np.uint16(8))).view(np.float16).astype(np.float32)


def f16_bytes(values: np.ndarray) -> np.ndarray:
    """float32 [...] -> its fp16 (round to nearest even, as ggml's GGML_FP32_TO_FP16) bytes uint8 [..., 2]."""
    half = np.ascontiguousarray(values, dtype=np.float32).astype("<f2")
    return half.view(np.uint8).reshape(*values.shape, 2)


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf (ties away from zero), exactly, in float32. (np.rint rounds ties to even, and
    trunc(v + 0.5) is wrong for 0.49999997, whose sum with 0.5 rounds up to 1.)"""
    a = np.abs(v)
    f = np.floor(a)
    return np.copysign(f + (a - f >= np.float32(0.5)), v)


def checked_f16(values: np.ndarray, fmt_name: str, what: str) -> np.ndarray:
    """values rounded to fp16 (as float32); InputError where fp16 cannot hold them."""
    half = values.astype(np.float16)
    if not np.isfinite(half).all():
        raise InputError(f"{fmt_name}: a block {what} overflows fp16 (weights too large, |w| up to "
                         f"{float(np.max(np.abs(values))):.3g})")
    return half.astype(np.float32)


def row_chunks(rows: int, cols: int, elements: int = 1 << 18):
    """Row ranges of about `elements` weights: the vectorized searches work on L2-sized pieces."""
    step = max(1, elements // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


# ---------------------------------------------------------------------------------------------
# Numba helpers (kernels in other files inline these: a change here does not invalidate their
# on-disk cache, so clear __pycache__ after editing one)
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def f16_at(row, o):
    """The little-endian fp16 at byte o of a uint8 array, as float32."""
    return f16_to_f32(np.uint16(np.int32(row[o]) | (np.int32(row[o + 1]) << 8)))


@njit(inline="always")
def group_sums(x, group):
    """float32 [len(x) // group]: sums of x over consecutive groups (the `min` terms of asymmetric
    formats multiply these, once per block, instead of every weight)."""
    ng = x.shape[0] // group
    sums = np.empty(ng, np.float32)
    for g in range(ng):
        xs = x[g * group: g * group + group]
        s = np.float32(0.0)
        for j in range(group):
            s += xs[j]
        sums[g] = s
    return sums


# ---------------------------------------------------------------------------------------------
# The Weight
# ---------------------------------------------------------------------------------------------

def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view (one Numba signature for memmaps and fresh arrays alike)."""
    v = np.ascontiguousarray(a).view(np.ndarray)
    v.flags.writeable = False
    return v


class QuantizedWeight(Weight):
    """A weight matrix [out_features, in_features] stored in a quantized block format.

    blocks: uint8 [out_features, in_features // block_size * type_size], read-only (often a slice of
    the checkpoint's memory map: never written to).
    """

    def __init__(self, fmt: QuantFormat, blocks: np.ndarray, shape: tuple[int, int]):
        # Trusted constructor: use `from_blocks` (validates) or `quantize`.
        self.format = fmt
        self.blocks = _readonly(blocks)
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = fmt.name

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def quantize(cls, fmt_name: str, w: np.ndarray) -> "QuantizedWeight":
        """Quantize a float matrix [out_features, in_features] with the format's NumPy reference."""
        from . import get_format

        fmt = get_format(fmt_name)
        w = as_matrix(w, fmt.block_size, fmt.name)
        return cls(fmt, fmt.quantize(w), w.shape)

    @classmethod
    def from_blocks(cls, fmt_name, blocks: np.ndarray, shape) -> "QuantizedWeight":
        """Wrap stored blocks (e.g. a GGUF tensor's bytes). CheckpointError unless `blocks` is uint8
        holding exactly rows * cols // block_size * type_size bytes, as [rows, bytes_per_row] or flat."""
        from . import get_format

        fmt = get_format(fmt_name)
        try:
            rows, cols = (int(s) for s in shape)
        except (TypeError, ValueError):
            raise CheckpointError(f"{fmt.name}: shape must be (rows, cols), got {shape!r}") from None
        if rows <= 0 or cols <= 0 or cols % fmt.block_size:
            raise CheckpointError(
                f"{fmt.name}: shape {rows}x{cols} is not a matrix whose rows are whole {fmt.block_size}-weight "
                f"blocks (cols must be a positive multiple of {fmt.block_size})")
        if not isinstance(blocks, np.ndarray):
            raise CheckpointError(f"{fmt.name}: blocks must be a NumPy uint8 array, got {type(blocks).__name__}")
        if blocks.dtype != np.uint8:
            raise CheckpointError(f"{fmt.name}: blocks must be uint8 bytes, got dtype {blocks.dtype}")
        bpr = fmt.bytes_per_row(cols)
        if blocks.size != rows * bpr:
            raise CheckpointError(
                f"{fmt.name}: a {rows}x{cols} matrix takes {rows * bpr} bytes ({rows} rows of {bpr}), "
                f"got {blocks.size} bytes (shape {blocks.shape})")
        if blocks.ndim == 1:
            blocks = blocks.reshape(rows, bpr)
        elif blocks.shape != (rows, bpr):
            raise CheckpointError(
                f"{fmt.name}: blocks of a {rows}x{cols} matrix must be [{rows}, {bpr}], got {blocks.shape}")
        return cls(fmt, blocks, (rows, cols))

    # -- the Weight protocol -----------------------------------------------------------------

    @property
    def nbytes(self) -> int:
        return int(self.blocks.nbytes)

    def matvec(self, x: np.ndarray, out: np.ndarray) -> None:
        rows, cols = self.shape
        _check_operand("x", x, (cols,))
        _check_operand("out", out, (rows,), writable=True)
        self.format.matvec(self.blocks, x, out)

    def matmul(self, x: np.ndarray, out: np.ndarray) -> None:
        rows, cols = self.shape
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise InputError(f"x must be float32 [n, {cols}], got {getattr(x, 'shape', type(x))}")
        n = x.shape[0]
        _check_operand("x", x, (n, cols))
        _check_operand("out", out, (n, rows), writable=True)
        if n:
            self.format.matmul(self.blocks, x, out)

    def rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
            raise InputError(f"row ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.shape[0]):
            raise InputError(f"row ids must lie in [0, {self.shape[0]}), got {ids.min()}..{ids.max()}")
        return self.format.dequantize(self.blocks[ids.astype(np.intp)], self.shape[1])

    def dequantize(self) -> np.ndarray:
        return self.format.dequantize(self.blocks, self.shape[1])


def _check_operand(name: str, a, shape: tuple, writable: bool = False) -> None:
    """InputError unless `a` is a C-contiguous float32 array of `shape` (kernels do not bounds-check)."""
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.shape != shape:
        raise InputError(f"{name} must be float32 {list(shape)}, got "
                         f"{getattr(a, 'dtype', type(a).__name__)} {getattr(a, 'shape', '')}")
    if not a.flags.c_contiguous:
        raise InputError(f"{name} must be C-contiguous")
    if writable and not a.flags.writeable:
        raise InputError(f"{name} must be writable")
