"""Q5_K: 5-bit weights in super-blocks of 256 = 8 sub-blocks of 32, each sub-block with a 6-bit scale and
a 6-bit minimum, and two fp16 super-scales (ggml's GGML_TYPE_Q5_K, 5.5 bits/weight).

Super-block layout (176 bytes, identical to ggml's `block_q5_K`):

    offset  size  field
    0       2     d        fp16 super-scale of the sub-block scales
    2       2     dmin     fp16 super-scale of the sub-block minimums
    4       12    scales   8 scales and 8 minimums, 6 bits each, packed as Q4_K's (see q4_k)
    16      32    qh       the fifth bits: bit s of qh[l] belongs to element 32 s + l (sub-block s)
    48      128   qs       low nibbles in 4 chunks of 32 bytes, as Q4_K's: element 64c + l is
                           qs[32c + l] & 0xF and element 64c + 32 + l is qs[32c + l] >> 4 (l < 32)

    value = (d * sc[s]) * q - (dmin * m[s]),  q = nibble | fifth bit << 4, in 0..31

Quantization follows ggml's `quantize_row_q5_K_ref` (the one llama.cpp uses without an importance
matrix), vectorized as Q4_K's: per sub-block `make_qkx2_quants` with nmax 31, 16 grids (rmin -0.5,
step 0.1), weights rms(x) + |x|; 6-bit scales and minimums against the largest; every element re-rounded.
Error bound: with d_s = d * sc[s], m_s = dmin * m[s], the elements inside [-m_s, 31 d_s - m_s] are
within d_s / 2; clipped outliers are off by their distance to that range plus d_s / 2.
"""
import numpy as np
from gguf import GGMLQuantizationType
from numba import njit

from .common import FASTMATH, as_blocks, f16_bytes, quantize_rows
from .q4_k import decode_k, dot_k, fit_subblocks, nibble_chunks, pack_scales, prefill_k, scale_subblocks, setup_k
from .vnni import matmul, put8

ID = 8  # this format's index in kernels.MODULES
NAME = "q5_k"
GGML_TYPE = GGMLQuantizationType.Q5_K
BLOCK, SUB = 256, 32  # weights per super-block (8 sub-blocks), per sub-block
TYPE_SIZE = 176


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 blocks [R, C // 256 * 176] -> float32 [R, C]."""
    b = as_blocks(blocks, cols, BLOCK, TYPE_SIZE, NAME)
    qh = b[..., None, 16:48] >> np.arange(8, dtype=np.uint8).reshape(8, 1)  # [R, nsb, 8, 32]
    return scale_subblocks(b, nibble_chunks(b, 48) | ((qh & np.uint8(1)) << np.uint8(4)))


def _quantize_superblocks(x: np.ndarray) -> np.ndarray:
    """x float32 [N, 256] -> uint8 [N, 176]."""
    ls, lm, d, dmin, L = fit_subblocks(x, SUB, 31, 63, True, rmin=-0.5, rdelta=0.1, nstep=15)
    n = x.shape[0]
    L = L.reshape(n, 8, SUB)
    qh = np.zeros((n, SUB), np.uint8)
    for s in range(8):
        qh |= (L[:, s] >> 4) << np.uint8(s)
    L = (L & np.uint8(15)).reshape(n, 4, 2, SUB)
    qs = (L[:, :, 0] | (L[:, :, 1] << np.uint8(4))).reshape(n, 128)
    return np.concatenate([f16_bytes(d), f16_bytes(dmin), pack_scales(ls, lm), qh, qs], axis=1)


def quantize(w: np.ndarray) -> np.ndarray:
    """float32 [R, C] -> uint8 blocks [R, C // 256 * 176]."""
    return quantize_rows(w, BLOCK, TYPE_SIZE, NAME, _quantize_superblocks)


@njit(inline="always")
def decode_block(row, i, dst, xb, dot):
    """Super-block i of a row (uint8 [C // 256 * 176]) into dst float32 [256] (see q4_k.decode_k)."""
    decode_k(row, i, dst, xb, dot, VNNI)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py): Q4_K's kernels (q4_k.dot_k, prefill_k) with the fifth bits; levels 0..31 centred on 16.
# ---------------------------------------------------------------------------------------------

VNNI = 176, 48, True, 16  # decode (q4_k.setup_k, dot_k): super-block bytes, nibbles at 48, fifth bits, centre 16
PREFILL = 32, 16, True  # VNNI prefill: k-blocks of a sub-block, levels centred on 16, minimums


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of a super-block, prefill k-blocks of a sub-block."""
    matmul(setup_k, dot_k, None, VNNI, 0, decode_block, prefill_k, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
