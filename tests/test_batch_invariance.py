"""Batch-invariant rows (the serving engine): with a role, Backend.linear / linears give each row of x the
same bits whatever the other rows of the call, so a sequence's numbers do not depend on its batch mates.
Checked per weight format on random matrices: every row of an n-row call equals the same row alone, and
the results stay close to the float reference."""
import numpy as np
import pytest

from llamacpu.backends import CPUBackend
from llamacpu.model.weights import DenseWeight
from llamacpu.quant import FORMATS, kernels
from llamacpu.quant.registry import PORTABLE
from llamacpu.quant.weight import QuantizedWeight

ROWS, COLS, TOKENS = 40, 512, 11  # 11 tokens: two dot4 passes and a tail, prefill tiles of 4 and a tail


def weight(fmt, rng):
    w = rng.standard_normal((ROWS, COLS)).astype(np.float32) * 0.1
    if fmt in ("f32", "f16", "bf16"):
        dw = DenseWeight.from_array(w, {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[fmt], "F32")
        return dw, dw.dequantize()
    qw = QuantizedWeight.quantize(fmt, w)
    return qw, qw.dequantize()


def rows_alone_equal(ops, w, X, role):
    together = np.full((len(X), w.shape[0]), np.nan, np.float32)
    ops.linear(w, X, together, role=role)
    for t in range(len(X)):
        alone = np.full((1, w.shape[0]), np.nan, np.float32)
        ops.linear(w, X[t:t + 1], alone, role=role)
        np.testing.assert_array_equal(together[t], alone[0], err_msg=f"{w.dtype} {role}: token {t} of {len(X)}")
    for n in (2, kernels.DECODE_MAX_TOKENS, kernels.DECODE_MAX_TOKENS + 1):  # either side of the old switch
        part = np.empty((n, w.shape[0]), np.float32)
        ops.linear(w, X[:n], part, role=role)
        np.testing.assert_array_equal(part, together[:n])
    return together


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"] + list(FORMATS))
@pytest.mark.parametrize("role", ["decode", "prompt"])
def test_each_row_independent_of_the_others(fmt, role):
    rng = np.random.default_rng(7)
    w, dense = weight(fmt, rng)
    X = rng.standard_normal((TOKENS, COLS)).astype(np.float32)
    got = rows_alone_equal(CPUBackend(), w, X, role)
    want = X @ dense.T
    assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max()


@pytest.mark.parametrize("fmt", ["f32", "f16", "bf16"] + [f for f in FORMATS if FORMATS[f].decode_rows is not None])
def test_decode_rows_are_what_matvec_gives(fmt):
    """A decode row in a batch gets the bits of the decode kernel alone (matvec): dense always, quantized
    where the format's decode kernel is its matvec (VNNI)."""
    rng = np.random.default_rng(3)
    w, _ = weight(fmt, rng)
    if fmt not in ("f32", "f16", "bf16") and w.format.matvec is PORTABLE[fmt].matvec:
        pytest.skip(f"{fmt}: portable kernels here (their decode rows are the tiled matmul's)")
    X = rng.standard_normal((TOKENS, COLS)).astype(np.float32)
    got = np.empty((TOKENS, ROWS), np.float32)
    CPUBackend().linear(w, X, got, role="decode")
    for t in range(TOKENS):
        one = np.empty(ROWS, np.float32)
        w.matvec(X[t], one)
        np.testing.assert_array_equal(got[t], one)


@pytest.mark.parametrize("fmt", sorted(PORTABLE))
def test_portable_rows_independent_of_the_others(fmt):
    rng = np.random.default_rng(5)
    w, _ = weight(fmt, rng)
    w = QuantizedWeight(PORTABLE[fmt], w.blocks, w.shape)
    X = rng.standard_normal((6, COLS)).astype(np.float32)
    rows_alone_equal(CPUBackend(), w, X, "decode")


def test_fused_decode_rows_equal_each_matrix_alone():
    """q/k/v in one call (any number of decode rows) = each matrix's decode rows."""
    rng = np.random.default_rng(9)
    ws = [QuantizedWeight.quantize("q4_0", rng.standard_normal((r, COLS)).astype(np.float32)) for r in (32, 16, 16)]
    X = rng.standard_normal((TOKENS, COLS)).astype(np.float32)
    outs = tuple(np.full((TOKENS, w.shape[0]), np.nan, np.float32) for w in ws)
    CPUBackend().linears(ws, X, outs, (None, None, None), role="decode")
    for w, out in zip(ws, outs):
        alone = np.empty_like(out)
        w.matmul_decode(X, alone)
        np.testing.assert_array_equal(out, alone)
