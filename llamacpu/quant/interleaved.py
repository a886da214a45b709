"""Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS interleaved by 16 rows: the
layout the CPU backend repacks them into at load (AVX512-VNNI).

Why (bench/README.md, "Interleaved at load"): the row-per-accumulator decode kernel pays a float
epilogue per 64 weights of every (row, token) and unpacks each row's nibbles again for every token, and
the prefill kernel repacked 16 rows per call (most of a step of 8 sequences). Stored interleaved once,
one kernel serves every token count: a 64-byte load holds 4 columns of 16 rows twice over (low and high
nibbles), each `vpdpbusd` multiplies it by 4 bytes of one token broadcast to all lanes, an int32 lane sums
one (row, k-block) exactly, and the float epilogue runs once per 32 columns (Q2_K, Q3_K, Q6_K: 16) of 16 rows. Same
bytes as the blocks (a permutation: no extra memory), so llama.cpp's `repack` idea without its 8-bit
activations: the activations are vnni.py's 16-bit scheme (2e-5 relative error), and the arithmetic per
(row, token, k-block) is exactly the VNNI prefill kernel's, so prompt rows give the bits they gave before.

Layout: W [R, C] (R % 16 == 0) as uint8 [R, C // block * type_size] like its blocks, read as
[R / 16, nblocks * 16 * type_size]: for group g (rows 16 g .. 16 g + 15) and block b (columns of block b)
16 x type_size bytes at b * 16 * type_size, in two parts:

  1. the header: each field of the block (SPECS[fmt].header: byte offset, count, unit) for the 16 rows,
     unit by unit: unit u of row r of a field at its start + (16 u' + r) * size (fp16 d, m: the 16 rows'
     values in row order; Q4_K's 12 packed scale bytes, Q6_K's 16 int8 scales, IQ4_XS's 4 scales_l bytes
     byte-major, 16 b + r)
  2. the levels (q as the kernels multiply it: unsigned, 0..15, 0..31, 0..63, or 0..255), per chunk of 32
     columns (a block of 32, or a sub-block of a super-block): the single high bits (if any), then the 2-bit
     fields (if any), then the nibbles (if any)

    nibbles (256 bytes)  4 vectors of 64 bytes; vector j, byte 4 r + i (row r, i < 4):
                         low nibble = q[r, 8 j + i] & 15, high nibble = q[r, 8 j + 4 + i] & 15
    fifth bits (64)      Q5_0, Q5_1, Q5_K: byte 4 r + i, bit j = bit 4 of q[r, 8 j + i],
                         bit 4 + j = bit 4 of q[r, 8 j + 4 + i]
    sixth bits (128)     Q6_K: two vectors A, B; byte 4 r + i, bits 2j..2j+1 = q >> 4 of q[r, 8 j + i] (A),
                         of q[r, 8 j + 4 + i] (B)
    Q8_0 (512)           no nibbles: 8 vectors of 64 bytes; vector j, byte 4 r + i = q[r, 4 j + i] XOR 0x80 (q + 128)
    Q2_K (128)           no nibbles: the levels (0..3) as Q6_K's sixth bits are stored
    Q3_K (64 + 128)      no nibbles: bit 2 of the levels (0..7) as Q5's fifth bits are, then their low 2 bits
                         as Q2_K's

    IQ4_NL's and IQ4_XS's nibbles are codes (the kernel looks them up: vnni.NL_LEVELS, unsigned + 128). So a Q4_0
    block of 16 rows is 32 bytes of d then 256 of nibbles (288 = 16 x 18); a Q4_K super-block d, dmin,
    scales (256 bytes) then 8 x 256; a Q6_K super-block d, scales (288) then 8 x (128 + 256); Q2_K d, dmin, 16
    scale bytes (320) then 8 x 128; Q3_K d, 12 scale bytes (224) then 8 x 192.

Values as the formats define them: (q - 8) d (Q4_0), d q + m (Q4_1), (q - 16) d (Q5_0), d sc q - dmin m
(Q4_K, Q5_K; levels centred on 8, 16 as vnni.py does), d sc[s] (q - 32) (Q6_K, 16 sub-blocks of 16),
d (ls[s] - 32) KVALUES[code] (IQ4_XS), d sc[k] q - dmin m[k] (Q2_K), d (sc[k] - 32) (q - 4) (Q3_K).

Every (row, token) result is computed alone (lanes are rows, accumulators are tokens; int32 sums are
exact, so the order of the 4-token and 1-token passes does not matter): a token's output does not depend
on how many others share the call. `pack`/`unpack` are exact inverses (tests: against the NumPy references).
"""
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..kernels.simd import (bitcast, dpbusd, fma, fp16_to_f32, load, load_splat, prefetch, pshufb, sext, sitofp, splat,
                             store, zext)
from .common import FASTMATH
from .vnni import NL_LEVELS, mm_setup

GROUP = 16  # rows interleaved together: the 16 int32 lanes of an accumulator


class Spec(NamedTuple):
    code: int  # the packer's number for the format
    block: int  # columns per block (32, or a super-block of 256)
    type_size: int  # bytes per block
    header: tuple  # (byte offset, count, unit bytes) of each field kept as bytes: d, m, scales
    levels: int  # byte offset of the level bits in the block (packer: where its levels start)
    bits: int  # how the levels are stored (chunk kinds): NIB, NIB5, NIB6, LOW2, LOW3, BYTES


# chunk kinds: nibbles; + a fifth bit (Q5_0, Q5_1, Q5_K); + 2 high bits (Q6_K); 2-bit levels (Q2_K); 2 + 1 bits
# (Q3_K); bytes (Q8_0). The value is also the number of 64-byte vectors of high bits before the nibbles.
NIB, NIB5, NIB6, LOW2, LOW3, BYTES = 0, 1, 2, 3, 4, 8
CHUNK_BYTES = {NIB: 256, NIB5: 320, NIB6: 384, LOW2: 128, LOW3: 192, BYTES: 512}

SPECS = {
    "q4_0": Spec(0, 32, 18, ((0, 1, 2),), 2, 0),
    "q8_0": Spec(1, 32, 34, ((0, 1, 2),), 2, 8),
    "q4_k": Spec(2, 256, 144, ((0, 1, 2), (2, 1, 2), (4, 12, 1)), 16, 0),
    "q4_1": Spec(3, 32, 20, ((0, 1, 2), (2, 1, 2)), 4, 0),
    "q5_0": Spec(4, 32, 22, ((0, 1, 2),), 2, 1),
    "q5_1": Spec(5, 32, 24, ((0, 1, 2), (2, 1, 2)), 4, 1),
    "iq4_nl": Spec(6, 32, 18, ((0, 1, 2),), 2, 0),
    "q5_k": Spec(7, 256, 176, ((0, 1, 2), (2, 1, 2), (4, 12, 1)), 16, 1),
    "q6_k": Spec(8, 256, 210, ((208, 1, 2), (192, 16, 1)), 0, 2),
    "iq4_xs": Spec(9, 256, 136, ((0, 1, 2), (2, 1, 2), (4, 4, 1)), 8, 0),
    "q2_k": Spec(10, 256, 84, ((80, 1, 2), (82, 1, 2), (0, 16, 1)), 16, LOW2),
    "q3_k": Spec(11, 256, 110, ((108, 1, 2), (96, 12, 1)), 0, LOW3),
}
FORMATS = tuple(SPECS)  # the formats with an interleaved layout (compiled_decode numbers them in this order)
# the packer's codes of the formats it decodes apart (the others: blocks of 32 with nibbles)
Q8_CODE, Q4K_CODE, Q5K_CODE, Q6K_CODE, XS_CODE, Q2K_CODE, Q3K_CODE = (
    SPECS[f].code for f in ("q8_0", "q4_k", "q5_k", "q6_k", "iq4_xs", "q2_k", "q3_k"))


def head_bytes(s: Spec) -> int:
    """Bytes of a block's header for 16 rows."""
    return GROUP * sum(n * u for _, n, u in s.header)


def chunk_bytes(s: Spec) -> int:
    """Bytes of 32 columns of levels for 16 rows."""
    return CHUNK_BYTES[s.bits]


def eligible(fmt: str, shape) -> bool:
    """Whether a matrix of this format and shape can be interleaved (whole groups of 16 rows)."""
    return (fmt in SPECS and shape[0] % GROUP == 0 and shape[0] > 0 and shape[1] % SPECS[fmt].block == 0
            and shape[1] > 0)


# ---------------------------------------------------------------------------------------------
# The layout: NumPy references (levels of ggml's blocks and back, the interleaving) ...
# ---------------------------------------------------------------------------------------------


def _bits_le(b: np.ndarray) -> np.ndarray:
    """uint8 [..., n] -> its bits [..., 8 n], least significant first (qh words of Q5_0, Q5_1)."""
    return np.unpackbits(b, axis=-1, bitorder="little")


def block_levels(b: np.ndarray, fmt: str) -> np.ndarray:
    """Blocks uint8 [..., type_size] of format fmt -> their levels uint8 [..., block] in column order, as the
    kernel multiplies them (Q8_0: q + 128)."""
    s = SPECS[fmt]
    if fmt == "q8_0":
        return b[..., 2:34] ^ np.uint8(0x80)
    if s.block == 32:  # qs[l] & 15 is column l, qs[l] >> 4 column l + 16; Q5's fifth bit l in the qh word
        qs = b[..., s.levels + 4 * s.bits:s.levels + 4 * s.bits + 16]
        lv = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1)
        return lv | (_bits_le(b[..., s.levels:s.levels + 4]) << np.uint8(4)) if s.bits else lv
    if fmt in ("q2_k", "q3_k"):  # column 128 c + 32 s + l: (qs[32 c + l] >> 2 s) & 3, Q3_K's high bit
        lv = _unpack2(b[..., 16:80] if fmt == "q2_k" else b[..., 32:96])  # (hmask[l] >> (4 c + s)) & 1
        if fmt == "q3_k":
            hi = (b[..., None, 0:32] >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & np.uint8(1)
            lv = lv | (hi.reshape(lv.shape) << np.uint8(2))
        return lv
    if fmt == "iq4_xs":  # sub-block s: qs[16 s + j] & 15 is column 32 s + j, >> 4 column 32 s + 16 + j
        qs = b[..., 8:136].reshape(b.shape[:-1] + (8, 16))
        return np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1).reshape(b.shape[:-1] + (256,))
    if fmt == "q6_k":  # see q6_k: half h, quarter k, l: 128 h + 32 k + l
        ql = b[..., 0:128].reshape(b.shape[:-1] + (2, 1, 64))
        qh = b[..., 128:192].reshape(b.shape[:-1] + (2, 1, 32))
        lo = np.concatenate([ql & np.uint8(15), ql >> np.uint8(4)], axis=-2).reshape(b.shape[:-1] + (2, 4, 32))
        hi = (qh >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)) & np.uint8(3)
        return (lo | (hi << np.uint8(4))).reshape(b.shape[:-1] + (256,))
    # Q4_K, Q5_K: chunk c of 32 bytes at qs holds sub-block 2 c (low nibbles) and 2 c + 1 (high)
    qoff = 48 if fmt == "q5_k" else 16
    qs = b[..., None, qoff:qoff + 128].reshape(b.shape[:-1] + (4, 1, 32))
    lv = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-2).reshape(b.shape[:-1] + (8, 32))
    if fmt == "q5_k":  # bit s of qh[l]: sub-block s, column l
        lv = lv | (((b[..., None, 16:48] >> np.arange(8, dtype=np.uint8).reshape(8, 1)) & np.uint8(1)) << np.uint8(4))
    return lv.reshape(b.shape[:-1] + (256,))


def level_bytes(lv: np.ndarray, fmt: str) -> np.ndarray:
    """Inverse of block_levels for the level bytes: levels [..., block] -> the bytes from Spec.levels on
    (Q6_K: ql, qh; before the header fields that follow them)."""
    s = SPECS[fmt]
    if fmt == "q8_0":
        return lv ^ np.uint8(0x80)
    if s.block == 32:
        qs = (lv[..., :16] & np.uint8(15)) | (lv[..., 16:] << np.uint8(4))
        if not s.bits:
            return qs
        return np.concatenate([np.packbits(lv >> np.uint8(4), axis=-1, bitorder="little"), qs], axis=-1)
    if fmt in ("q2_k", "q3_k"):
        L = lv.reshape(lv.shape[:-1] + (2, 4, 32)) & np.uint8(3)
        qs = L[..., 0, :] | (L[..., 1, :] << 2) | (L[..., 2, :] << 4) | (L[..., 3, :] << 6)
        qs = qs.reshape(lv.shape[:-1] + (64,))
        if fmt == "q2_k":
            return qs
        hi = ((lv.reshape(lv.shape[:-1] + (8, 32)) >> 2) & 1) << np.arange(8, dtype=np.uint8).reshape(8, 1)
        return np.concatenate([np.bitwise_or.reduce(hi, axis=-2), qs], axis=-1)
    if fmt == "iq4_xs":
        L = lv.reshape(lv.shape[:-1] + (8, 32))
        return ((L[..., :16] & 15) | (L[..., 16:] << 4)).reshape(lv.shape[:-1] + (128,))
    if fmt == "q6_k":
        L = lv.reshape(lv.shape[:-1] + (2, 4, 32))
        ql = np.concatenate([(L[..., 0, :] & 15) | ((L[..., 2, :] & 15) << 4),
                             (L[..., 1, :] & 15) | ((L[..., 3, :] & 15) << 4)], axis=-1)
        qh = (L[..., 0, :] >> 4) | ((L[..., 1, :] >> 4) << 2) | ((L[..., 2, :] >> 4) << 4) | ((L[..., 3, :] >> 4) << 6)
        return np.concatenate([ql.reshape(lv.shape[:-1] + (128,)), qh.reshape(lv.shape[:-1] + (64,))], axis=-1)
    L = lv.reshape(lv.shape[:-1] + (4, 2, 32))
    qs = ((L[..., 0, :] & 15) | ((L[..., 1, :] & 15) << 4)).reshape(lv.shape[:-1] + (128,))
    if fmt == "q4_k":
        return qs
    sub = (lv.reshape(lv.shape[:-1] + (8, 32)) >> 4) << np.arange(8, dtype=np.uint8).reshape(8, 1)
    return np.concatenate([np.bitwise_or.reduce(sub, axis=-2), qs], axis=-1)


def _unpack2(qs: np.ndarray) -> np.ndarray:
    """Q2_K's and Q3_K's qs [..., 64] -> 2-bit levels [..., 256] (column 128 c + 32 s + l: (qs[32 c + l] >> 2 s) & 3)"""
    q = qs.reshape(qs.shape[:-1] + (2, 1, 32)) >> np.array([0, 2, 4, 6], np.uint8).reshape(4, 1)
    return (q & np.uint8(3)).reshape(qs.shape[:-1] + (256,))


def _chunks(lv: np.ndarray, bits: int) -> np.ndarray:
    """Levels [G, 16 rows, nb, nc, 32] (chunks of 32 columns) -> their interleaved bytes [G, nb, nc, chunk bytes]."""
    w = lv.transpose(0, 2, 3, 1, 4).reshape(lv.shape[0], lv.shape[2], lv.shape[3], 16, 8, 4)
    w = w.transpose(0, 1, 2, 4, 3, 5)  # [g, b, c, k-group of 4 columns, row, i]
    if bits == 8:
        return w.reshape(w.shape[:3] + (512,))
    lo, hi = w[:, :, :, 0::2], w[:, :, :, 1::2]  # [g, b, c, j, row, i]: columns 8 j + i, 8 j + 4 + i
    j = np.arange(4, dtype=np.uint8).reshape(4, 1, 1)
    if bits in (LOW2, LOW3):
        a = np.bitwise_or.reduce((lo & 3) << (2 * j), axis=3)
        b = np.bitwise_or.reduce((hi & 3) << (2 * j), axis=3)
        parts = [np.concatenate([a, b], axis=-2).reshape(w.shape[:3] + (128,))]
        if bits == LOW3:
            hb = np.bitwise_or.reduce((((lo >> 2) & 1) << j) | (((hi >> 2) & 1) << (j + 4)), axis=3)
            parts.insert(0, hb.reshape(w.shape[:3] + (64,)))
        return np.concatenate(parts, axis=-1)
    parts = [((lo & 15) | ((hi & 15) << 4)).reshape(w.shape[:3] + (256,))]
    if bits == 1:
        hb = np.bitwise_or.reduce((((lo >> 4) & 1) << j) | (((hi >> 4) & 1) << (j + 4)), axis=3)
        parts.insert(0, hb.reshape(w.shape[:3] + (64,)))
    elif bits == 2:
        a = np.bitwise_or.reduce(((lo >> 4) & 3) << (2 * j), axis=3)
        b = np.bitwise_or.reduce(((hi >> 4) & 3) << (2 * j), axis=3)
        parts.insert(0, np.concatenate([a, b], axis=-2).reshape(w.shape[:3] + (128,)))
    return np.concatenate(parts, axis=-1)


def _chunk_levels(P: np.ndarray, r: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of _chunks for row r[i] of group i: P [n, nb, nc, chunk bytes] -> levels [n, nb, nc, 32]."""
    def mine(V, nvec):  # vectors [n, b, c, nvec * 64] -> row r's bytes [n, b, c, nvec, 4]
        return V.reshape(P.shape[:3] + (nvec, GROUP, 4)).transpose(0, 4, 1, 2, 3, 5)[np.arange(len(r)), r]

    if bits == BYTES:
        return mine(P, 8).reshape(P.shape[:3] + (32,))
    j = np.arange(4, dtype=np.uint8).reshape(4, 1)
    if bits in (LOW2, LOW3):
        two = mine(P[..., 64 if bits == LOW3 else 0:], 2)  # [n, b, c, A/B, i]
        lo = (two[..., 0, None, :] >> (2 * j)) & 3
        hi = (two[..., 1, None, :] >> (2 * j)) & 3
        if bits == LOW3:
            H = mine(P[..., :64], 1)
            lo = lo | (((H[..., 0, None, :] >> j) & 1) << 2)
            hi = hi | (((H[..., 0, None, :] >> (j + 4)) & 1) << 2)
        return np.stack([lo, hi], axis=-2).reshape(P.shape[:3] + (32,))
    hb = 64 * bits
    nib = mine(P[..., hb:], 4)  # [n, b, c, j, i]
    lo, hi = nib & np.uint8(15), nib >> np.uint8(4)
    if bits:
        H = mine(P[..., :hb], bits)  # [n, b, c, vector, i]
        if bits == 1:
            lo = lo | (((H[..., 0, None, :] >> j) & 1) << 4)
            hi = hi | (((H[..., 0, None, :] >> (j + 4)) & 1) << 4)
        else:
            lo = lo | (((H[..., 0, None, :] >> (2 * j)) & 3) << 4)
            hi = hi | (((H[..., 1, None, :] >> (2 * j)) & 3) << 4)
    return np.stack([lo, hi], axis=-2).reshape(P.shape[:3] + (32,))  # columns 8 j + 4 h + i


def pack_ref(blocks: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """Blocks uint8 [R, bytes per row] of format fmt (FORMATS) -> the interleaved layout (same shape; R % 16 == 0)."""
    s = SPECS[fmt]
    R, nb = blocks.shape[0], cols // s.block
    G = R // GROUP
    b = blocks.reshape(G, GROUP, nb, s.type_size)
    parts = [b[..., o:o + n * u].reshape(G, GROUP, nb, n, u).transpose(0, 2, 3, 1, 4).reshape(G, nb, GROUP * n * u)
             for o, n, u in s.header]
    lv = block_levels(b, fmt).reshape(G, GROUP, nb, s.block // 32, 32)
    parts.append(_chunks(lv, s.bits).reshape(G, nb, -1))
    return np.ascontiguousarray(np.concatenate(parts, axis=-1)).reshape(blocks.shape)


def unpack_rows(packed: np.ndarray, ids: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """The blocks [len(ids), bytes per row] of rows `ids` (valid indices) of an interleaved matrix of format fmt."""
    s = SPECS[fmt]
    nb = cols // s.block
    P = packed.reshape(-1, nb, GROUP * s.type_size)[ids // GROUP]  # [n, b, 16 type_size]
    n, r = len(ids), ids % GROUP
    out = np.empty((n, nb, s.type_size), np.uint8)
    at = 0
    for o, cnt, u in s.header:
        seg = P[..., at:at + GROUP * cnt * u].reshape(n, nb, cnt, GROUP, u).transpose(0, 3, 1, 2, 4)[np.arange(n), r]
        out[..., o:o + cnt * u] = seg.reshape(n, nb, cnt * u)
        at += GROUP * cnt * u
    lv = _chunk_levels(P[..., at:].reshape(n, nb, s.block // 32, chunk_bytes(s)), r, s.bits).reshape(n, nb, s.block)
    lb = level_bytes(lv, fmt)
    out[..., s.levels:s.levels + lb.shape[-1]] = lb
    return out.reshape(n, nb * s.type_size)


def unpack(packed: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """The interleaved layout -> the blocks in ggml's row order (a copy)."""
    return unpack_rows(packed, np.arange(packed.shape[0]), cols, fmt)


# ... and the Numba packer used at load


def pack(blocks: np.ndarray, out: np.ndarray, cols: int, fmt: str) -> None:
    """out = pack_ref(blocks, cols, fmt) (blocks uint8 [R, bytes per row], R % 16 == 0; out the same shape)."""
    PACKERS[fmt](blocks, out, cols)


def _packer(s: Spec):
    """pack for one format, compiled with its constants (the level loops unswitched and vectorized). Each row's
    blocks are decoded to levels (_levels_into) and scattered with their header fields; the levels move 4
    columns at a time as uint32 words (4 levels in its bytes = a row's 4 bytes of a vector): every chunk kind
    is a bytewise function of two such words, so one word operation packs 4 bytes. Little-endian, as the
    layout's bytes are."""
    code, block, ts, loff, bits = s.code, s.block, s.type_size, s.levels, s.bits
    fields = tuple(s.header)
    cb = CHUNK_BYTES[bits]

    @njit(parallel=True, cache=True)
    def packer(blocks, out, cols):
        R, bpr = blocks.shape
        nb = cols // block
        flat = out.reshape(-1)
        words = flat.view(np.uint32)  # chunks and level vectors start at multiples of 64 bytes
        for g in prange(R // GROUP):
            lv = np.empty(block, np.uint8)
            lw = lv.view(np.uint32)
            for r in range(GROUP):
                row = blocks[GROUP * g + r]
                for b in range(nb):
                    o = b * ts
                    at = g * GROUP * bpr + b * GROUP * ts
                    for f in fields:  # unit k of row r at (16 k + r) * unit
                        off, cnt, u = f
                        for k in range(cnt):
                            for x in range(u):
                                flat[at + (GROUP * k + r) * u + x] = row[o + off + k * u + x]
                        at += GROUP * cnt * u
                    _levels_into(row, o, code, loff, bits, lv)
                    for c in range(block // 32):
                        _put_chunk(words, (at + c * cb) >> 2, r, lw, 8 * c, bits)

    return packer


@njit(inline="always")
def _levels_into(row, o, code, loff, bits, lv):
    """block_levels of the block at byte o of a row into lv uint8 [block] (loops over contiguous bytes, which
    LLVM vectorizes)."""
    if code == Q8_CODE:
        for l in range(32):
            lv[l] = row[o + 2 + l] ^ np.uint8(0x80)
    elif code == Q6K_CODE:
        for h in range(2):
            for l in range(32):
                a = row[o + 64 * h + l]
                b = row[o + 64 * h + 32 + l]
                c = row[o + 128 + 32 * h + l]
                lv[128 * h + l] = (a & np.uint8(15)) | ((c & np.uint8(3)) << np.uint8(4))
                lv[128 * h + l + 32] = (b & np.uint8(15)) | (((c >> np.uint8(2)) & np.uint8(3)) << np.uint8(4))
                lv[128 * h + l + 64] = (a >> np.uint8(4)) | (((c >> np.uint8(4)) & np.uint8(3)) << np.uint8(4))
                lv[128 * h + l + 96] = (b >> np.uint8(4)) | ((c >> np.uint8(6)) << np.uint8(4))
    elif code == Q2K_CODE or code == Q3K_CODE:  # see block_levels
        qs = o + (16 if code == Q2K_CODE else 32)
        for c in range(2):
            for s in range(4):
                for l in range(32):
                    v = (row[qs + 32 * c + l] >> np.uint8(2 * s)) & np.uint8(3)
                    if code == Q3K_CODE:
                        v |= ((row[o + l] >> np.uint8(4 * c + s)) & np.uint8(1)) << np.uint8(2)
                    lv[128 * c + 32 * s + l] = v
    elif code == XS_CODE:
        for s in range(8):
            for j in range(16):
                v = row[o + 8 + 16 * s + j]
                lv[32 * s + j] = v & np.uint8(15)
                lv[32 * s + 16 + j] = v >> np.uint8(4)
    elif code == Q4K_CODE or code == Q5K_CODE:
        qs = o + (48 if bits else 16)
        for c in range(4):
            for l in range(32):
                v = row[qs + 32 * c + l]
                lv[64 * c + l] = v & np.uint8(15)
                lv[64 * c + 32 + l] = v >> np.uint8(4)
        if bits:
            for s in range(8):
                for l in range(32):
                    lv[32 * s + l] |= ((row[o + 16 + l] >> np.uint8(s)) & np.uint8(1)) << np.uint8(4)
    else:  # blocks of 32: nibbles after the fifth bits (a little-endian uint32), if any
        qs = o + loff + 4 * bits
        for l in range(16):
            v = row[qs + l]
            lv[l] = v & np.uint8(15)
            lv[l + 16] = v >> np.uint8(4)
        if bits:
            for l in range(32):
                lv[l] |= ((row[o + loff + (l >> 3)] >> np.uint8(l & 7)) & np.uint8(1)) << np.uint8(4)


B1, B2, B4 = np.uint32(0x01010101), np.uint32(0x03030303), np.uint32(0x0F0F0F0F)  # a bit field in every byte


@njit(inline="always")
def _put_chunk(words, d, r, lw, w0, bits):
    """Levels of row r's 32 columns in the words lw[w0 : w0 + 8] (word k: columns 4 k .. 4 k + 3) into the
    chunk at word d (see the module docstring): byte i of row r's word of vector j combines columns 8 j + i
    (word 2 j) and 8 j + 4 + i (word 2 j + 1), so one word operation packs 4 bytes."""
    if bits == BYTES:
        for k in range(8):
            words[d + 16 * k + r] = lw[w0 + k]
        return
    if bits >= LOW2:  # 2-bit fields (after Q3_K's single high bits)
        va = np.uint32(0)
        vb = np.uint32(0)
        vh = np.uint32(0)
        for j in range(4):
            a = lw[w0 + 2 * j]
            b = lw[w0 + 2 * j + 1]
            va |= (a & B2) << np.uint32(2 * j)
            vb |= (b & B2) << np.uint32(2 * j)
            vh |= (((a >> np.uint32(2)) & B1) << np.uint32(j)) | (((b >> np.uint32(2)) & B1) << np.uint32(4 + j))
        p2 = d + 16 * (bits - LOW2)
        words[p2 + r] = va
        words[p2 + 16 + r] = vb
        if bits == LOW3:
            words[d + r] = vh
        return
    va = np.uint32(0)
    vb = np.uint32(0)
    for j in range(4):
        a = lw[w0 + 2 * j]
        b = lw[w0 + 2 * j + 1]
        words[d + 16 * bits + 16 * j + r] = (a & B4) | ((b & B4) << np.uint32(4))
        if bits == 1:
            va |= (((a >> np.uint32(4)) & B1) << np.uint32(j)) | (((b >> np.uint32(4)) & B1) << np.uint32(4 + j))
        elif bits == 2:
            va |= ((a >> np.uint32(4)) & B2) << np.uint32(2 * j)
            vb |= ((b >> np.uint32(4)) & B2) << np.uint32(2 * j)
    if bits >= 1:
        words[d + r] = va
    if bits == 2:
        words[d + 16 + r] = vb


PACKERS = {f: _packer(s) for f, s in SPECS.items()}


# ---------------------------------------------------------------------------------------------
# The kernel: out[t, r] = sum_c W[r, c] * X[t, c] for any n, up to three matrices sharing X
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _levels(w, o, hb, bits, nl, j, half):
    """The 64 levels of columns 8 j + 4 half + i (i < 4) of the 16 rows of a chunk: from the nibble vector j at
    byte o (IQ4_NL codes looked up with nl; Q5's fifth bits, bits NIB5, or Q6_K's sixth bits, NIB6, from the
    vectors at byte hb), or (LOW2, LOW3) from the 2-bit vectors at o and Q3_K's third bits at hb."""
    if bits == LOW2 or bits == LOW3:
        q = (load(w, o + 64 * half, 64) >> np.uint8(2 * j)) & np.uint8(3)
        if bits == LOW3:  # bit j (low half) or 4 + j (high half) -> bit 2
            h = load(w, hb, 64)
            if half == 0:
                t = (h << np.uint8(2 - j)) if j < 3 else (h >> np.uint8(1))
            else:
                t = h >> np.uint8(2 + j)
            q = q | (t & np.uint8(4))
        return q
    p = load(w, o + 64 * j, 64)
    q = (p & np.uint8(15)) if half == 0 else (p >> np.uint8(4))
    if nl:
        q = pshufb(load(NL_LEVELS, 0, 64), q)
    if bits == NIB5:  # bit j (low half) or 4 + j (high half) -> bit 4
        h = load(w, hb, 64)
        q = q | (((h << np.uint8(4 - j)) if half == 0 else (h >> np.uint8(j))) & np.uint8(16))
    elif bits == NIB6:  # bits 2j, 2j + 1 of vector A (low half) or B (high half) -> bits 4, 5
        h = load(w, hb + 64 * half, 64)
        q = q | (((h << np.uint8(4 - 2 * j)) if j < 3 else (h >> np.uint8(2))) & np.uint8(0x30))
    return q


@njit(inline="always")
def _kb4(w, o, hb, bits, nl, j0, nj, XH32, XL32, a0, a1, a2, a3, k0):
    """Level vectors j0 .. j0 + nj - 1 of the chunk (see _levels) times 4 tokens (dword offsets a0..a3 of their
    planes; k0 = the chunk's first k-group): the int32 lane sums of q * H and q * L per token."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; h2 = z; h3 = z; l0 = z; l1 = z; l2 = z; l3 = z  # noqa: E702
    for j in range(j0, j0 + nj):
        for half in range(2):
            q = _levels(w, o, hb, bits, nl, j, half)
            k = k0 + 2 * j + half
            h0 = dpbusd(h0, q, load_splat(XH32, a0 + k, 16)); l0 = dpbusd(l0, q, load_splat(XL32, a0 + k, 16))  # noqa: E702
            h1 = dpbusd(h1, q, load_splat(XH32, a1 + k, 16)); l1 = dpbusd(l1, q, load_splat(XL32, a1 + k, 16))  # noqa: E702
            h2 = dpbusd(h2, q, load_splat(XH32, a2 + k, 16)); l2 = dpbusd(l2, q, load_splat(XL32, a2 + k, 16))  # noqa: E702
            h3 = dpbusd(h3, q, load_splat(XH32, a3 + k, 16)); l3 = dpbusd(l3, q, load_splat(XL32, a3 + k, 16))  # noqa: E702
    return h0, h1, h2, h3, l0, l1, l2, l3


@njit(inline="always")
def _kb1(w, o, hb, bits, nl, j0, nj, XH32, XL32, a0, k0):
    """_kb4 for one token (two accumulators per plane: the low and the high halves, summed exactly)."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; l0 = z; l1 = z  # noqa: E702
    for j in range(j0, j0 + nj):
        lo = _levels(w, o, hb, bits, nl, j, 0)
        hi = _levels(w, o, hb, bits, nl, j, 1)
        k = k0 + 2 * j
        h0 = dpbusd(h0, lo, load_splat(XH32, a0 + k, 16)); l0 = dpbusd(l0, lo, load_splat(XL32, a0 + k, 16))  # noqa: E702
        h1 = dpbusd(h1, hi, load_splat(XH32, a0 + k + 1, 16)); l1 = dpbusd(l1, hi, load_splat(XL32, a0 + k + 1, 16))  # noqa: E702
    return h0 + h1, l0 + l1


@njit(inline="always")
def _kb4_q8(w, o, XH32, XL32, a0, a1, a2, a3, k0):
    """_kb4 for Q8_0: 8 vectors of byte levels (q + 128), no unpacking."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; h2 = z; h3 = z; l0 = z; l1 = z; l2 = z; l3 = z  # noqa: E702
    for j in range(8):
        q = load(w, o + 64 * j, 64)
        k = k0 + j
        h0 = dpbusd(h0, q, load_splat(XH32, a0 + k, 16)); l0 = dpbusd(l0, q, load_splat(XL32, a0 + k, 16))  # noqa: E702
        h1 = dpbusd(h1, q, load_splat(XH32, a1 + k, 16)); l1 = dpbusd(l1, q, load_splat(XL32, a1 + k, 16))  # noqa: E702
        h2 = dpbusd(h2, q, load_splat(XH32, a2 + k, 16)); l2 = dpbusd(l2, q, load_splat(XL32, a2 + k, 16))  # noqa: E702
        h3 = dpbusd(h3, q, load_splat(XH32, a3 + k, 16)); l3 = dpbusd(l3, q, load_splat(XL32, a3 + k, 16))  # noqa: E702
    return h0, h1, h2, h3, l0, l1, l2, l3


@njit(inline="always")
def _kb1_q8(w, o, XH32, XL32, a0, k0):
    """_kb1 for Q8_0 (two accumulators per plane, even and odd k-groups)."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; l0 = z; l1 = z  # noqa: E702
    for j in range(4):
        q0 = load(w, o + 128 * j, 64)
        q1 = load(w, o + 128 * j + 64, 64)
        k = k0 + 2 * j
        h0 = dpbusd(h0, q0, load_splat(XH32, a0 + k, 16)); l0 = dpbusd(l0, q0, load_splat(XL32, a0 + k, 16))  # noqa: E702
        h1 = dpbusd(h1, q1, load_splat(XH32, a0 + k + 1, 16)); l1 = dpbusd(l1, q1, load_splat(XL32, a0 + k + 1, 16))  # noqa: E702
    return h0 + h1, l0 + l1


@njit(inline="always")
def _epilogue(has_min, h, l, sxk, cck, xek, e, D, M, f):
    """f + D * (sum q * x16 * sx - z * sum x16 * sx) for one k-block (cck holds the second term, z the level
    offset), plus the minimums' term M * sum(x) with has_min: vnni.mm_group's arithmetic (M unused without)."""
    f = fma(fma(sitofp((h << 8) + l), load_splat(sxk, e, 16), load_splat(cck, e, 16)), D, f)
    if has_min:
        f = fma(M, load_splat(xek, e, 16), f)
    return f


@njit(inline="always")
def _epilogue4(has_min, h0, h1, h2, h3, l0, l1, l2, l3, sxk, cck, xek, e, nkb, D, M, f0, f1, f2, f3):
    """_epilogue for 4 tokens: k-block e of the first, e + nkb of the next ..."""
    return (_epilogue(has_min, h0, l0, sxk, cck, xek, e, D, M, f0),
            _epilogue(has_min, h1, l1, sxk, cck, xek, e + nkb, D, M, f1),
            _epilogue(has_min, h2, l2, sxk, cck, xek, e + 2 * nkb, D, M, f2),
            _epilogue(has_min, h3, l3, sxk, cck, xek, e + 3 * nkb, D, M, f3))


@njit(inline="always")
def _f16x16(w, o):
    """The 16 rows' fp16 values at byte o as float32 <16>."""
    return fp16_to_f32(bitcast(load(w, o, 32), np.uint16))


@njit(inline="always")
def _k_scales(w, o, j, d, ndmin):
    """(D, M) float32 <16> of sub-block j for the 16 rows of a Q4_K / Q5_K super-block at byte o (d, ndmin: its
    rows' d and -dmin as float32 <16>): D = d sc[j], M = -dmin m[j], as the VNNI prefill (q4_k.prefill_k)
    computes them; the 6-bit sc, m unpacked as ggml's get_scale_min_k4 does, 16 rows at a time (byte b of
    the rows at o + 64 + 16 b)."""
    if j < 4:
        sc = zext(load(w, o + 64 + 16 * j, 16), np.int32) & np.int32(63)
        mn = zext(load(w, o + 64 + 16 * (j + 4), 16), np.int32) & np.int32(63)
    else:
        a = zext(load(w, o + 64 + 16 * (j + 4), 16), np.int32)
        sc = (a & np.int32(15)) | ((zext(load(w, o + 64 + 16 * (j - 4), 16), np.int32) >> 6) << 4)
        mn = (a >> 4) | ((zext(load(w, o + 64 + 16 * j, 16), np.int32) >> 6) << 4)
    return d * sitofp(sc), ndmin * sitofp(mn)


# The passes over one group of 16 rows, for 4 tokens (t0 .. t0 + 3) and for 1, of the three families:
# blocks of 32 (LEGACY), Q4_K / Q5_K, Q6_K. Each k-block's arithmetic is vnni.mm_group's.

@njit(inline="always")
def _legacy4(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    """spec = (block bytes for 16 rows, fp16 fields (d; d, m), high bits, IQ4_NL table)."""
    kbytes, nf, bits, nl = spec
    f0 = splat(np.float32(0.0), 16)
    f1 = f0; f2 = f0; f3 = f0  # noqa: E702
    a0 = t0 * C4
    e0 = t0 * nkb
    for kb in range(nkb):
        o = base + kb * kbytes
        if bits == BYTES:
            h0, h1, h2, h3, l0, l1, l2, l3 = _kb4_q8(w, o + 32, XH32, XL32, a0, a0 + C4, a0 + 2 * C4, a0 + 3 * C4,
                                                     8 * kb)
        else:
            h0, h1, h2, h3, l0, l1, l2, l3 = _kb4(w, o + 32 * nf + 64 * bits, o + 32 * nf, bits, nl, 0, 4, XH32, XL32,
                                                  a0, a0 + C4, a0 + 2 * C4, a0 + 3 * C4, 8 * kb)
        D = _f16x16(w, o)
        M = _f16x16(w, o + 32) if nf == 2 else D
        f0, f1, f2, f3 = _epilogue4(nf == 2, h0, h1, h2, h3, l0, l1, l2, l3, sxk, cck, xek, e0 + kb, nkb, D, M,
                                    f0, f1, f2, f3)
    _store4(out, t0, r0, f0, f1, f2, f3)


@njit(inline="always")
def _legacy1(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    kbytes, nf, bits, nl = spec
    f0 = splat(np.float32(0.0), 16)
    for kb in range(nkb):
        o = base + kb * kbytes
        if bits == BYTES:
            h0, l0 = _kb1_q8(w, o + 32, XH32, XL32, t0 * C4, 8 * kb)
        else:
            h0, l0 = _kb1(w, o + 32 * nf + 64 * bits, o + 32 * nf, bits, nl, 0, 4, XH32, XL32, t0 * C4, 8 * kb)
        D = _f16x16(w, o)
        M = _f16x16(w, o + 32) if nf == 2 else D
        f0 = _epilogue(nf == 2, h0, l0, sxk, cck, xek, t0 * nkb + kb, D, M, f0)
    store(out[t0], r0, f0)


@njit(inline="always")
def _xs_scales(w, o, j, d):
    """D = d (ls[j] - 32) float32 <16> of sub-block j for the 16 rows of an IQ4_XS super-block at byte o (d: their
    d as float32 <16>): the 6-bit ls from scales_l (byte j // 2 of the rows at o + 64 + 16 (j // 2), nibble j % 2)
    and scales_h (the rows' uint16 at o + 32, bits 2j, 2j + 1), as iq4_xs.prefill_block computes it."""
    lo = (zext(load(w, o + 64 + 16 * (j >> 1), 16), np.int32) >> (4 * (j & 1))) & np.int32(15)
    hi = (zext(bitcast(load(w, o + 32, 32), np.uint16), np.int32) >> (2 * j)) & np.int32(3)
    return d * sitofp((lo | (hi << 4)) - np.int32(32))


@njit(inline="always")
def _ks_scales(w, o, j, d, ndmin, xs):
    """(D, M) of sub-block j of a super-block of the 8 x 32 family: IQ4_XS's (no minimum: M unused) or
    Q4_K's / Q5_K's."""
    if xs:
        D = _xs_scales(w, o, j, d)
        return D, D
    return _k_scales(w, o, j, d, ndmin)


@njit(inline="always")
def _k4(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    """Super-blocks of 8 sub-blocks of 32 (the k-blocks), spec = (high bits, IQ4_XS): Q4_K (0, False) and Q5_K
    (1, False: fifth bits) with d, dmin, scales (256 bytes) then the sub-blocks as chunks; IQ4_XS (0, True)
    with d, scales_h, scales_l (128 bytes), then the sub-blocks' codes."""
    bits, xs = spec
    cb = 256 + 64 * bits
    head = 128 if xs else 256
    f0 = splat(np.float32(0.0), 16)
    f1 = f0; f2 = f0; f3 = f0  # noqa: E702
    a0 = t0 * C4
    e0 = t0 * nkb
    for sb in range(nkb // 8):
        o = base + sb * (head + 8 * cb)
        d, ndmin = _f16x16(w, o), _f16x16(w, o + 32) * splat(np.float32(-1.0), 16)  # -dmin: exact
        for j in range(8):
            kb = 8 * sb + j
            c = o + head + cb * j
            h0, h1, h2, h3, l0, l1, l2, l3 = _kb4(w, c + 64 * bits, c, bits, xs, 0, 4, XH32, XL32, a0, a0 + C4,
                                                  a0 + 2 * C4, a0 + 3 * C4, 8 * kb)
            D, M = _ks_scales(w, o, j, d, ndmin, xs)
            f0, f1, f2, f3 = _epilogue4(not xs, h0, h1, h2, h3, l0, l1, l2, l3, sxk, cck, xek, e0 + kb, nkb, D, M,
                                        f0, f1, f2, f3)
    _store4(out, t0, r0, f0, f1, f2, f3)


@njit(inline="always")
def _k1(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    bits, xs = spec
    cb = 256 + 64 * bits
    head = 128 if xs else 256
    f0 = splat(np.float32(0.0), 16)
    for sb in range(nkb // 8):
        o = base + sb * (head + 8 * cb)
        d, ndmin = _f16x16(w, o), _f16x16(w, o + 32) * splat(np.float32(-1.0), 16)
        for j in range(8):
            kb = 8 * sb + j
            c = o + head + cb * j
            h0, l0 = _kb1(w, c + 64 * bits, c, bits, xs, 0, 4, XH32, XL32, t0 * C4, 8 * kb)
            D, M = _ks_scales(w, o, j, d, ndmin, xs)
            f0 = _epilogue(not xs, h0, l0, sxk, cck, xek, t0 * nkb + kb, D, M, f0)
    store(out[t0], r0, f0)


@njit(inline="always")
def _s16_layout(bits):
    """(header bytes, chunk bytes, level vectors' offset in a chunk, high bits' offset) of a super-block of the
    16-column family: Q6_K (NIB6), Q2_K (LOW2), Q3_K (LOW3)."""
    if bits == NIB6:
        return 288, 384, 128, 0
    if bits == LOW2:
        return 320, 128, 0, 0
    return 224, 192, 64, 0


@njit(inline="always")
def _s16_scales(w, o, s, d, ndmin, bits):
    """(D, M) float32 <16> of sub-block s (16 columns) of the 16 rows of a super-block at byte o, as the formats'
    prefill_block computes them (d: the rows' d, ndmin: -dmin, float32 <16>): Q6_K d sc[s] (int8 scales at
    o + 32 + 16 s); Q2_K d (b & 15), -dmin (b >> 4) (scale byte b at o + 64 + 16 s); Q3_K d (sc[s] - 32), the
    6-bit sc unpacked from the 12 bytes at o + 32 + 16 b as q3_k.scale_at does. M is 0 but for Q2_K."""
    if bits == NIB6:
        return d * sitofp(sext(bitcast(load(w, o + 32 + 16 * s, 16), np.int8), np.int32)), d
    if bits == LOW2:
        b = zext(load(w, o + 64 + 16 * s, 16), np.int32)
        return d * sitofp(b & np.int32(15)), ndmin * sitofp(b >> 4)
    if s < 8:
        lo = zext(load(w, o + 32 + 16 * s, 16), np.int32) & np.int32(15)
    else:
        lo = zext(load(w, o + 32 + 16 * (s - 8), 16), np.int32) >> 4
    hi = (zext(load(w, o + 32 + 16 * (8 + (s & 3)), 16), np.int32) >> (2 * (s >> 2))) & np.int32(3)
    return d * sitofp((lo | (hi << 4)) - np.int32(32)), d


@njit(inline="always")
def _s16_4(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    """The 16-column family (spec = (NIB6,) Q6_K, (LOW2,) Q2_K, (LOW3,) Q3_K): per super-block the header (d,
    Q2_K's dmin, the scales), then 8 chunks of 32 columns; the k-blocks are the sub-blocks of 16 columns
    (nkb = C / 16), two per chunk, each with its own scale (Q2_K: and minimum)."""
    bits = spec[0]
    head, cb, lvo, hbo = _s16_layout(bits)
    f0 = splat(np.float32(0.0), 16)
    f1 = f0; f2 = f0; f3 = f0  # noqa: E702
    a0 = t0 * C4
    e0 = t0 * nkb
    for sb in range(nkb // 16):
        o = base + sb * (head + 8 * cb)
        d = _f16x16(w, o)
        ndmin = _f16x16(w, o + 32) * splat(np.float32(-1.0), 16)  # Q2_K's -dmin (exact); unused otherwise
        for c in range(8):
            ch = o + head + cb * c
            if bits == NIB6:  # a loop over the sub-blocks: written out (below) Q6_K's 4 tokens ran 6-9% slower
                for s in range(2):
                    f0, f1, f2, f3 = _s16_sub4(bits, w, o, ch, c, s, d, ndmin, 16 * sb + 2 * c + s, 8 * (8 * sb + c),
                                               nkb, XH32, XL32, sxk, cck, xek, a0, C4, e0, f0, f1, f2, f3)
            else:  # Q2_K, Q3_K: the sub-blocks written out, their level shifts constants (1.07x, 1.2x)
                f0, f1, f2, f3 = _s16_sub4(bits, w, o, ch, c, 0, d, ndmin, 16 * sb + 2 * c, 8 * (8 * sb + c),
                                           nkb, XH32, XL32, sxk, cck, xek, a0, C4, e0, f0, f1, f2, f3)
                f0, f1, f2, f3 = _s16_sub4(bits, w, o, ch, c, 1, d, ndmin, 16 * sb + 2 * c + 1, 8 * (8 * sb + c),
                                           nkb, XH32, XL32, sxk, cck, xek, a0, C4, e0, f0, f1, f2, f3)
    _store4(out, t0, r0, f0, f1, f2, f3)


@njit(inline="always")
def _s16_sub4(bits, w, o, ch, c, s, d, ndmin, kb, k0, nkb, XH32, XL32, sxk, cck, xek, a0, C4, e0, f0, f1, f2, f3):
    """Sub-block s of the chunk at byte ch (chunk c of the super-block at o) for 4 tokens: k-block kb, whose
    first k-group is k0 + 2 s."""
    head, cb, lvo, hbo = _s16_layout(bits)
    D, M = _s16_scales(w, o, 2 * c + s, d, ndmin, bits)
    h0, h1, h2, h3, l0, l1, l2, l3 = _kb4(w, ch + lvo, ch + hbo, bits, False, 2 * s, 2, XH32, XL32, a0, a0 + C4,
                                          a0 + 2 * C4, a0 + 3 * C4, k0)
    return _epilogue4(bits == LOW2, h0, h1, h2, h3, l0, l1, l2, l3, sxk, cck, xek, e0 + kb, nkb, D, M, f0, f1, f2, f3)


Q2K_PREFETCH = 4096  # bytes ahead of the chunk being read (bench/interleaved_ab.py --shapes 140704x5632: 3-12 KB
# all gave 1.24-1.3x)


@njit(inline="always")
def _s16_1(spec, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    bits = spec[0]
    head, cb, lvo, hbo = _s16_layout(bits)
    f0 = splat(np.float32(0.0), 16)
    for sb in range(nkb // 16):
        o = base + sb * (head + 8 * cb)
        d = _f16x16(w, o)
        ndmin = _f16x16(w, o + 32) * splat(np.float32(-1.0), 16)
        for c in range(8):  # the two sub-blocks written out: as a loop over s, the level vectors' shifts by 2 j
            # (j = 2 s, 2 s + 1) were run-time ones (vector shift counts, masks built per call): Q6_K 1.2-1.27x, Q3_K
            # 1.55-1.6x faster this way, the same bits
            ch = o + head + cb * c
            if bits == LOW2:  # Q2_K from DRAM: its compute and the hardware's streaming did not overlap (45% of
                # the plain read); 4 KB ahead 1.25-1.3x, the same in cache. Q3_K: no gain; Q6_K: 0.6-0.8x
                prefetch(w, ch + Q2K_PREFETCH)
                prefetch(w, ch + Q2K_PREFETCH + 64)
            f0 = _s16_sub1(bits, w, o, ch, c, 0, d, ndmin, t0 * nkb + 16 * sb + 2 * c, 8 * (8 * sb + c),
                           XH32, XL32, sxk, cck, xek, t0 * C4, f0)
            f0 = _s16_sub1(bits, w, o, ch, c, 1, d, ndmin, t0 * nkb + 16 * sb + 2 * c + 1, 8 * (8 * sb + c),
                           XH32, XL32, sxk, cck, xek, t0 * C4, f0)
    store(out[t0], r0, f0)


@njit(inline="always")
def _s16_sub1(bits, w, o, ch, c, s, d, ndmin, e, k0, XH32, XL32, sxk, cck, xek, a0, f0):
    """Sub-block s of the chunk at byte ch for one token (e: its k-block's index in sxk, cck, xek)."""
    head, cb, lvo, hbo = _s16_layout(bits)
    D, M = _s16_scales(w, o, 2 * c + s, d, ndmin, bits)
    h0, l0 = _kb1(w, ch + lvo, ch + hbo, bits, False, 2 * s, 2, XH32, XL32, a0, k0)
    return _epilogue(bits == LOW2, h0, l0, sxk, cck, xek, e, D, M, f0)


@njit(inline="always")
def _store4(out, t0, r0, f0, f1, f2, f3):
    store(out[t0], r0, f0)
    store(out[t0 + 1], r0, f1)
    store(out[t0 + 2], r0, f2)
    store(out[t0 + 3], r0, f3)


@njit(inline="always")
def _groups(p4, p1, spec, w, g0, g1, nkb, XH32, XL32, sxk, cck, xek, C4, n, out):
    """out[t, 16 g0 : 16 g1] for every token t: groups g0 .. g1 - 1 of the interleaved matrix w, in blocks of
    TOKEN_BLOCK tokens (a prefill of 512 tokens has 2 MB of activation planes at C = 2048: read from L3 once
    per group without the blocking)."""
    bpg = GROUP * w.shape[1]  # bytes per group
    n4 = n // 4 * 4
    for tb in range(0, n4, TOKEN_BLOCK):
        for g in range(g0, g1):
            for t0 in range(tb, min(n4, tb + TOKEN_BLOCK), 4):
                p4(spec, w, g * bpg, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, g * GROUP)
    for g in range(g0, g1):
        for t0 in range(n4, n):
            p1(spec, w, g * bpg, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, g * GROUP)


def _group_kernel(p4, p1, spec):
    """_groups for one format's passes, compiled once as a function of its own (not inlined into the three
    matrix branches of _matmul: a kernel compiles in 7 s instead of 28)."""

    @njit(fastmath=FASTMATH)
    def groups(w, g0, g1, nkb, XH32, XL32, sxk, cck, xek, C4, n, out):
        _groups(p4, p1, spec, w, g0, g1, nkb, XH32, XL32, sxk, cck, xek, C4, n, out)

    return groups


SUPER = 4  # groups per parallel task
TOKEN_BLOCK = 32  # tokens whose activation planes (32 x C x 2 bytes: 128 KB at C = 2048) stay in L2 while a
# task's groups pass over them, each group's weights (18 KB at C = 2048) in L1 during its passes


@njit(inline="always")
def _matmul(groups, bk, z, centre, a, b, c, X, oa, ob, oc):
    """oa[t] = A @ X[t], ob[t] = B @ X[t], oc[t] = C @ X[t] for any n tokens (A, B, C interleaved, of the same
    width, rows multiples of 16; 0-row arrays for unused ones): the activations prepared once, one launch
    over all their groups, in tasks of SUPER groups. groups: the format's _group_kernel; bk: columns per
    k-block; z, centre: the levels' offset, and whether they are centred on it (formats with minimums)."""
    n, C = X.shape
    nkb = C // bk
    C4 = C // 4
    XH32, XL32, sxk, cck, xek, n4 = mm_setup(X, bk, z, centre)
    sa = (a.shape[0] // GROUP + SUPER - 1) // SUPER  # tasks per matrix
    sab = sa + (b.shape[0] // GROUP + SUPER - 1) // SUPER
    for task in prange(sab + (c.shape[0] // GROUP + SUPER - 1) // SUPER):
        ti = np.int64(task)
        if ti < sa:
            groups(a, SUPER * ti, min(a.shape[0] // GROUP, SUPER * ti + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, oa)
        elif ti < sab:
            s = ti - sa
            groups(b, SUPER * s, min(b.shape[0] // GROUP, SUPER * s + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, ob)
        else:
            s = ti - sab
            groups(c, SUPER * s, min(c.shape[0] // GROUP, SUPER * s + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, oc)


# each format's passes: (4 tokens, 1 token, constants: LEGACY (block bytes for 16 rows, fp16 fields, high bits,
# IQ4_NL table); K (fifth bits, IQ4_XS); 16-column sub-blocks (chunk kind))
_G_Q4_0 = _group_kernel(_legacy4, _legacy1, (288, 1, 0, False))
_G_Q4_1 = _group_kernel(_legacy4, _legacy1, (320, 2, 0, False))
_G_Q5_0 = _group_kernel(_legacy4, _legacy1, (352, 1, 1, False))
_G_Q5_1 = _group_kernel(_legacy4, _legacy1, (384, 2, 1, False))
_G_IQ4_NL = _group_kernel(_legacy4, _legacy1, (288, 1, 0, True))
_G_Q8_0 = _group_kernel(_legacy4, _legacy1, (544, 1, 8, False))
_G_Q4_K = _group_kernel(_k4, _k1, (0, False))
_G_Q5_K = _group_kernel(_k4, _k1, (1, False))
_G_IQ4_XS = _group_kernel(_k4, _k1, (0, True))
_G_Q6_K = _group_kernel(_s16_4, _s16_1, (NIB6,))
_G_Q2_K = _group_kernel(_s16_4, _s16_1, (LOW2,))
_G_Q3_K = _group_kernel(_s16_4, _s16_1, (LOW3,))


# The kernels, one per format, with the signature of the formats' matmul_vnni (decode_step calls them by
# address); `prefill` is ignored: one kernel for every n. Their k-block width, level offset and centring
# are the formats' PREFILL (the VNNI prefill kernel's arithmetic).
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_0(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_0: levels offset by 8."""
    _matmul(_G_Q4_0, 32, 8, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_1(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_1: minimums, levels centred on 8."""
    _matmul(_G_Q4_1, 32, 8, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q5_0(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q5_0: levels offset by 16."""
    _matmul(_G_Q5_0, 32, 16, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q5_1(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q5_1: minimums, levels centred on 16."""
    _matmul(_G_Q5_1, 32, 16, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_iq4_nl(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved IQ4_NL: codes looked up as levels + 128."""
    _matmul(_G_IQ4_NL, 32, 128, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q8_0(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q8_0: int8 levels stored + 128."""
    _matmul(_G_Q8_0, 32, 128, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_K: minimums, levels centred on 8."""
    _matmul(_G_Q4_K, 32, 8, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q5_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q5_K: minimums, levels centred on 16."""
    _matmul(_G_Q5_K, 32, 16, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q2_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q2_K: k-blocks of 16 columns, minimums, levels centred on 2."""
    _matmul(_G_Q2_K, 16, 2, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q3_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q3_K: k-blocks of 16 columns, levels offset by 4."""
    _matmul(_G_Q3_K, 16, 4, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_iq4_xs(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved IQ4_XS: codes looked up as levels + 128, signed 6-bit sub-block scales."""
    _matmul(_G_IQ4_XS, 32, 128, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q6_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q6_K: k-blocks of 16 columns, levels offset by 32."""
    _matmul(_G_Q6_K, 16, 32, False, a, b, c, X, oa, ob, oc)


KERNELS = {"q4_0": matmul_q4_0, "q8_0": matmul_q8_0, "q4_k": matmul_q4_k, "q4_1": matmul_q4_1,
           "q5_0": matmul_q5_0, "q5_1": matmul_q5_1, "iq4_nl": matmul_iq4_nl, "q5_k": matmul_q5_k,
           "q6_k": matmul_q6_k, "iq4_xs": matmul_iq4_xs, "q2_k": matmul_q2_k, "q3_k": matmul_q3_k}
