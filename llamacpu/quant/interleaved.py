"""Q4_0, Q8_0 and Q4_K interleaved by 16 rows: the layout the CPU backend repacks them into at load (AVX512-VNNI).

Why (bench/README.md, "Q4_0 interleaved at load"): the row-per-accumulator decode kernel pays a float
epilogue per 64 weights of every (row, token) and unpacks each row's nibbles again for every token, and
the prefill kernel repacked 16 rows per call (most of a step of 8 sequences). Stored interleaved once,
one kernel serves every token count: a 64-byte load holds 4 columns of 16 rows twice over (low and high
nibbles), each `vpdpbusd` multiplies it by 4 bytes of one token broadcast to all lanes, an int32 lane sums
one (row, k-block) exactly, and the float epilogue runs once per 32 columns of 16 rows. Same bytes as the
blocks (a permutation: no extra memory), so llama.cpp's `repack` idea without its 8-bit activations: the
activations are vnni.py's 16-bit scheme (2e-5 relative error), and the arithmetic per (row, token, k-block)
is exactly the VNNI prefill kernel's, so prompt rows give the bits they gave before.

Layout: W [R, C] (R % 16 == 0) as uint8 [R, C // 32 * type_size] like its blocks, read as [R / 16, nkb * KB]:
for group g (rows 16 g .. 16 g + 15) and k-block kb (columns 32 kb .. 32 kb + 31) KB bytes at kb * KB:

    Q4_0 (KB = 288 = 16 x 18)
    offset  size  field
    0       32    the 16 rows' fp16 scales d, row order
    32      256   4 vectors of 64 bytes; vector j, byte 4 r + i (row r, i < 4):
                  low nibble = q[r, 8 j + i], high nibble = q[r, 8 j + 4 + i]   (levels 0..15, value (q - 8) d)

    Q8_0 (KB = 544 = 16 x 34)
    0       32    the 16 rows' fp16 scales d
    32      512   8 vectors of 64 bytes; vector j, byte 4 r + i = q[r, 4 j + i] XOR 0x80 (q + 128: unsigned)

    Q4_1 (KB = 320 = 16 x 20): Q4_0's with the 16 rows' fp16 minimums m at 32 (value = d q + m), levels at 64

    Q4_K, per super-block of 256 columns (2304 = 16 x 144 bytes; its 8 sub-blocks are the k-blocks)
    0       32    the 16 rows' fp16 d
    32      32    the 16 rows' fp16 dmin
    64      192   the 12 packed scale bytes: byte b of row r at 16 b + r (6-bit sc, m unpacked for 16 rows at once)
    256     2048  sub-block s at 256 s: its levels in Q4_0's 256-byte nibble layout
                  (value = d sc[s] q - dmin m[s], levels centred on 8 as in vnni.py)

Every (row, token) result is computed alone (lanes are rows, accumulators are tokens; int32 sums are
exact, so the order of the 4-token and 1-token passes does not matter): a token's output does not depend
on how many others share the call. `pack`/`unpack` are exact inverses (tests: against the NumPy references).
"""
import numpy as np
from numba import njit, prange

from ..kernels.simd import bitcast, dpbusd, fma, fp16_to_f32, load, load_splat, sitofp, splat, store, zext
from .common import FASTMATH
from .vnni import mm_setup

GROUP = 16  # rows interleaved together: the 16 int32 lanes of an accumulator
KB_BYTES = 288  # Q4_0: bytes of one (group, k-block): 16 fp16 scales + 16 rows x 32 nibbles
TYPE_SIZE = 18  # Q4_0's block: fp16 d, 16 bytes of nibbles
KB_BYTES8 = 544  # Q8_0: 16 fp16 scales + 16 rows x 32 bytes
TYPE_SIZE8 = 34
TYPE_SIZE_K = 144  # Q4_K's super-block of 256
SB_BYTES = 2304  # Q4_K: bytes of one (group, super-block)
KB_BYTES41 = 320  # Q4_1: 16 fp16 scales, 16 fp16 minimums, 16 rows x 32 nibbles
TYPE_SIZE41 = 20
FORMATS = ("q4_0", "q8_0", "q4_k", "q4_1")  # the formats with an interleaved layout
# blocks of 32: (bytes per block, fp16 header fields (d; Q4_1: d, m), levels as bytes (else nibbles))
LEGACY = {"q4_0": (TYPE_SIZE, 1, False), "q8_0": (TYPE_SIZE8, 1, True), "q4_1": (TYPE_SIZE41, 2, False)}


def eligible(fmt: str, shape) -> bool:
    """Whether a matrix of this format and shape can be interleaved (whole groups of 16 rows)."""
    width = 256 if fmt == "q4_k" else 32
    return fmt in FORMATS and shape[0] % GROUP == 0 and shape[0] > 0 and shape[1] % width == 0 and shape[1] > 0


# ---------------------------------------------------------------------------------------------
# The layout: NumPy references and the Numba packer used at load
# ---------------------------------------------------------------------------------------------


def _nibbles(lv: np.ndarray) -> np.ndarray:
    """levels uint8 [G, 16 rows, K, 32] -> Q4_0's 256-byte nibble layout per k-block: [G, K, 256]."""
    G, _, K, _ = lv.shape
    wt = lv.reshape(G, GROUP, K, 8, 4).transpose(0, 2, 3, 1, 4)  # [g, kb, k-group of 4 columns, row, i]
    return (wt[:, :, 0::2] | (wt[:, :, 1::2] << np.uint8(4))).reshape(G, K, 256)  # [g, kb, j, row, i]


def _row_nibbles(P: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Inverse of _nibbles for rows r of groups P [n, K, 256] -> levels [n, K, 32]."""
    n, K = P.shape[:2]
    mine = P.reshape(n, K, 4, GROUP, 4).transpose(0, 3, 1, 2, 4)[np.arange(n), r]  # [n, kb, j, i]
    return np.stack([mine & np.uint8(15), mine >> np.uint8(4)], axis=3).reshape(n, K, 32)  # columns 8j + 4h + i


def _by_row(P: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Fields stored as [K, size, 16 rows] (byte b of row r at 16 b + r) -> rows r: [n, K, size]."""
    n, K = P.shape[:2]
    return P.reshape(n, K, size, GROUP).transpose(0, 3, 1, 2)[np.arange(n), r]


def _pack_ref_k(blocks: np.ndarray, cols: int) -> np.ndarray:
    R, nsb = blocks.shape[0], cols // 256
    G = R // GROUP
    b = blocks.reshape(G, GROUP, nsb, TYPE_SIZE_K)
    d = b[..., 0:2].transpose(0, 2, 1, 3).reshape(G, nsb, 32)  # fp16 d, row order
    dmin = b[..., 2:4].transpose(0, 2, 1, 3).reshape(G, nsb, 32)
    sc = b[..., 4:16].transpose(0, 2, 3, 1).reshape(G, nsb, 192)  # byte b of row r at 16 b + r
    qs = b[..., 16:].reshape(G, GROUP, nsb, 4, 1, 32)  # chunk c: sub-blocks 2c (low nibbles), 2c + 1 (high)
    lv = np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=4).reshape(G, GROUP, nsb * 8, 32)
    out = np.concatenate([d, dmin, sc, _nibbles(lv).reshape(G, nsb, 2048)], axis=-1)
    return np.ascontiguousarray(out).reshape(blocks.shape)


def _unpack_rows_k(packed: np.ndarray, ids: np.ndarray, cols: int) -> np.ndarray:
    nsb = cols // 256
    P = packed.reshape(-1, nsb, SB_BYTES)[ids // GROUP]
    n, r = len(ids), ids % GROUP
    d = P[..., :32].reshape(n, nsb, GROUP, 2).transpose(0, 2, 1, 3)[np.arange(n), r]
    dmin = P[..., 32:64].reshape(n, nsb, GROUP, 2).transpose(0, 2, 1, 3)[np.arange(n), r]
    sc = _by_row(P[..., 64:256], r, 12)
    q = _row_nibbles(P[..., 256:].reshape(n, nsb * 8, 256), r).reshape(n, nsb, 4, 2, 32)
    qs = (q[:, :, :, 0] | (q[:, :, :, 1] << np.uint8(4))).reshape(n, nsb, 128)
    return np.concatenate([d, dmin, sc, qs], axis=-1).reshape(n, nsb * TYPE_SIZE_K)


def pack_ref(blocks: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """Blocks uint8 [R, bytes per row] of format fmt (FORMATS) -> the interleaved layout (same shape; R % 16 == 0)."""
    if fmt == "q4_k":
        return _pack_ref_k(blocks, cols)
    ts, nfields, as_bytes = LEGACY[fmt]
    R, nkb = blocks.shape[0], cols // 32
    G = R // GROUP
    b = blocks.reshape(G, GROUP, nkb, ts)
    head = 2 * nfields
    fields = [b[..., 2 * f:2 * f + 2].transpose(0, 2, 1, 3).reshape(G, nkb, 32) for f in range(nfields)]  # row order
    qs = b[..., head:]
    if as_bytes:  # Q8_0: int8 + 128, k-group j of 4 columns at 64 j
        lv = (qs ^ np.uint8(0x80)).reshape(G, GROUP, nkb, 8, 4).transpose(0, 2, 3, 1, 4).reshape(G, nkb, 512)
    else:  # qs[l] & 15 is column l, qs[l] >> 4 column l + 16
        lv = _nibbles(np.concatenate([qs & np.uint8(15), qs >> np.uint8(4)], axis=-1))
    out = np.concatenate(fields + [lv], axis=-1)
    return np.ascontiguousarray(out).reshape(blocks.shape)


def unpack_rows(packed: np.ndarray, ids: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """The blocks [len(ids), bytes per row] of rows `ids` (valid indices) of an interleaved matrix of format fmt."""
    if fmt == "q4_k":
        return _unpack_rows_k(packed, ids, cols)
    ts, nfields, as_bytes = LEGACY[fmt]
    nkb = cols // 32
    P = packed.reshape(-1, nkb, GROUP * ts)[ids // GROUP]  # [n, kb, KB]
    n, r = len(ids), ids % GROUP
    head = 32 * nfields
    fields = [P[:, :, 32 * f:32 * f + 32].reshape(n, nkb, GROUP, 2).transpose(0, 2, 1, 3)[np.arange(n), r]
              for f in range(nfields)]  # [n, kb, 2] each
    if as_bytes:
        lv = P[:, :, head:].reshape(n, nkb, 8, GROUP, 4).transpose(0, 3, 1, 2, 4)[np.arange(n), r]  # [n, kb, kk, i]
        qs = lv.reshape(n, nkb, 32) ^ np.uint8(0x80)
    else:
        q = _row_nibbles(P[:, :, head:], r)
        qs = q[:, :, :16] | (q[:, :, 16:] << np.uint8(4))
    return np.concatenate(fields + [qs], axis=-1).reshape(n, nkb * ts)


def unpack(packed: np.ndarray, cols: int, fmt: str) -> np.ndarray:
    """The interleaved layout -> the blocks in ggml's row order (a copy)."""
    return unpack_rows(packed, np.arange(packed.shape[0]), cols, fmt)


@njit(parallel=True, cache=True)
def pack(blocks, out, cols, k_quant):
    """out = pack_ref(blocks, cols, fmt): blocks uint8 [R, bytes per row] (R % 16 == 0) -> the same shape, for
    Q4_K (k_quant) or Q4_0 / Q8_0 / Q4_1 (told apart by their block size)."""
    R, bpr = blocks.shape
    nkb = cols // 32
    ts = bpr // nkb
    flat = out.reshape(-1)
    if k_quant:
        _pack_k(blocks, flat, cols)
        return
    for g in prange(R // GROUP):
        base = g * GROUP * bpr
        for r in range(GROUP):
            row = blocks[GROUP * g + r]
            for kb in range(nkb):
                o = kb * ts
                dst = base + kb * GROUP * ts
                head = 4 if ts == TYPE_SIZE41 else 2  # fp16 d (and Q4_1's m)
                for k in range(head):
                    flat[dst + 32 * (k >> 1) + 2 * r + (k & 1)] = row[o + k]
                lv = dst + 16 * head
                if ts == TYPE_SIZE8:
                    for kk in range(8):
                        for i in range(4):
                            flat[lv + 64 * kk + 4 * r + i] = row[o + 2 + 4 * kk + i] ^ 0x80
                    continue
                for j in range(4):
                    for i in range(4):
                        flat[lv + 64 * j + 4 * r + i] = _level(row, o + head, 8 * j + i) | (_level(row, o + head, 8 * j + 4 + i) << 4)


@njit(inline="always")
def _pack_k(blocks, flat, cols):
    R, bpr = blocks.shape
    for g in prange(R // GROUP):
        for r in range(GROUP):
            row = blocks[GROUP * g + r]
            for sb in range(cols // 256):
                o = sb * TYPE_SIZE_K
                dst = g * GROUP * bpr + sb * SB_BYTES
                for k in range(2):
                    flat[dst + 2 * r + k] = row[o + k]  # d
                    flat[dst + 32 + 2 * r + k] = row[o + 2 + k]  # dmin
                for k in range(12):
                    flat[dst + 64 + 16 * k + r] = row[o + 4 + k]
                for j in range(8):  # sub-block j: chunk j // 2, low nibbles for even j
                    q = row[o + 16 + 32 * (j >> 1): o + 16 + 32 * (j >> 1) + 32]
                    sh = 4 * (j & 1)
                    for jj in range(4):
                        for i in range(4):
                            lo = (np.int64(q[8 * jj + i]) >> sh) & 15
                            hi = (np.int64(q[8 * jj + 4 + i]) >> sh) & 15
                            flat[dst + 256 + 256 * j + 64 * jj + 4 * r + i] = lo | (hi << 4)


@njit(inline="always")
def _level(row, o, l):
    """Level l (0..31) of the nibbles qs at byte o of a row: qs[l] & 15 for l < 16, qs[l - 16] >> 4 after."""
    return np.int64(row[o + l] & 15) if l < 16 else np.int64(row[o + l - 16] >> 4)


# ---------------------------------------------------------------------------------------------
# The kernel: out[t, r] = sum_c W[r, c] * X[t, c] for any n, up to three matrices sharing X
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _kb4(w, o, XH32, XL32, a0, a1, a2, a3, k0):
    """One k-block (w bytes o .. o + 256: the 4 nibble vectors) of 16 rows times 4 tokens (dword offsets a0..a3
    of their planes; k0 = the k-block's first k-group): the int32 lane sums of q * H and q * L per token."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; h2 = z; h3 = z; l0 = z; l1 = z; l2 = z; l3 = z  # noqa: E702
    m = splat(np.uint8(15), 64)
    for j in range(4):
        p = load(w, o + 64 * j, 64)
        for half in range(2):
            q = (p & m) if half == 0 else ((p >> np.uint8(4)) & m)
            k = k0 + 2 * j + half
            h0 = dpbusd(h0, q, load_splat(XH32, a0 + k, 16)); l0 = dpbusd(l0, q, load_splat(XL32, a0 + k, 16))  # noqa: E702
            h1 = dpbusd(h1, q, load_splat(XH32, a1 + k, 16)); l1 = dpbusd(l1, q, load_splat(XL32, a1 + k, 16))  # noqa: E702
            h2 = dpbusd(h2, q, load_splat(XH32, a2 + k, 16)); l2 = dpbusd(l2, q, load_splat(XL32, a2 + k, 16))  # noqa: E702
            h3 = dpbusd(h3, q, load_splat(XH32, a3 + k, 16)); l3 = dpbusd(l3, q, load_splat(XL32, a3 + k, 16))  # noqa: E702
    return h0, h1, h2, h3, l0, l1, l2, l3


@njit(inline="always")
def _kb1(w, o, XH32, XL32, a0, k0):
    """_kb4 for one token (two accumulators per plane: the low and the high nibbles, summed exactly)."""
    z = splat(np.int32(0), 16)
    h0 = z; h1 = z; l0 = z; l1 = z  # noqa: E702
    m = splat(np.uint8(15), 64)
    for j in range(4):
        p = load(w, o + 64 * j, 64)
        lo = p & m
        hi = (p >> np.uint8(4)) & m
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
def _epilogue(h, l, sxk, cck, e, D, f):
    """f + D * (sum q * x16 * sx - z * sum x16 * sx) for one k-block (cck holds the second term, z the level
    offset: 8 or 128): the VNNI prefill kernel's arithmetic."""
    return fma(fma(sitofp((h << 8) + l), load_splat(sxk, e, 16), load_splat(cck, e, 16)), D, f)


@njit(inline="always")
def _pass4(kb4, kbytes, has_min, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    """out[t0 .. t0 + 3, r0 : r0 + 16] from the interleaved group at byte `base` of w (flat): k-blocks of
    `kbytes`, their fp16 scales (and with `has_min` the fp16 minimums after them), then the levels."""
    f0 = splat(np.float32(0.0), 16)
    f1 = f0; f2 = f0; f3 = f0  # noqa: E702
    a0 = t0 * C4
    e0 = t0 * nkb
    for kb in range(nkb):
        o = base + kb * kbytes
        h0, h1, h2, h3, l0, l1, l2, l3 = kb4(w, o + (64 if has_min else 32), XH32, XL32, a0, a0 + C4, a0 + 2 * C4,
                                             a0 + 3 * C4, 8 * kb)
        D = fp16_to_f32(bitcast(load(w, o, 32), np.uint16))
        if has_min:
            M = fp16_to_f32(bitcast(load(w, o + 32, 32), np.uint16))
            f0 = _epilogue_min(h0, l0, sxk, cck, xek, e0 + kb, D, M, f0)
            f1 = _epilogue_min(h1, l1, sxk, cck, xek, e0 + nkb + kb, D, M, f1)
            f2 = _epilogue_min(h2, l2, sxk, cck, xek, e0 + 2 * nkb + kb, D, M, f2)
            f3 = _epilogue_min(h3, l3, sxk, cck, xek, e0 + 3 * nkb + kb, D, M, f3)
        else:
            f0 = _epilogue(h0, l0, sxk, cck, e0 + kb, D, f0)
            f1 = _epilogue(h1, l1, sxk, cck, e0 + nkb + kb, D, f1)
            f2 = _epilogue(h2, l2, sxk, cck, e0 + 2 * nkb + kb, D, f2)
            f3 = _epilogue(h3, l3, sxk, cck, e0 + 3 * nkb + kb, D, f3)
    store(out[t0], r0, f0)
    store(out[t0 + 1], r0, f1)
    store(out[t0 + 2], r0, f2)
    store(out[t0 + 3], r0, f3)


@njit(inline="always")
def _pass1(kb1, kbytes, has_min, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    """out[t0, r0 : r0 + 16] (one token: _pass4's arithmetic)."""
    f0 = splat(np.float32(0.0), 16)
    for kb in range(nkb):
        o = base + kb * kbytes
        h0, l0 = kb1(w, o + (64 if has_min else 32), XH32, XL32, t0 * C4, 8 * kb)
        D = fp16_to_f32(bitcast(load(w, o, 32), np.uint16))
        if has_min:
            M = fp16_to_f32(bitcast(load(w, o + 32, 32), np.uint16))
            f0 = _epilogue_min(h0, l0, sxk, cck, xek, t0 * nkb + kb, D, M, f0)
        else:
            f0 = _epilogue(h0, l0, sxk, cck, t0 * nkb + kb, D, f0)
    store(out[t0], r0, f0)


@njit(inline="always")
def _groups(p4, p1, w, g0, g1, nkb, XH32, XL32, sxk, cck, xek, C4, n, out):
    """out[t, 16 g0 : 16 g1] for every token t: groups g0 .. g1 - 1 of the interleaved matrix w, in blocks of
    TOKEN_BLOCK tokens (a prefill of 512 tokens has 2 MB of activation planes at C = 2048: read from L3 once
    per group without the blocking)."""
    bpg = GROUP * w.shape[1]  # bytes per group
    n4 = n // 4 * 4
    for tb in range(0, n4, TOKEN_BLOCK):
        for g in range(g0, g1):
            for t0 in range(tb, min(n4, tb + TOKEN_BLOCK), 4):
                p4(w, g * bpg, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, g * GROUP)
    for g in range(g0, g1):
        for t0 in range(n4, n):
            p1(w, g * bpg, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, g * GROUP)


SUPER = 4  # groups per parallel task
TOKEN_BLOCK = 32  # tokens whose activation planes (32 x C x 2 bytes: 128 KB at C = 2048) stay in L2 while a
# task's groups pass over them, each group's weights (18 KB at C = 2048) in L1 during its passes


@njit(inline="always")
def _matmul(p4, p1, z, centre, a, b, c, X, oa, ob, oc):
    """oa[t] = A @ X[t], ob[t] = B @ X[t], oc[t] = C @ X[t] for any n tokens (A, B, C interleaved, of the same
    width, rows multiples of 16; 0-row arrays for unused ones): the activations prepared once, one launch
    over all their groups, in tasks of SUPER groups. p4 / p1: the format's passes over a group for 4 tokens
    and for 1; z, centre: its levels' offset, and whether they are centred on it (formats with minimums)."""
    n, C = X.shape
    nkb = C // 32
    C4 = C // 4
    XH32, XL32, sxk, cck, xek, n4 = mm_setup(X, 32, z, centre)
    sa = (a.shape[0] // GROUP + SUPER - 1) // SUPER  # tasks per matrix
    sab = sa + (b.shape[0] // GROUP + SUPER - 1) // SUPER
    for task in prange(sab + (c.shape[0] // GROUP + SUPER - 1) // SUPER):
        ti = np.int64(task)
        if ti < sa:
            _groups(p4, p1, a, SUPER * ti, min(a.shape[0] // GROUP, SUPER * ti + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, oa)
        elif ti < sab:
            s = ti - sa
            _groups(p4, p1, b, SUPER * s, min(b.shape[0] // GROUP, SUPER * s + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, ob)
        else:
            s = ti - sab
            _groups(p4, p1, c, SUPER * s, min(c.shape[0] // GROUP, SUPER * s + SUPER), nkb, XH32, XL32,
                    sxk, cck, xek, C4, n, oc)


# each format's passes (see _matmul)
@njit(inline="always")
def _p4_q4_0(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass4(_kb4, KB_BYTES, False, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _p1_q4_0(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass1(_kb1, KB_BYTES, False, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _p4_q8_0(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass4(_kb4_q8, KB_BYTES8, False, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _p1_q8_0(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass1(_kb1_q8, KB_BYTES8, False, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _p4_q4_1(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass4(_kb4, KB_BYTES41, True, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _p1_q4_1(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    _pass1(_kb1, KB_BYTES41, True, w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0)


@njit(inline="always")
def _k_scales(w, o, j, d, ndmin):
    """(D, M) float32 <16> of sub-block j for the 16 rows of a Q4_K super-block at byte o (d, ndmin: its
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


@njit(inline="always")
def _k_supers(w, o):
    """(d, -dmin) float32 <16> of the 16 rows of a Q4_K super-block at byte o (negated exactly)."""
    return (fp16_to_f32(bitcast(load(w, o, 32), np.uint16)),
            fp16_to_f32(bitcast(load(w, o + 32, 32), np.uint16)) * splat(np.float32(-1.0), 16))


@njit(inline="always")
def _epilogue_min(h, l, sxk, cck, xek, e, D, M, f):
    """_epilogue plus the minimums' term M * sum(x) (mm_group's arithmetic for formats with minimums)."""
    return fma(M, load_splat(xek, e, 16), _epilogue(h, l, sxk, cck, e, D, f))


@njit(inline="always")
def _p4_q4_k(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    f0 = splat(np.float32(0.0), 16)
    f1 = f0; f2 = f0; f3 = f0  # noqa: E702
    a0 = t0 * C4
    e0 = t0 * nkb
    for sb in range(nkb // 8):
        o = base + sb * SB_BYTES
        d, ndmin = _k_supers(w, o)
        for j in range(8):
            kb = 8 * sb + j
            D, M = _k_scales(w, o, j, d, ndmin)
            h0, h1, h2, h3, l0, l1, l2, l3 = _kb4(w, o + 256 + 256 * j, XH32, XL32, a0, a0 + C4, a0 + 2 * C4,
                                                  a0 + 3 * C4, 8 * kb)
            f0 = _epilogue_min(h0, l0, sxk, cck, xek, e0 + kb, D, M, f0)
            f1 = _epilogue_min(h1, l1, sxk, cck, xek, e0 + nkb + kb, D, M, f1)
            f2 = _epilogue_min(h2, l2, sxk, cck, xek, e0 + 2 * nkb + kb, D, M, f2)
            f3 = _epilogue_min(h3, l3, sxk, cck, xek, e0 + 3 * nkb + kb, D, M, f3)
    store(out[t0], r0, f0)
    store(out[t0 + 1], r0, f1)
    store(out[t0 + 2], r0, f2)
    store(out[t0 + 3], r0, f3)


@njit(inline="always")
def _p1_q4_k(w, base, nkb, XH32, XL32, sxk, cck, xek, C4, t0, out, r0):
    f0 = splat(np.float32(0.0), 16)
    for sb in range(nkb // 8):
        o = base + sb * SB_BYTES
        d, ndmin = _k_supers(w, o)
        for j in range(8):
            kb = 8 * sb + j
            D, M = _k_scales(w, o, j, d, ndmin)
            h0, l0 = _kb1(w, o + 256 + 256 * j, XH32, XL32, t0 * C4, 8 * kb)
            f0 = _epilogue_min(h0, l0, sxk, cck, xek, t0 * nkb + kb, D, M, f0)
    store(out[t0], r0, f0)


# The kernels, one per format, with the signature of the formats' matmul_vnni (decode_step calls them by
# address); `prefill` is ignored: one kernel for every n.
@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_0(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_0 (see _matmul): levels offset by 8."""
    _matmul(_p4_q4_0, _p1_q4_0, 8, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q8_0(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q8_0 (see _matmul): int8 levels stored + 128."""
    _matmul(_p4_q8_0, _p1_q8_0, 128, False, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_k(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_K (see _matmul): minimums, levels centred on 8."""
    _matmul(_p4_q4_k, _p1_q4_k, 8, True, a, b, c, X, oa, ob, oc)


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_q4_1(a, b, c, X, oa, ob, oc, prefill):
    """Interleaved Q4_1 (see _matmul): minimums, levels centred on 8."""
    _matmul(_p4_q4_1, _p1_q4_1, 8, True, a, b, c, X, oa, ob, oc)


KERNELS = {"q4_0": matmul_q4_0, "q8_0": matmul_q8_0, "q4_k": matmul_q4_k, "q4_1": matmul_q4_1}
