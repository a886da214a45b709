"""int4_g128: 4-bit weights in groups of 128 input features with an fp16 scale and an fp16 minimum
(asymmetric, with a zero point; our own format, not a ggml type; 4.25 bits/weight).

Group layout (68 bytes):

    offset  size  field
    0       2     s      fp16 scale, little-endian
    2       2     m      fp16 minimum (the value of q = 0), little-endian
    4       64    qs     nibbles: qs[j] & 0xF is element j, qs[j] >> 4 is element j + 64 (j < 64)

    value = q * s + m,  q in 0..15

Why asymmetric: a group of 128 weights is rarely centred on zero, and a symmetric grid spends levels on
the side it does not need (Q4_0 maps the largest magnitude to -8 and the other side of the group gets
at most 7 levels, clipping the rest); with a minimum all 16 levels cover [min, max], and it is the scheme
of the int4 group-128 checkpoints (GPTQ, AWQ: scale + zero point per group of 128), so they convert
without re-rounding. The minimum costs nothing in the dot product: sum_j (q_j s + m) x_j =
s * sum_j q_j x_j + m * sum_j x_j, and the group sums of x are computed once per call.

Quantization: a search per group over the grid's range (as llama.cpp's make_qkx and AWQ's clip search):
  1. min-max rounding, the starting point and the fallback: m = the largest fp16 <= min, s = the smallest
     fp16 >= (max - m) / 15 (directed fp16 rounding, so that the stored grid covers the group),
     q = clip(rint((x - m) / s), 0, 15); every element within s/2;
  2. for each clip ratio r in CLIP_RATIOS, the range shrunk about the group's centre by r, then REFITS
     rounds of: levels q for the current (s, m), least-squares (s, m) for those levels; s and m rounded
     to fp16 and the levels recomputed;
  3. per group, the candidate with the least (weighted) squared error sum_j w_j (q_j s + m - x_j)^2,
     min-max included, so the search never does worse than step 1 under its own measure.
The weights w_j: `importance` [C] per input column when given (AWQ: the mean squared activation each
column multiplies, from a calibration pass, checkpoint/calibrate.py), else 1 (plain squared error).
Clipped elements are off the grid by more than s/2 (bounded by the range: |x - value| <= max - min).
Measured on SmolLM2's down projections (bench/README.md, "int4_g128 clip search"): the unweighted
search lowers the weights' rms error by ~11% but not the model's output error (KL divergence to fp32
unchanged, perplexity on short texts worse: it clips the large weights that matter), so without
importance quantize() keeps min-max rounding; with activation importance the KL divergence drops ~3x.
On Gaussian weights the rms error of min-max is about 0.10 * std (Q4_1's groups of 32 give 0.078).
"""
import numpy as np
from numba import njit

from ..errors import InputError
from ..kernels.simd import load, splat
from .common import FASTMATH, as_matrix, decode_affine_nibbles, dequantize_affine_nibbles, f16_at
from .vnni import GROUP128, dot_4blocks, dot4_4blocks, matmul, nibble_dot, put8, setup_4blocks

ID = 5  # this format's index in kernels.MODULES
NAME = "int4_g128"
GGML_TYPE = None  # our own format
BLOCK = 128
TYPE_SIZE = 68
PREFILL = 32, 8, True  # VNNI prefill: k-block columns (a quarter group), levels centred on 8, minimums


def _fp16_down(v: np.ndarray) -> np.ndarray:
    """The largest fp16 <= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) > v, np.nextafter(h, np.float16(-np.inf)), h)


def _fp16_up(v: np.ndarray) -> np.ndarray:
    """The smallest fp16 >= v, as float16."""
    h = v.astype(np.float16)
    return np.where(h.astype(np.float32) < v, np.nextafter(h, np.float16(np.inf)), h)


CLIP_RATIOS = (1.0, 0.9, 0.8, 0.7)  # candidate ranges, as fractions of max - min about the centre
REFITS = 3  # levels <-> least-squares (s, m) rounds per candidate
CHUNK = 2048  # groups per step: the float32 temporaries of a step stay in cache (~1 MiB each)


def _minmax(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Min-max (s, m) as fp16 per group of x [G, 128]: the grid covers the group (inf on overflow)."""
    lo = x.min(axis=-1)
    hi = x.max(axis=-1)
    with np.errstate(over="ignore", invalid="ignore"):
        m16 = _fp16_down(lo)
        m = m16.astype(np.float32)
        s16 = _fp16_up((hi - m) / np.float32(15))
        s = s16.astype(np.float32)
        # float32 rounding of (hi - m) / 15 can leave the top of the grid a hair below hi: one more step
        short = m + np.float32(15) * s < hi
        s16 = np.where(short, np.nextafter(s16, np.float16(np.inf)), s16)
    return s16, m16


def _levels(x: np.ndarray, s: np.ndarray, m: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = clip(rint((x - m) / s), 0, 15) per group, as float32 (0 where s == 0)."""
    np.subtract(x, m[:, None], out=out)
    np.divide(out, np.where(s > 0, s, np.float32(1))[:, None], out=out)
    np.rint(out, out=out)
    np.clip(out, 0, 15, out=out)
    out *= (s > 0)[:, None]
    return out


def _error(x, s, m, q, w, tmp) -> np.ndarray:
    """sum_j w_j (q_j s + m - x_j)^2 per group."""
    np.multiply(q, s[:, None], out=tmp)
    tmp += m[:, None]
    tmp -= x
    tmp *= tmp
    return np.einsum("ij,ij->i", tmp, w)


def search_groups(x: np.ndarray, w: np.ndarray | None = None):
    """x float32 [G, 128], w its weights (None: 1) -> (s16, m16, levels uint8 [G, 128], error [G]);
    levels None when min-max overflows fp16."""
    s16, m16 = _minmax(x)
    if not (np.isfinite(m16).all() and np.isfinite(s16).all()):
        return s16, m16, None, None
    w = np.ones_like(x) if w is None else w
    q, tmp = np.empty_like(x), np.empty_like(x)
    s, m = s16.astype(np.float32), m16.astype(np.float32)
    best = _error(x, s, m, _levels(x, s, m, q), w, tmp)
    lo, hi = x.min(axis=-1), x.max(axis=-1)
    c, half = (lo + hi) / 2, (hi - lo) / 2
    y = x - c[:, None]  # centred: the least-squares sums keep their precision for groups far from zero
    n, sy, wy = w.sum(axis=-1), np.einsum("ij,ij->i", w, y), w * y
    for r in CLIP_RATIOS:
        d, a = half * np.float32(2 * r / 15), -half * np.float32(r)  # step and bottom of the centred grid
        for _ in range(REFITS):
            _levels(y, d, a, q)
            sl = np.einsum("ij,ij->i", q, w)
            sll = np.einsum("ij,ij->i", q, np.multiply(q, w, out=tmp))
            syl = np.einsum("ij,ij->i", q, wy)
            det = n * sll - sl * sl
            ok = det > 0
            det = np.where(ok, det, np.float32(1))
            d2, a2 = (n * syl - sy * sl) / det, (sll * sy - sl * syl) / det
            ok &= d2 > 0
            d, a = np.where(ok, d2, d), np.where(ok, a2, a)
        with np.errstate(over="ignore", invalid="ignore"):
            cs16, cm16 = d.astype(np.float16), (a + c).astype(np.float16)
        cs, cm = cs16.astype(np.float32), cm16.astype(np.float32)
        fine = (cs > 0) & np.isfinite(cs) & np.isfinite(cm)
        cs, cm = np.where(fine, cs, s), np.where(fine, cm, m)
        err = _error(x, cs, cm, _levels(x, cs, cm, q), w, tmp)
        better = fine & (err < best)
        best = np.where(better, err, best)
        s16, m16 = np.where(better, cs16, s16), np.where(better, cm16, m16)
        s, m = np.where(better, cs, s), np.where(better, cm, m)
    return s16, m16, _levels(x, s, m, q).astype(np.uint8), best


def quantize(w: np.ndarray, importance: np.ndarray | None = None) -> np.ndarray:
    """float32 [R, C] -> uint8 groups [R, C // 128 * 68]. importance: float32 [C] >= 0, the weight of each
    input column's squared error in the clip search (None: min-max rounding, no search)."""
    w = as_matrix(w, BLOCK, NAME)
    rows, cols = w.shape
    x = w.reshape(-1, BLOCK)
    if importance is not None:
        importance = np.asarray(importance, np.float32)
        if importance.shape != (cols,) or not (np.isfinite(importance).all() and (importance >= 0).all()):
            raise InputError(f"{NAME}: importance must be {cols} finite values >= 0 (one per input column), "
                             f"got shape {importance.shape}")
        importance = importance + np.float32(1e-30) * (importance.max() + np.float32(1e-30))  # no all-zero group
        per_group = importance.reshape(1, cols // BLOCK, BLOCK)
    s16 = np.empty(len(x), np.float16)
    m16 = np.empty(len(x), np.float16)
    q = np.empty((len(x), BLOCK), np.uint8)
    for i in range(0, len(x), CHUNK):
        xi = x[i:i + CHUNK]
        if importance is None:
            s16[i:i + CHUNK], m16[i:i + CHUNK] = _minmax(xi)
            if np.isfinite(s16[i:i + CHUNK]).all() and np.isfinite(m16[i:i + CHUNK]).all():
                s = s16[i:i + CHUNK].astype(np.float32)
                qi = _levels(xi, s, m16[i:i + CHUNK].astype(np.float32), np.empty_like(xi)).astype(np.uint8)
            else:
                qi = None
        else:
            g = np.arange(i, i + len(xi)) % (cols // BLOCK)
            s16[i:i + CHUNK], m16[i:i + CHUNK], qi, _ = search_groups(xi, per_group[0, g])
        if qi is None:
            raise InputError(f"{NAME}: a group's minimum or scale overflows fp16 (weights too large, |w| up to "
                             f"{float(np.abs(w).max()):.3g})")
        q[i:i + CHUNK] = qi
    qs = q[:, : BLOCK // 2] | (q[:, BLOCK // 2:] << np.uint8(4))
    head = np.stack([s16, m16], axis=-1).astype("<f2").view(np.uint8)  # [G, 4]
    return np.concatenate([head, qs], axis=-1).reshape(rows, -1)


def dequantize(blocks: np.ndarray, cols: int) -> np.ndarray:
    """uint8 groups [R, C // 128 * 68] -> float32 [R, C]."""
    return dequantize_affine_nibbles(blocks, cols, BLOCK, TYPE_SIZE, NAME)


@njit(inline="always")
def decode_block(row, b, dst, xb, dot):
    """Block b of a row (uint8 [C // 128 * 68]) into dst float32 [128] (see common.put)."""
    decode_affine_nibbles(row, b, TYPE_SIZE, dst, xb, dot)


# ---------------------------------------------------------------------------------------------
# VNNI (see vnni.py). Matvec: one group (64 bytes of nibbles) per step; x-block j of a group =
# elements 16j..16j+15 and 64+16j..64+16j+15 (GROUP128: the lanes of the low and high nibbles that
# share an accumulator lane).
# ---------------------------------------------------------------------------------------------


@njit(inline="always")
def _step(row, g, H, L, spec):
    """Group g (vnni.dot_4blocks): its scale on all 16 lanes, its minimum for its 4 x-blocks."""
    o = g * 68
    return nibble_dot(load(row, o + 4, 64), H, L, 128 * g, False), splat(f16_at(row, o), 16), splat(f16_at(row, o + 2), 4)


@njit(inline="always")
def prefill_block(row, kb, spec):
    """k-block kb = columns 32 (kb % 4) .. of group kb // 4 (low nibbles of bytes 0..63, then high ones):
    (its 32 levels as <32 x u8>, its scale, its minimum), for the VNNI prefill."""
    j = kb & 3
    o = (kb >> 2) * 68
    q = load(row, o + 4 + 32 * (j & 1), 32)
    return q & np.uint8(15) if j < 2 else q >> 4, f16_at(row, o), f16_at(row, o + 2)


VNNI = True, GROUP128, 8, False, TYPE_SIZE  # vnni.setup_4blocks / dot_4blocks: minimums, layout, centre, table, step bytes


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def matmul_vnni(a, b, c, X, oa, ob, oc, prefill):
    """Its kernel (vnni.matmul): decode steps of one group, prefill k-blocks of a quarter group."""
    matmul(setup_4blocks, dot_4blocks, dot4_4blocks, _step, VNNI, 0, decode_block, prefill_block, put8, PREFILL, a, b, c, X, oa, ob, oc, prefill)
