"""What every quantized block format uses: the NumPy helpers of the reference quantizers and
dequantizers, and the small Numba helpers of the decoders.

A quantized matrix W [rows, cols] is stored row by row: each row is cols // block_size blocks of
type_size bytes, one block per block_size consecutive input features. The blocks array is therefore
uint8 [rows, cols // block_size * type_size], exactly the bytes of a GGUF tensor of that type (ggml
stores a matrix as ne = (cols, rows), rows contiguous).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit

from ..errors import InputError
from ..kernels.halfbits import f16_to_f32

# IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl), indexed by 4-bit codes
KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)

# Fast-math flags of the quantized kernels: `contract` lets LLVM fuse multiply-adds, `reassoc` lets
# it vectorize the dot products of matmul. No `nnan`/`ninf`: a NaN in the weights or activations
# must still come out as NaN.
FASTMATH = {"contract", "reassoc", "nsz"}


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


def row_chunks(rows: int, cols: int, elements: int = 1 << 18):
    """Row ranges of about `elements` weights: the vectorized searches work on L2-sized pieces."""
    step = max(1, elements // max(cols, 1))
    for r0 in range(0, rows, step):
        yield r0, min(rows, r0 + step)


# ---------------------------------------------------------------------------------------------
# Numba helpers (kernels in other files inline these; `llamacpu.kernels.cachekey` keys every cached
# kernel on the sources of llamacpu/quant and llamacpu/kernels, so an edit here recompiles them)
# ---------------------------------------------------------------------------------------------

@njit(inline="always")
def f16_at(row, o):
    """The little-endian fp16 at byte o of a uint8 array, as float32."""
    return f16_to_f32(np.uint16(np.int32(row[o]) | (np.int32(row[o + 1]) << 8)))


@njit(inline="always")
def put(dst, j, v, xb, dot):
    """The sink of every block decoder: dst[j] = v (decode), or dst[j] += v * xb[j] (dot with x).
    `dot` is a constant at every call site, so each decoder is written once and compiled into both a
    dequantizer (prefill tiles, tails) and a fused matvec (no buffer between decoding and multiplying)."""
    if dot:
        dst[j] += v * xb[j]
    else:
        dst[j] = v


@njit(inline="always")
def put_nibbles(qs, dlo, mlo, dhi, mhi, dst, xb, dot):
    """Bytes of two 4-bit levels each: dst[j] = dlo * (qs[j] & 15) + mlo and dst[h + j] = dhi * (qs[j] >> 4)
    + mhi for j < h = len(qs) (or += those times xb[j], xb[h + j]: see put). The nibble layout of Q4_0,
    Q4_1, int4_g128 (one scale for both halves) and of each 32-byte chunk of Q4_K (one per half)."""
    h = qs.shape[0]
    lo, hi, xlo, xhi = dst[:h], dst[h:], xb[:h], xb[h:]
    for j in range(h):
        v = np.int32(qs[j])
        put(lo, j, dlo * np.float32(v & 15) + mlo, xlo, dot)
        put(hi, j, dhi * np.float32(v >> 4) + mhi, xhi, dot)


@njit(inline="always")
def put_nibbles5(qs, qh, d, m, dst, xb, dot):
    """put_nibbles with a fifth bit per level (Q5_0, Q5_1): bit j of qh (the block's little-endian uint32,
    as int64) is bit 4 of element j; dst[j] = d * q + m."""
    h = qs.shape[0]
    for j in range(h):
        v = np.int32(qs[j])
        put(dst, j, d * np.float32((v & 15) | np.int32(((qh >> j) & 1) << 4)) + m, xb, dot)
        put(dst, h + j, d * np.float32((v >> 4) | np.int32(((qh >> (j + 16)) & 1) << 4)) + m, xb, dot)


@njit(inline="always")
def u32_at(row, o):
    """The little-endian uint32 at byte o of a uint8 array, as int64."""
    return (np.int64(row[o]) | (np.int64(row[o + 1]) << 8) | (np.int64(row[o + 2]) << 16)
            | (np.int64(row[o + 3]) << 24))


def symmetric_levels(w: np.ndarray, block: int, name: str, half: int):
    """ggml's quantize_row_q4_0_ref (half 8) and q5_0 (half 16) up to the packing: d = max / -half, max the
    element of largest magnitude (the first on ties), q = min(2 half - 1, trunc(x / d + half + 0.5)).
    Returns (d float32 [R, nb], q uint8 [R, nb, block])."""
    w = as_matrix(w, block, name)
    x = w.reshape(w.shape[0], -1, block)
    big = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
    d = big / np.float32(-half)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    return d, np.minimum(np.trunc(x * inv[..., None] + np.float32(half + 0.5)), 2 * half - 1).astype(np.uint8)


def affine_levels(w: np.ndarray, block: int, name: str, top: int):
    """ggml's quantize_row_q4_1_ref (top 15) and q5_1 (top 31) up to the packing: d = (max - min) / top,
    q = min(top, trunc((x - min) / d + 0.5)). Returns (d, min float32 [R, nb], q uint8 [R, nb, block])."""
    w = as_matrix(w, block, name)
    x = w.reshape(w.shape[0], -1, block)
    lo = x.min(axis=-1)
    d = (x.max(axis=-1) - lo) / np.float32(top)
    inv = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    return d, lo, np.minimum(np.trunc((x - lo[..., None]) * inv[..., None] + np.float32(0.5)), top).astype(np.uint8)


def dequantize_affine_nibbles(blocks: np.ndarray, cols: int, block: int, type_size: int, name: str) -> np.ndarray:
    """NumPy dequantize of the layout Q4_1 and int4_g128 share: fp16 scale d at byte 0, fp16 minimum m at 2,
    then block / 2 bytes of nibbles (low nibbles are the first half of the block); value = q * d + m."""
    b = as_blocks(blocks, cols, block, type_size, name)
    d = f16_field(b, 0)
    m = f16_field(b, 2)
    qs = b[..., 4:]
    q = np.concatenate([qs & np.uint8(0xF), qs >> np.uint8(4)], axis=-1).astype(np.float32)
    return (d[..., None] * q + m[..., None]).reshape(b.shape[0], cols)


def quantize_rows(w: np.ndarray, block: int, type_size: int, name: str, quantize_blocks) -> np.ndarray:
    """float32 [R, C] -> uint8 [R, C // block * type_size] by `quantize_blocks` (float32 [N, block] ->
    uint8 [N, type_size]), on L2-sized pieces of rows (the searches of the K-quants are vectorized)."""
    w = as_matrix(w, block, name)
    rows, cols = w.shape
    out = np.empty((rows, cols // block * type_size), np.uint8)

    def piece(r):
        r0, r1 = r
        out[r0:r1] = quantize_blocks(w[r0:r1].reshape(-1, block)).reshape(r1 - r0, -1)

    pieces = list(row_chunks(rows, cols))
    threads = min(len(pieces), numba.get_num_threads())
    if threads < 2:
        for r in pieces:
            piece(r)
        return out
    # NumPy releases the GIL inside its array operations, so threads over disjoint row pieces run the
    # searches on every core (each piece writes its own rows of out; the result does not depend on the order)
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(piece, pieces):
            pass
    return out


@njit(inline="always")
def decode_affine_nibbles(row, b, type_size, dst, xb, dot):
    """Block b of that layout (see dequantize_affine_nibbles) into dst [block] (see put)."""
    o = b * type_size
    d = f16_at(row, o)
    m = f16_at(row, o + 2)
    put_nibbles(row[o + 4: o + 4 + dst.shape[0] // 2], d, m, d, m, dst, xb, dot)
