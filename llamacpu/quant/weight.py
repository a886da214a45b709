"""`QuantizedWeight`: one matrix stored in a quantized block format, the `Weight` the model calls.

Kernels never dequantize the whole matrix: matvec streams each row once and multiplies as it decodes;
matmul decodes a tile of rows (or repacks 16 rows for the VNNI prefill) and reuses it for all n tokens.
"""
from __future__ import annotations

import numpy as np

from ..errors import CheckpointError, InputError
from ..model.weights import (Weight, _populate_mapped_pages, check_operand as _check_operand, check_row_ids,
                             empty_populated)
from .common import as_matrix
from .vnni import NO_OUT as _NO_OUT, NO_ROWS as _NO_ROWS
from . import interleaved, kernels
from .registry import QuantFormat, get_format


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
        fmt = get_format(fmt_name)
        w = as_matrix(w, fmt.block_size, fmt.name)
        return cls(fmt, fmt.quantize(w), w.shape)

    @classmethod
    def from_blocks(cls, fmt_name, blocks: np.ndarray, shape) -> "QuantizedWeight":
        """Wrap stored blocks (e.g. a GGUF tensor's bytes). CheckpointError unless `blocks` is uint8
        holding exactly rows * cols // block_size * type_size bytes, as [rows, bytes_per_row] or flat."""
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

    def matmul_decode(self, x: np.ndarray, out: np.ndarray) -> None:
        """Weight.matmul_decode: the decode kernel for any n (registry.QuantFormat.decode_rows)."""
        self._rows(self.format.decode_rows, x, out)

    def matmul_prompt(self, x: np.ndarray, out: np.ndarray) -> None:
        """Weight.matmul_prompt: the prefill kernel for any n (registry.QuantFormat.prompt_rows)."""
        self._rows(self.format.prompt_rows, x, out)

    def _rows(self, kernel, x, out):
        rows, cols = self.shape
        n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim == 2 else -1
        _check_operand("x", x, (n, cols))
        _check_operand("out", out, (n, rows), writable=True)
        if n:
            self._run(kernel, x, out)

    def _run(self, kernel, x, out):
        """out = x @ W.T through `kernel` (None: the format's matmul) on checked operands."""
        (kernel or self.format.matmul)(self.blocks, x, out)

    @staticmethod
    def matmul_shared(weights, x: np.ndarray, outs, any_rows: bool = False) -> bool:
        """outs[i] = x @ weights[i].T in ONE kernel call for two or three matrices that share their input
        (q/k/v, gate/up): the activations are prepared once and one launch covers all their rows. Only
        where they can share a kernel: same format with a fused kernel, same width, a decode-sized x
        (at most DECODE_MAX_TOKENS rows, any number with `any_rows`: the engine's decode rows, each the same
        as matmul_decode gives it). Returns False, having written nothing, otherwise: the caller
        then runs one matmul per matrix (e.g. a Q4_K_M layer whose v is Q6_K)."""
        first = weights[0]
        fused = getattr(first.format, "fused", None) if isinstance(first, QuantizedWeight) else None
        if (fused is None or not 2 <= len(weights) <= 3 or len(outs) != len(weights) or not isinstance(x, np.ndarray)
                or x.ndim != 2 or not 1 <= x.shape[0] <= (1 << 62 if any_rows else kernels.DECODE_MAX_TOKENS)):
            return False
        cols = first.shape[1]
        if any(not isinstance(w, QuantizedWeight) or w.format is not first.format or w.shape[1] != cols
               for w in weights):
            return False
        n = x.shape[0]
        _check_operand("x", x, (n, cols))
        for w, out in zip(weights, outs):
            _check_operand("out", out, (n, w.shape[0]), writable=True)
        fused(tuple(w.blocks for w in weights), x, tuple(outs))
        return True

    def rows(self, ids) -> np.ndarray:
        ids = check_row_ids(ids, self.shape[0])
        return self.format.dequantize(self._row_blocks(ids), self.shape[1])

    def _row_blocks(self, ids: np.ndarray) -> np.ndarray:
        """The blocks of rows `ids` (valid indices), in ggml's layout."""
        return self.blocks[ids]

    def dequantize(self) -> np.ndarray:
        return self.format.dequantize(self.blocks, self.shape[1])


class InterleavedWeight(QuantizedWeight):
    """A matrix in one of interleaved.FORMATS (Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, Q4_K, Q5_K, Q6_K, IQ4_XS)
    whose blocks were interleaved by 16 rows at load (`interleaved.py`): the CPU backend makes these where the
    VNNI kernels run. Same bytes as the blocks, permuted; one kernel for decode, batched decode and prefill,
    so each row's result never depends on how many tokens share a call. `blocks` gives ggml's row order back
    (a copy: writers, other backends); `packed` is what runs."""

    def __init__(self, source: QuantizedWeight):
        # Trusted: the CPU backend checks the format and the shape (interleaved.eligible).
        self.format, self.shape, self.dtype = source.format, source.shape, source.dtype
        packed = empty_populated(source.blocks.size, np.uint8).reshape(source.blocks.shape)
        _populate_mapped_pages(source.blocks)
        interleaved.pack(source.blocks, packed, self.shape[1], self.format.name)
        self.packed = _readonly(packed)
        self.kernel = interleaved.KERNELS[self.format.name]

    @property
    def blocks(self) -> np.ndarray:
        return interleaved.unpack(self.packed, self.shape[1], self.format.name)

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes)

    def _run(self, kernel, x, out):
        self.kernel(self.packed, _NO_ROWS, _NO_ROWS, x, out, _NO_OUT, _NO_OUT, False)  # one kernel for every n

    def matvec(self, x, out):
        rows, cols = self.shape
        _check_operand("x", x, (cols,))
        _check_operand("out", out, (rows,), writable=True)
        self._run(None, x.reshape(1, cols), out.reshape(1, rows))

    def matmul(self, x, out):
        self._rows(None, x, out)

    @staticmethod
    def matmul_shared(weights, x, outs, any_rows: bool = False) -> bool:
        """As QuantizedWeight.matmul_shared, for two or three interleaved matrices of one format and width: one launch
        for any number of tokens (`any_rows` changes nothing: the kernel is the same for every n)."""
        if (not 2 <= len(weights) <= 3 or len(outs) != len(weights) or not isinstance(x, np.ndarray)
                or x.ndim != 2 or x.shape[0] < 1):
            return False
        cols = weights[0].shape[1]
        if any(not isinstance(w, InterleavedWeight) or w.shape[1] != cols or w.kernel is not weights[0].kernel
               for w in weights):
            return False
        n = x.shape[0]
        _check_operand("x", x, (n, cols))
        for w, out in zip(weights, outs):
            _check_operand("out", out, (n, w.shape[0]), writable=True)
        packed = [w.packed for w in weights] + [_NO_ROWS]
        o = list(outs) + [_NO_OUT]
        weights[0].kernel(packed[0], packed[1], packed[2], x, o[0], o[1], o[2], False)
        return True

    def _row_blocks(self, ids):
        return interleaved.unpack_rows(self.packed, ids, self.shape[1], self.format.name)
