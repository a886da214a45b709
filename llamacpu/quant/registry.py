"""The one table of quantized formats: built once at import, choosing per format the AVX512-VNNI kernels
where the CPU has them (`llamacpu.kernels.simd.HAS_AVX512_VNNI`, off with LLAMACPU_PORTABLE=1) and the
portable ones elsewhere.

    FORMATS["q4_k"].matvec(blocks, x, out)
    get_format("Q6_K"), get_format(GGMLQuantizationType.Q6_K)
    format_names()      the names, in table order (for help texts)
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType

from ..errors import UnsupportedError
from ..kernels.simd import HAS_AVX512_VNNI
from . import kernels
from .vnni import NO_OUT, NO_ROWS


@dataclass(frozen=True)
class QuantFormat:
    """One block format: its geometry, its ggml identity, and its four functions."""

    name: str  # "q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "int4_g128"
    block_size: int  # weights per block, consecutive along the input dimension
    type_size: int  # bytes per block
    ggml_type: object  # gguf.GGMLQuantizationType member, or None for our own formats
    quantize: Callable[[np.ndarray], np.ndarray]  # float32 [R, C] -> uint8 [R, C // block * type_size]
    dequantize: Callable[[np.ndarray, int], np.ndarray]  # (uint8 blocks [R, B], cols) -> float32 [R, C]
    matvec: Callable  # (blocks, x float32 [C], out float32 [R]): decode
    matmul: Callable  # (blocks, X float32 [n, C], out float32 [n, R]): batched decode and prefill
    # (blocks of 2-3 matrices, X [n <= DECODE_MAX_TOKENS, C], their outs): one call for matrices that share
    # their input (q/k/v, gate/up); None where the format has no such kernel (then one matmul each)
    fused: Callable | None = None
    # (blocks, X [n, C], out [n, R]) with each row's result independent of n (the serving engine's decode
    # rows and prompt rows: a sequence's numbers must not depend on its batch mates). None: `matmul`.
    decode_rows: Callable | None = None
    prompt_rows: Callable | None = None

    def bytes_per_row(self, cols: int) -> int:
        return cols // self.block_size * self.type_size

    def __repr__(self) -> str:
        return f"QuantFormat({self.name}: {self.block_size} weights in {self.type_size} bytes)"


def _vnni_kernels(module):
    """(matvec, matmul, fused) of a format with VNNI kernels: all three are its one kernel, matmul_vnni."""
    kernel = module.matmul_vnni

    def matvec(blocks, x, out):
        """out[r] = sum_c W[r, c] * x[c]."""
        kernel(blocks, NO_ROWS, NO_ROWS, x.reshape(1, -1), out.reshape(1, -1), NO_OUT, NO_OUT, False)

    def matmul(blocks, X, out):
        """out[t, r] = sum_c W[r, c] * X[t, c]: the decode path for up to DECODE_MAX_TOKENS tokens (each row
        read once for all of them: decode, batched decode), the prefill tile above."""
        kernel(blocks, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, X.shape[0] > kernels.DECODE_MAX_TOKENS)

    def fused(blocks, X, outs):
        """outs[i][t] = W_i @ X[t] for two or three matrices of this format sharing X (q/k/v, gate/up) and
        up to DECODE_MAX_TOKENS tokens: one launch, the activations prepared once."""
        if len(blocks) == 2:
            kernel(blocks[0], blocks[1], NO_ROWS, X, outs[0], outs[1], NO_OUT, False)
        else:
            kernel(blocks[0], blocks[1], blocks[2], X, outs[0], outs[1], outs[2], False)

    def decode_rows(blocks, X, out):
        """out[t] = W @ X[t] through the decode kernel for any n: each token's result is what it gets alone
        (dot4 gives four tokens bit for bit what four dots give)."""
        kernel(blocks, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, False)

    def prompt_rows(blocks, X, out):
        """out[t] = W @ X[t] through the prefill kernel for any n (one token too): each token's lane is
        computed alone, so its result does not depend on the others (tests/test_engine.py checks both)."""
        kernel(blocks, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, True)

    for f, kind in ((matvec, "matvec"), (matmul, "matmul"), (fused, "fused"), (decode_rows, "decode_rows"),
                    (prompt_rows, "prompt_rows")):
        f.__name__ = f.__qualname__ = f"{kind}_vnni_{module.NAME}"
    return matvec, matmul, fused, decode_rows, prompt_rows


def _portable_matmul(module):
    matvec, matmul = partial(kernels.matvec, module.ID), partial(kernels.matmul, module.ID)

    def portable_matmul(blocks, X, out):
        """out[t, r] = sum_c W[r, c] * X[t, c]: the fused matvec for one token; for more, each tile of
        rows is decoded once and multiplied by every token (batched decode reads the weights once)."""
        if X.shape[0] == 1:
            matvec(blocks, X[0], out[0])
        else:
            matmul(blocks, X, out)

    portable_matmul.__name__ = portable_matmul.__qualname__ = "matmul_" + module.NAME
    return portable_matmul


# The portable kernels of every format, whatever the CPU (tests compare both paths on this machine). Their
# batch-invariant rows, decode and prompt alike, are the tiled matmul's (a plain dot per token and row).
PORTABLE: dict[str, QuantFormat] = {
    m.NAME: QuantFormat(m.NAME, m.BLOCK, m.TYPE_SIZE, m.GGML_TYPE, m.quantize, m.dequantize,
                        partial(kernels.matvec, m.ID), _portable_matmul(m),
                        decode_rows=partial(kernels.matmul, m.ID), prompt_rows=partial(kernels.matmul, m.ID))
    for m in kernels.MODULES}
# The VNNI kernels (same results within their documented 16-bit activation bound), or none.
_FAST = {m.NAME: _vnni_kernels(m) for m in kernels.VNNI_MODULES} if HAS_AVX512_VNNI else {}
FAST_MATVEC = {name: k[0] for name, k in _FAST.items()}
FAST_MATMUL = {name: k[1] for name, k in _FAST.items()}
FAST_FUSED = {name: k[2] for name, k in _FAST.items()}

FORMATS: dict[str, QuantFormat] = {
    name: replace(f, matvec=FAST_MATVEC[name], matmul=FAST_MATMUL[name], fused=FAST_FUSED[name],
                  decode_rows=_FAST[name][3], prompt_rows=_FAST[name][4])
    if name in FAST_MATVEC else f
    for name, f in PORTABLE.items()}
_BY_GGML_TYPE = {f.ggml_type: f for f in FORMATS.values() if f.ggml_type is not None}


def format_names() -> tuple[str, ...]:
    """The names of the quantized formats, in table order (e.g. for a command line's help)."""
    return tuple(FORMATS)


def get_format(key) -> QuantFormat:
    """The format named `key` ("q8_0", ...), or the one of a ggml type (GGMLQuantizationType or its int).

    UnsupportedError for anything else, naming what is supported (e.g. a GGUF tensor in Q5_K)."""
    if isinstance(key, QuantFormat):
        return key
    if isinstance(key, str):
        fmt = FORMATS.get(key.lower())
        if fmt is None:
            raise UnsupportedError(f"unknown quantization format {key!r}; known: {', '.join(FORMATS)}")
        return fmt
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        try:
            ggml_type = GGMLQuantizationType(int(key))
        except ValueError:
            raise UnsupportedError(f"unknown ggml tensor type {int(key)}") from None
        fmt = _BY_GGML_TYPE.get(ggml_type)
        if fmt is None:
            known = ", ".join(t.name for t in _BY_GGML_TYPE)
            raise UnsupportedError(f"ggml tensor type {ggml_type.name} is not supported as a quantized "
                                   f"format; supported: {known}")
        return fmt
    raise UnsupportedError(f"expected a format name or a ggml type, got {key!r}")


def quantize(name, w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // block_size * type_size] in format `name`."""
    return get_format(name).quantize(w)


def dequantize(name, blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // block_size * type_size] in format `name` -> float32 [R, C]."""
    return get_format(name).dequantize(blocks, cols)
