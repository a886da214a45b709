"""Weight formats inside CUDA kernels: how to read one weight, and how to dot a run of a row with x.

Each format is a `Format(name, unit, at, dot)`:

    at(w, r, c) -> float32       W[r, c]                                   (embedding rows, matmul tiles)
    dot(w, r, u, x) -> float32   sum_j W[r, unit*u + j] * x[unit*u + j]    (matvec: lanes split the units)

Storage is exactly the host's, copied once: dense weights as float32, or float16 / bfloat16 bits in
uint16 [rows, cols] (`llamacpu.model.weights`); quantized weights as uint8 blocks [rows, bytes_per_row]
in the ggml layouts documented in `llamacpu.quant.<format>`, whose NumPy `dequantize` is the reference
these must match. Every weight is decoded where it is used; no matrix is ever dequantized whole.

Dense formats dot one weight per unit (neighbouring lanes read neighbouring weights: coalesced). The
quantized ones dot 32 weights per unit: a whole Q8_0/Q4_0/Q4_1 block, one sub-block of Q4_K, two
sub-blocks of Q6_K, a quarter of an int4_g128 group; so even a K-quant row spreads over a warp.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from ...model.weights import DenseWeight
from ...quant import get_format
from .common import bf16_to_f32, device, f16_at, f16_to_f32


class Format(NamedTuple):
    name: str
    unit: int  # weights per `dot` call
    at: Callable  # device function (w, r, c) -> float32
    dot: Callable  # device function (w, r, u, x) -> float32


@device
def int8_at(w, r, o):
    """The byte at o of row r as a signed int8 value (two's complement), in an int32."""
    q = np.int32(w[r, o])
    return q - ((q & 128) << 1)


# ---- dense: float32, float16 bits, bfloat16 bits ---------------------------------------------------

@device
def at_f32(w, r, c):
    return w[r, c]


@device
def dot_f32(w, r, u, x):
    return w[r, u] * x[u]


@device
def at_f16(w, r, c):
    return f16_to_f32(w[r, c])


@device
def dot_f16(w, r, u, x):
    return f16_to_f32(w[r, u]) * x[u]


@device
def at_bf16(w, r, c):
    return bf16_to_f32(w[r, c])


@device
def dot_bf16(w, r, u, x):
    return bf16_to_f32(w[r, u]) * x[u]


# ---- Q8_0: 34-byte blocks of 32, d (fp16) then 32 int8 quants; value = q * d -------------------------

@device
def at_q8_0(w, r, c):
    o = (c // 32) * 34
    return f16_at(w, r, o) * np.float32(int8_at(w, r, o + 2 + c % 32))


@device
def dot_q8_0(w, r, u, x):
    o = u * 34
    acc = np.float32(0.0)
    for j in range(32):
        acc += np.float32(int8_at(w, r, o + 2 + j)) * x[32 * u + j]
    return f16_at(w, r, o) * acc


# ---- Q4_0: 18-byte blocks of 32, d then 16 bytes of nibbles (element j: low nibble of byte j for
# j < 16, high nibble of byte j - 16 after); value = (q - 8) * d ---------------------------------------

@device
def at_q4_0(w, r, c):
    o = (c // 32) * 18
    j = c % 32
    v = np.int32(w[r, o + 2 + (j & 15)]) >> (4 * (j >> 4))
    return f16_at(w, r, o) * np.float32((v & 15) - 8)


@device
def dot_q4_0(w, r, u, x):
    o = u * 18
    acc = np.float32(0.0)
    for j in range(16):
        v = np.int32(w[r, o + 2 + j])
        acc += np.float32((v & 15) - 8) * x[32 * u + j] + np.float32((v >> 4) - 8) * x[32 * u + 16 + j]
    return f16_at(w, r, o) * acc


# ---- Q4_1: 20-byte blocks of 32, d, m (fp16), 16 bytes of nibbles as Q4_0; value = q * d + m -----------

@device
def at_q4_1(w, r, c):
    o = (c // 32) * 20
    j = c % 32
    v = np.int32(w[r, o + 4 + (j & 15)]) >> (4 * (j >> 4))
    return f16_at(w, r, o) * np.float32(v & 15) + f16_at(w, r, o + 2)


@device
def dot_q4_1(w, r, u, x):
    o = u * 20
    acc = np.float32(0.0)
    xsum = np.float32(0.0)
    for j in range(16):
        v = np.int32(w[r, o + 4 + j])
        x0 = x[32 * u + j]
        x1 = x[32 * u + 16 + j]
        acc += np.float32(v & 15) * x0 + np.float32(v >> 4) * x1
        xsum += x0 + x1
    return f16_at(w, r, o) * acc + f16_at(w, r, o + 2) * xsum  # sum (q d + m) x = d sum q x + m sum x


# ---- Q4_K: 144-byte super-blocks of 256 = 8 sub-blocks of 32: d, dmin (fp16), 12 bytes of 6-bit
# scales/minimums, 128 bytes of nibbles (sub-block s: byte 32 (s // 2) + l, low nibble for even s);
# value = d * sc[s] * q - dmin * m[s] ----------------------------------------------------------------

@device
def q4_k_scale_min(w, r, o, s):
    """(sc[s], m[s]) of the super-block at byte o (ggml's get_scale_min_k4), as int32."""
    p = o + 4  # the 12 packed bytes
    if s < 4:
        return np.int32(w[r, p + s]) & 63, np.int32(w[r, p + s + 4]) & 63
    a = np.int32(w[r, p + s + 4])
    return (a & 15) | ((np.int32(w[r, p + s - 4]) >> 6) << 4), (a >> 4) | ((np.int32(w[r, p + s]) >> 6) << 4)


@device
def at_q4_k(w, r, c):
    o = (c // 256) * 144
    e = c % 256
    s = e // 32
    sc, m = q4_k_scale_min(w, r, o, s)
    q = (np.int32(w[r, o + 16 + 32 * (s // 2) + e % 32]) >> (4 * (s & 1))) & 15
    return f16_at(w, r, o) * np.float32(sc) * np.float32(q) - f16_at(w, r, o + 2) * np.float32(m)


@device
def dot_q4_k(w, r, u, x):
    o = (u // 8) * 144
    s = u % 8
    sc, m = q4_k_scale_min(w, r, o, s)
    q0 = o + 16 + 32 * (s // 2)
    shift = 4 * (s & 1)
    acc = np.float32(0.0)
    xsum = np.float32(0.0)
    for l in range(32):
        xv = x[32 * u + l]
        acc += np.float32((np.int32(w[r, q0 + l]) >> shift) & 15) * xv
        xsum += xv
    return f16_at(w, r, o) * np.float32(sc) * acc - f16_at(w, r, o + 2) * np.float32(m) * xsum


# ---- Q6_K: 210-byte super-blocks of 256: ql (128 bytes, low 4 bits), qh (64 bytes, high 2 bits),
# 16 int8 scales (one per 16 weights), d (fp16). Element e = 128 h + 32 k + l (half h, quarter k):
# q = (ql[64 h + 32 (k & 1) + l] >> 4 (k >> 1)) & 15 | ((qh[32 h + l] >> 2 k) & 3) << 4;
# value = d * sc[e // 16] * (q - 32) -------------------------------------------------------------------

@device
def q6_k_quant(w, r, o, h, k, l):
    """The 6-bit quant (0..63) of element 128 h + 32 k + l of the super-block at byte o."""
    lo = (np.int32(w[r, o + 64 * h + 32 * (k & 1) + l]) >> (4 * (k >> 1))) & 15
    hi = (np.int32(w[r, o + 128 + 32 * h + l]) >> (2 * k)) & 3
    return lo | (hi << 4)


@device
def at_q6_k(w, r, c):
    o = (c // 256) * 210
    e = c % 256
    q = q6_k_quant(w, r, o, e // 128, (e // 32) % 4, e % 32)
    return f16_at(w, r, o + 208) * np.float32(int8_at(w, r, o + 192 + e // 16)) * np.float32(q - 32)


@device
def dot_q6_k(w, r, u, x):
    o = (u // 8) * 210
    h = (u % 8) // 4
    k = u % 4
    acc0 = np.float32(0.0)  # the unit's two sub-blocks of 16 have their own scales
    acc1 = np.float32(0.0)
    for l in range(16):
        acc0 += np.float32(q6_k_quant(w, r, o, h, k, l) - 32) * x[32 * u + l]
        acc1 += np.float32(q6_k_quant(w, r, o, h, k, l + 16) - 32) * x[32 * u + 16 + l]
    s = o + 192 + 8 * h + 2 * k  # scale index (128 h + 32 k) // 16
    return f16_at(w, r, o + 208) * (np.float32(int8_at(w, r, s)) * acc0 + np.float32(int8_at(w, r, s + 1)) * acc1)


# ---- int4_g128: 68-byte groups of 128: s, m (fp16), 64 bytes of nibbles (element j: low nibble of
# byte j for j < 64, high nibble of byte j - 64 after); value = q * s + m ------------------------------

@device
def at_int4_g128(w, r, c):
    o = (c // 128) * 68
    j = c % 128
    v = np.int32(w[r, o + 4 + (j & 63)]) >> (4 * (j >> 6))
    return np.float32(v & 15) * f16_at(w, r, o) + f16_at(w, r, o + 2)


@device
def dot_int4_g128(w, r, u, x):
    o = (u // 4) * 68
    k = u % 4  # elements 32 k .. 32 k + 31 of the group
    b = o + 4 + 32 * (k & 1)
    shift = 4 * (k >> 1)
    acc = np.float32(0.0)
    xsum = np.float32(0.0)
    for l in range(32):
        xv = x[32 * u + l]
        acc += np.float32((np.int32(w[r, b + l]) >> shift) & 15) * xv
        xsum += xv
    return f16_at(w, r, o) * acc + f16_at(w, r, o + 2) * xsum


FORMATS = {f.name: f for f in (
    Format("f32", 1, at_f32, dot_f32),
    Format("f16", 1, at_f16, dot_f16),
    Format("bf16", 1, at_bf16, dot_bf16),
    Format("q8_0", 32, at_q8_0, dot_q8_0),
    Format("q4_0", 32, at_q4_0, dot_q4_0),
    Format("q4_1", 32, at_q4_1, dot_q4_1),
    Format("q4_k", 32, at_q4_k, dot_q4_k),
    Format("q6_k", 32, at_q6_k, dot_q6_k),
    Format("int4_g128", 32, at_int4_g128, dot_int4_g128),
)}


def reference_dequantize(name: str, data: np.ndarray, cols: int) -> np.ndarray:
    """The NumPy reference every `at`/`dot` above must match: the host format's dequantize."""
    if name in ("f32", "f16", "bf16"):
        return DenseWeight(data, name).dequantize()
    return get_format(name).dequantize(data, cols)
