"""Quantized block formats: ggml byte layouts, NumPy references, error bounds, Numba kernels, QuantizedWeight.

The kernels are compiled once per format (always called with read-only uint8 blocks, as QuantizedWeight
passes them), so the compile cost is 12 kernels, cached on disk after the first run.
"""
import importlib
from functools import partial
from types import SimpleNamespace

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llamacpu.errors import CheckpointError, InputError, LlamacpuError, UnsupportedError
from llamacpu.quant import FORMATS, QuantizedWeight, dequantize, get_format, kernels, quantize, registry

NAMES = list(FORMATS)
GGML_NAMES = [n for n in NAMES if FORMATS[n].ggml_type is not None]
# Byte offsets of the fp16 fields of each block (random bytes there could be inf/NaN).
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q4_k": (0, 2), "q6_k": (208,), "int4_g128": (0, 2),
              "q5_0": (0,), "q5_1": (0, 2), "q5_k": (0, 2), "q2_k": (80, 82), "q3_k": (108,), "iq4_nl": (0,),
              "iq4_xs": (0,)}


def module(name):
    return importlib.import_module(f"llamacpu.quant.{name}")


def portable(name):
    """The portable kernels of format `name` and their references (as the format modules once held them)."""
    fmt = registry.PORTABLE[name]
    return SimpleNamespace(FORMAT=fmt, matvec_ref=partial(kernels.matvec_ref, fmt),
                           matmul_ref=partial(kernels.matmul_ref, fmt))


def readonly(a):
    a = np.ascontiguousarray(a)
    a.flags.writeable = False
    return a


def random_blocks(name, rows, nblocks, rng, scale=0.01):
    """Random bytes in every field, with finite fp16 scales of about `scale` (either sign)."""
    fmt = FORMATS[name]
    b = rng.integers(0, 256, size=(rows, nblocks, fmt.type_size), dtype=np.uint8)
    for o in F16_FIELDS[name]:
        vals = (rng.uniform(-1, 1, size=(rows, nblocks)) * scale).astype("<f2")
        b[..., o:o + 2] = vals.view(np.uint8).reshape(rows, nblocks, 2)
    return b.reshape(rows, nblocks * fmt.type_size)


def test_registry_sizes_match_ggml():
    assert set(NAMES) == {"q8_0", "q4_0", "q4_1", "q4_k", "q6_k", "int4_g128", "q5_0", "q5_1", "q5_k", "q2_k",
                          "q3_k", "iq4_nl", "iq4_xs"}
    for name in GGML_NAMES:
        fmt = FORMATS[name]
        assert GGML_QUANT_SIZES[fmt.ggml_type] == (fmt.block_size, fmt.type_size)
        assert get_format(fmt.ggml_type) is fmt
        assert get_format(int(fmt.ggml_type)) is fmt
        assert get_format(name.upper()) is fmt
    assert (FORMATS["int4_g128"].block_size, FORMATS["int4_g128"].type_size) == (128, 68)


def test_unknown_formats_are_unsupported():
    with pytest.raises(UnsupportedError, match="q8_0.*int4_g128"):
        get_format("q3_xs")
    for t in (GGMLQuantizationType.IQ2_XXS, GGMLQuantizationType.IQ3_S, GGMLQuantizationType.TQ1_0,
              GGMLQuantizationType.Q8_1, GGMLQuantizationType.F16):
        with pytest.raises(UnsupportedError, match=t.name):
            get_format(t)
    with pytest.raises(UnsupportedError):
        get_format(9999)


# ---------------------------------------------------------------------------------------------
# Layouts: our references against gguf's
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", GGML_NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_dequantize_matches_gguf_on_random_bytes(name, data):
    fmt = FORMATS[name]
    rows = data.draw(st.integers(1, 3))
    nb = data.draw(st.integers(1, 3))
    b = data.draw(arrays(np.uint8, (rows, nb, fmt.type_size)))
    for o in F16_FIELDS[name]:  # keep the fp16 scales finite: inf * 0 would make NaNs on both sides
        h = b[..., o:o + 2].copy().view("<f2")
        h[~np.isfinite(h)] = 1.5
        b[..., o:o + 2] = h.view(np.uint8)
    b = b.reshape(rows, nb * fmt.type_size)
    ours = fmt.dequantize(b, nb * fmt.block_size)
    ref = gguf.quants.dequantize(b, fmt.ggml_type)
    np.testing.assert_array_equal(ours, ref)


def edge_rows(cols, rng):
    """Rows that hit the corner cases of the reference quantizers."""
    rows = [
        np.zeros(cols),  # all zero: d = 0
        np.full(cols, 0.37),  # constant
        np.full(cols, -0.2),  # constant negative (a Q4_K sub-block with max == min)
        np.tile(np.arange(-16, 16) / 2.0, cols // 32),  # exact halves: roundf ties away from zero
        np.tile(np.r_[127.0, 0.5, -0.5, 1.5, -2.5, 126.5, np.zeros(26)], cols // 32),  # d = 1 exactly
        np.where(np.arange(cols) % 17 == 0, 5.0, rng.standard_normal(cols) * 0.01),  # outliers
        rng.uniform(0.5, 1.0, cols),  # all positive, away from zero
        rng.standard_normal(cols) * 1e-6,  # tiny: fp16 subnormal scales
    ]
    return np.array(rows, np.float32)


@pytest.mark.parametrize("name", ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"])
def test_quantize_is_byte_identical_to_gguf(name):
    rng = np.random.default_rng(1)
    w = np.concatenate([rng.standard_normal((40, 256)).astype(np.float32) * 0.03, edge_rows(256, rng)])
    ours = quantize(name, w)
    np.testing.assert_array_equal(ours, gguf.quants.quantize(w, FORMATS[name].ggml_type))


# ---------------------------------------------------------------------------------------------
# Error bounds of dequantize(quantize(w)), as stated in each module
# ---------------------------------------------------------------------------------------------

def fields(name, blocks, cols):
    fmt = FORMATS[name]
    return blocks.reshape(blocks.shape[0], cols // fmt.block_size, fmt.type_size)


def f16(b3, o):
    return b3[..., o:o + 2].copy().view("<f2")[..., 0].astype(np.float32)


def error_bound(name, w, blocks):
    """Per-element bound [R, nb, block] on |w - dequantize(quantize(w))| from each module's docstring."""
    rows, cols = w.shape
    fmt = FORMATS[name]
    x = w.reshape(rows, -1, fmt.block_size)
    b3 = fields(name, blocks, cols)
    tiny = 4 * np.finfo(np.float32).eps * np.abs(x).max(axis=-1, keepdims=True)
    if name == "q8_0":
        d = np.abs(x).max(axis=-1) / np.float32(127)
        return (d / 2 + 127 * np.abs(f16(b3, 0) - d))[..., None] + tiny
    if name == "q4_0":
        big = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        d = big / np.float32(-8)
        t = np.divide(x, d[..., None], out=np.zeros_like(x), where=d[..., None] != 0)
        within = np.where(t <= 7.5, np.abs(d)[..., None] / 2, np.abs(d)[..., None] * (t - 7))
        return within + (8 * np.abs(f16(b3, 0) - d))[..., None] + tiny
    if name == "q4_1":
        lo, hi = x.min(axis=-1), x.max(axis=-1)
        d = (hi - lo) / np.float32(15)
        return (d / 2 + 15 * np.abs(f16(b3, 0) - d) + np.abs(f16(b3, 2) - lo))[..., None] + tiny
    if name == "int4_g128":
        return f16(b3, 0)[..., None] / 2 + tiny
    if name == "q4_k":
        sc, m = module("q4_k").unpack_scales(b3[..., 4:16])
        ds = (f16(b3, 0)[..., None] * sc).repeat(32, axis=-1)
        ms = (f16(b3, 2)[..., None] * m).repeat(32, axis=-1)
        outside = np.maximum(0, np.maximum(-ms - x, x - (15 * ds - ms)))
        return ds / 2 + outside + tiny
    if name == "q6_k":
        sc = b3[..., 192:208].view(np.int8).astype(np.float32)
        ds = np.abs(f16(b3, 208)[..., None] * sc).repeat(16, axis=-1)
        sign = np.sign(f16(b3, 208)[..., None] * sc).repeat(16, axis=-1)
        xs = x * np.where(sign == 0, 1, sign)  # in units where the grid is [-32 ds, 31 ds]
        outside = np.maximum(0, np.maximum(-32 * ds - xs, xs - 31 * ds))
        return ds / 2 + outside + tiny
    if name == "q5_0":
        big = np.take_along_axis(x, np.abs(x).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        d = big / np.float32(-16)
        t = np.divide(x, d[..., None], out=np.zeros_like(x), where=d[..., None] != 0)
        within = np.where(t <= 15.5, np.abs(d)[..., None] / 2, np.abs(d)[..., None] * (t - 15))
        return within + (16 * np.abs(f16(b3, 0) - d))[..., None] + tiny
    if name == "q5_1":
        lo, hi = x.min(axis=-1), x.max(axis=-1)
        d = (hi - lo) / np.float32(31)
        return (d / 2 + 31 * np.abs(f16(b3, 0) - d) + np.abs(f16(b3, 2) - lo))[..., None] + tiny
    if name == "q5_k":
        sc, m = module("q4_k").unpack_scales(b3[..., 4:16])
        ds = (f16(b3, 0)[..., None] * sc).repeat(32, axis=-1)
        ms = (f16(b3, 2)[..., None] * m).repeat(32, axis=-1)
        outside = np.maximum(0, np.maximum(-ms - x, x - (31 * ds - ms)))
        return ds / 2 + outside + tiny
    if name == "q2_k":
        sc = b3[..., 0:16]
        ds = (f16(b3, 80)[..., None] * (sc & 15)).repeat(16, axis=-1)
        ms = (f16(b3, 82)[..., None] * (sc >> 4)).repeat(16, axis=-1)
        outside = np.maximum(0, np.maximum(-ms - x, x - (3 * ds - ms)))
        return ds / 2 + outside + tiny
    if name == "q3_k":
        s = f16(b3, 108)[..., None] * module("q3_k").unpack_scales(b3[..., 96:108]).astype(np.float32)
        ds = np.abs(s).repeat(16, axis=-1)
        sign = np.sign(s).repeat(16, axis=-1)
        xs = x * np.where(sign == 0, 1, sign)
        outside = np.maximum(0, np.maximum(-4 * ds - xs, xs - 3 * ds))
        return ds / 2 + outside + tiny
    if name in ("iq4_nl", "iq4_xs"):
        kv = module("iq4_nl").KVALUES.astype(np.float32)
        if name == "iq4_nl":
            s = f16(b3, 0)[..., None]
        else:
            s = f16(b3, 0)[..., None] * module("iq4_xs").unpack_scales(b3).astype(np.float32)
        ds = np.abs(s).repeat(fmt.block_size // s.shape[-1], axis=-1)
        sign = np.sign(s).repeat(fmt.block_size // s.shape[-1], axis=-1)
        xs = x * np.where(sign == 0, 1, sign)  # in units where the table is [-127 ds, 113 ds]
        outside = np.maximum(0, np.maximum(kv[0] * ds - xs, xs - kv[-1] * ds))
        # nearest table value for the fp32 scale; the stored scale is that rounded to fp16 (2**-11 relative,
        # 2**-25 absolute in fp16's subnormal range, times the 6-bit sub-block scale of IQ4_XS)
        fp16_err = ds * 2.0 ** -10 + 2.0 ** -24 * (1 if name == "iq4_nl" else 32)
        return ds * np.diff(kv).max() / 2 + 127 * fp16_err + outside + tiny
    raise AssertionError(name)


@pytest.mark.parametrize("name", NAMES)
def test_roundtrip_within_error_bound(name):
    rng = np.random.default_rng(2)
    w = np.concatenate([rng.standard_normal((24, 512)).astype(np.float32) * 0.02, edge_rows(512, rng)])
    blocks = quantize(name, w)
    assert blocks.dtype == np.uint8 and blocks.shape == (w.shape[0], FORMATS[name].bytes_per_row(512))
    back = dequantize(name, blocks, 512)
    err = np.abs(back - w).reshape(w.shape[0], -1, FORMATS[name].block_size)
    bound = error_bound(name, w, blocks)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), f"{name}: error {err[worst]} > bound {bound[worst]} at {worst}"


# Relative rms error on Gaussian weights: Q4_K's scale search must beat Q4_0's plain rounding.
RMSE_LIMITS = {"q8_0": 0.006, "q4_0": 0.09, "q4_1": 0.082, "q4_k": 0.075, "q6_k": 0.019, "int4_g128": 0.105,
               "q5_0": 0.045, "q5_1": 0.041, "q5_k": 0.039, "q2_k": 0.31, "q3_k": 0.16, "iq4_nl": 0.08,
               "iq4_xs": 0.08}


def test_rms_error_on_gaussian_weights():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 1024)).astype(np.float32) * 0.02
    rel = {n: np.sqrt(np.mean((dequantize(n, quantize(n, w), 1024) - w) ** 2)) / w.std() for n in NAMES}
    for n in NAMES:
        assert rel[n] < RMSE_LIMITS[n], rel
    assert rel["q4_k"] < rel["q4_1"] < rel["q4_0"]
    assert rel["q6_k"] < rel["q4_k"] / 3
    assert rel["q6_k"] < rel["q5_k"] < rel["q4_k"] < rel["q3_k"] < rel["q2_k"]
    assert rel["iq4_nl"] < rel["q4_0"] and rel["q5_1"] < rel["q5_0"] < rel["q4_1"]


def test_int4_g128_covers_offset_groups():
    """A group far from zero with a small spread: directed fp16 rounding keeps the grid over the data."""
    x = (1000.0 + np.linspace(0, 0.5, 256)).astype(np.float32).reshape(1, 256)
    blocks = quantize("int4_g128", x)
    err = np.abs(dequantize("int4_g128", blocks, 256) - x)
    s = f16(fields("int4_g128", blocks, 256), 0)  # [1, 2]; the second group's min rounds down to 1000
    assert (err.reshape(1, 2, 128) <= s[..., None] / 2 + 1e-4).all()
    assert s.max() < 0.034  # (max - fp16_down(min)) / 15, not the spacing of fp16 at 1000 (0.5)


# ---------------------------------------------------------------------------------------------
# Numba kernels against their NumPy references
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_kernels_match_reference(name):
    """The portable kernels, fp32-exact; the fast ones have their own bound (test_quant_fast.py)."""
    rng = np.random.default_rng(4)
    mod = portable(name)
    fmt = mod.FORMAT
    for rows, nb in [(1, 1), (7, 2), (13, 3), (37, 1)]:  # odd rows; 37 > two matmul tiles
        cols = nb * fmt.block_size
        blocks = readonly(random_blocks(name, rows, nb, rng))
        dense = fmt.dequantize(blocks, cols)
        x = rng.standard_normal(cols).astype(np.float32)
        out = np.full(rows, np.nan, np.float32)
        fmt.matvec(blocks, x, out)
        scale = np.abs(dense) @ np.abs(x) + 1e-30  # size of the terms: relative error of a dot product
        np.testing.assert_array_less(np.abs(out - mod.matvec_ref(blocks, x)), 1e-5 * scale)
        for n in range(1, 6):
            X = rng.standard_normal((n, cols)).astype(np.float32)
            out2 = np.full((n, rows), np.nan, np.float32)
            fmt.matmul(blocks, X, out2)
            scale2 = np.abs(X) @ np.abs(dense).T + 1e-30
            np.testing.assert_array_less(np.abs(out2 - mod.matmul_ref(blocks, X)), 1e-5 * scale2)


# ---------------------------------------------------------------------------------------------
# QuantizedWeight
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["q4_k", "int4_g128"])
def test_quantized_weight_on_a_readonly_memmap(name, tmp_path):
    rng = np.random.default_rng(5)
    fmt = FORMATS[name]
    rows, cols = 9, 2 * fmt.block_size
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    ref = QuantizedWeight.quantize(name, w)
    assert (ref.shape, ref.dtype, ref.nbytes) == ((rows, cols), name, rows * fmt.bytes_per_row(cols))

    path = tmp_path / "blocks.bin"
    path.write_bytes(b"\x00" * 7 + ref.blocks.tobytes())  # an odd offset, as inside a file
    mm = np.memmap(path, np.uint8, mode="r", offset=7)
    qw = QuantizedWeight.from_blocks(name, mm, (rows, cols))
    np.testing.assert_array_equal(qw.dequantize(), ref.dequantize())
    np.testing.assert_array_equal(qw.rows(np.array([8, 0, 8])), ref.dequantize()[[8, 0, 8]])
    assert qw.rows(np.array([], np.int64)).shape == (0, cols)

    x = rng.standard_normal(cols).astype(np.float32)
    out = np.empty(rows, np.float32)
    qw.matvec(x, out)  # the kernels in use (fast ones: 16-bit activations, ~5e-5 of the terms)
    np.testing.assert_array_less(np.abs(out - ref.dequantize() @ x), 1e-3 * (np.abs(ref.dequantize()) @ np.abs(x)))
    X = rng.standard_normal((3, cols)).astype(np.float32)
    out2 = np.empty((3, rows), np.float32)
    qw.matmul(X, out2)
    np.testing.assert_array_less(np.abs(out2 - X @ ref.dequantize().T), 1e-3 * (np.abs(X) @ np.abs(ref.dequantize()).T))
    qw.matmul(X[:0], np.empty((0, rows), np.float32))  # no tokens: nothing to do


def test_from_blocks_rejects_mismatched_bytes():
    blocks = quantize("q8_0", np.ones((4, 64), np.float32))  # [4, 68]
    ok = QuantizedWeight.from_blocks("q8_0", blocks.reshape(-1), (4, 64))  # flat is fine
    assert ok.blocks.shape == (4, 68)
    bad = [
        (blocks[:, :-1], (4, 64)),  # a byte short per row
        (blocks.reshape(-1)[:-34], (4, 64)),  # a block short
        (blocks.reshape(2, 136), (4, 64)),  # right size, wrong shape
        (blocks.view(np.int8), (4, 64)),  # wrong dtype
        (blocks.astype(np.float32), (4, 64)),
        (blocks, (4, 60)),  # cols not a multiple of 32
        (blocks, (4, 0)),
        (blocks, (4,)),
        ([1, 2, 3], (4, 64)),
    ]
    for b, shape in bad:
        with pytest.raises(CheckpointError):
            QuantizedWeight.from_blocks("q8_0", b, shape)
    with pytest.raises(UnsupportedError):
        QuantizedWeight.from_blocks("iq2_xxs", blocks, (4, 64))


@pytest.mark.parametrize("name", NAMES)
def test_bad_arguments_raise_from_the_family(name):
    fmt = FORMATS[name]
    with pytest.raises(InputError, match=str(fmt.block_size)):
        quantize(name, np.zeros((2, fmt.block_size + 16), np.float32))
    with pytest.raises(InputError):
        quantize(name, np.zeros(fmt.block_size, np.float32))
    with pytest.raises(InputError):
        quantize(name, np.full((1, fmt.block_size), np.nan, np.float32))
    with pytest.raises(InputError):
        fmt.dequantize(np.zeros((2, fmt.type_size + 1), np.uint8), fmt.block_size)


def test_weight_methods_check_their_operands():
    w = QuantizedWeight.quantize("q4_0", np.ones((3, 64), np.float32))
    good_x, good_out = np.ones(64, np.float32), np.empty(3, np.float32)
    for x, out in [(np.ones(63, np.float32), good_out), (np.ones(64), good_out),
                   (np.ones(128, np.float32)[::2], good_out), (good_x, np.empty(4, np.float32)),
                   (good_x, np.empty(3))]:
        with pytest.raises(InputError):
            w.matvec(x, out)
    with pytest.raises(InputError):
        w.matmul(np.ones(64, np.float32), np.empty((1, 3), np.float32))
    with pytest.raises(InputError):
        w.matmul(np.ones((2, 64), np.float32), np.empty((3, 2), np.float32))
    for ids in ([3], [-1], [[0]], [0.5]):
        with pytest.raises(InputError):
            w.rows(np.array(ids))
    with pytest.raises(LlamacpuError):
        QuantizedWeight.quantize("q4_0", np.ones((3, 48), np.float32))
    with pytest.raises(InputError, match="overflows fp16"):
        quantize("int4_g128", np.full((1, 128), -1e6, np.float32))


def test_iq4_best_index_table_equals_the_binary_search():
    """iq4_nl.best_index looks the nearest-level index up in a table of half-integers: the same index as a
    search among the boundaries (ggml's best_index_int8, ties to the upper level) for any float."""
    from llamacpu.quant import iq4_nl

    rng = np.random.default_rng(5)
    v = np.concatenate([rng.standard_normal(20000) * 80, np.arange(-260, 260.5, 0.5),  # every tie
                        np.nextafter(iq4_nl._MID, np.inf), np.nextafter(iq4_nl._MID, -np.inf),
                        [1e30, -1e30, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max]])
    v = v.astype(np.float32)
    np.testing.assert_array_equal(iq4_nl.best_index(v), np.searchsorted(iq4_nl._MID, v, side="right"))


def test_quantize_rows_in_threads_equals_row_by_row():
    """A matrix of several L2-sized pieces is quantized by a thread per core (common.quantize_rows): the same
    bytes as its rows quantized alone, whatever order the pieces finish in."""
    from llamacpu.quant import q4_k
    from llamacpu.quant.common import row_chunks

    w = (np.random.default_rng(6).standard_normal((1100, 512)) * 0.02).astype(np.float32)
    assert len(list(row_chunks(*w.shape))) >= 3
    whole = q4_k.quantize(w)
    parts = np.concatenate([q4_k.quantize(w[r:r + 100]) for r in range(0, 1100, 100)])
    np.testing.assert_array_equal(whole, parts)
