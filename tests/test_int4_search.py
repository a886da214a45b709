"""int4_g128's clip search (quant/int4_g128.py) and the activation statistics that weight it
(checkpoint/calibrate.py): never worse than min-max rounding under its own measure, better where it
matters (a matrix's output error under activations with outlier columns), the layout unchanged."""
from pathlib import Path

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.checkpoint.calibrate import INPUT_OF, input_importance
from llamacpu.checkpoint.quantize import quantize_weight, quantize_weights
from llamacpu.errors import InputError
from llamacpu.model.weights import DenseWeight
from llamacpu.quant import dequantize, get_format, int4_g128

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "mha_f32"


def groups(rng, n=600):
    """Gaussian, heavy-tailed, offset far from zero, constant, tiny, one outlier: [n, 128] float32."""
    kinds = [rng.standard_normal((n, 128)), rng.standard_t(2, (n, 128)) * 0.02,
             1000 + rng.random((n, 128)), np.full((n, 128), 0.3) + 0 * rng.random((n, 128)),
             rng.standard_normal((n, 128)) * 1e-6]
    spike = rng.standard_normal((n, 128)) * 0.01
    spike[np.arange(n), rng.integers(0, 128, n)] = 1.0
    kinds.append(spike)
    return np.concatenate(kinds).astype(np.float32)


def group_error(w, blocks, weight):
    """sum_j weight_j (dequantized_j - w_j)^2 per group, from the stored bytes."""
    d = dequantize("int4_g128", blocks, w.shape[1])
    return (((d - w) ** 2) * weight).reshape(w.shape[0], -1, 128).sum(-1, dtype=np.float64)


@pytest.mark.parametrize("weighted", [False, True])
def test_search_is_never_worse_than_min_max_rounding(weighted):
    rng = np.random.default_rng(0)
    w = groups(rng).reshape(-1, 256)  # two groups per row
    imp = (rng.standard_t(1, 256) ** 2).astype(np.float32) if weighted else np.ones(256, np.float32)
    plain = int4_g128.quantize(w)
    searched = int4_g128.quantize(w, importance=imp)
    assert searched.shape == plain.shape and searched.dtype == np.uint8
    e_plain, e_search = group_error(w, plain, imp), group_error(w, searched, imp)
    # float32 evaluation of the same error in another order: a few ulp of slack
    assert (e_search <= e_plain * (1 + 1e-5) + 1e-30).all()
    gauss = slice(0, 600 // 2)  # rows of the Gaussian groups
    assert e_search[gauss].sum() < 0.97 * e_plain[gauss].sum()  # the search finds something there
    # min-max rounding (no importance) is the format's own bound: every element within s/2
    s = plain.reshape(w.shape[0], 2, 68)[..., :2].copy().view("<f2").astype(np.float32)
    err = np.abs(dequantize("int4_g128", plain, 256) - w).reshape(w.shape[0], 2, 128)
    assert (err <= s / 2 + 4 * np.finfo(np.float32).eps * np.abs(w).reshape(w.shape[0], 2, 128).max(-1, keepdims=True)).all()


def test_activation_aware_search_lowers_the_output_error():
    """A matrix whose input has a few columns 30x the others (as SmolLM2's down projections): rounding
    weighted by the mean squared input lowers E||(W - Wq) a||^2, which min-max rounding and the unweighted
    search do not aim at."""
    rng = np.random.default_rng(1)
    w = (rng.standard_t(4, (64, 512)) * 0.02).astype(np.float32)
    scale = np.ones(512, np.float32)
    scale[rng.choice(512, 8, replace=False)] = 30
    a = (rng.standard_normal((256, 512)) * scale).astype(np.float32)
    imp = (a * a).mean(0)

    def out_err(blocks):
        d = dequantize("int4_g128", blocks, 512)
        return float(np.mean(((d - w) @ a.T) ** 2))

    plain = out_err(int4_g128.quantize(w))
    unweighted = out_err(int4_g128.quantize(w, importance=np.ones(512, np.float32)))
    aware = out_err(int4_g128.quantize(w, importance=imp))
    assert aware < 0.8 * plain and aware < unweighted


def test_importance_is_checked_and_the_default_is_unchanged():
    rng = np.random.default_rng(2)
    w = rng.standard_normal((3, 256)).astype(np.float32)
    for bad in (np.ones(128), np.ones((2, 256)), -np.ones(256), np.full(256, np.nan)):
        with pytest.raises(InputError, match="importance"):
            int4_g128.quantize(w, importance=bad)
    # all-zero importance is legal (a column never active): every group still gets a valid grid
    blocks = int4_g128.quantize(w, importance=np.zeros(256, np.float32))
    assert np.isfinite(dequantize("int4_g128", blocks, 256)).all()
    with pytest.raises(InputError, match="overflows fp16"):
        int4_g128.quantize(np.full((1, 128), -1e6, np.float32), importance=np.ones(128, np.float32))
    # the registry's quantize (no importance) is min-max rounding: m = the largest fp16 <= min
    head = get_format("int4_g128").quantize(w).reshape(3, 2, 68)[..., :4].copy().view("<f2").astype(np.float32)
    lo = w.reshape(3, 2, 128).min(-1)
    assert (head[..., 1] <= lo).all() and (lo - head[..., 1] <= np.abs(lo) * 2 ** -10).all()


def test_input_importance_is_the_mean_square_of_each_projections_input():
    model = LlamaForCausalLM.from_pretrained(FIXTURE)
    cfg = model.config
    ids = np.random.default_rng(3).integers(0, cfg.vocab_size, 23)
    imp = input_importance(model, ids)
    assert set(imp) == {f"layers.{i}.{p}" for i in range(cfg.num_hidden_layers) for p in INPUT_OF}
    trace = model.trace(ids)
    for i in range(cfg.num_hidden_layers):
        for proj, hook in INPUT_OF.items():
            a = np.asarray(trace[f"layers.{i}.{hook}"], np.float64).reshape(len(ids), -1)
            np.testing.assert_allclose(imp[f"layers.{i}.{proj}"], (a * a).mean(0), rtol=1e-5, atol=1e-12)
    assert model.tracer is None  # left as it was
    # chunks: each from a fresh cache, the mean over all tokens
    two = input_importance(model, ids, chunk=12)
    first, second = model.trace(ids[:12]), model.trace(ids[12:])
    a = np.concatenate([np.asarray(first["layers.0.act"]).reshape(12, -1),
                        np.asarray(second["layers.0.act"]).reshape(11, -1)]).astype(np.float64)
    np.testing.assert_allclose(two["layers.0.w_down"], (a * a).mean(0), rtol=1e-5, atol=1e-12)
    for bad in (np.array([[1, 2]]), np.array([cfg.vocab_size]), np.array([], np.int64), np.array([0.5])):
        with pytest.raises(InputError, match="calibration"):
            input_importance(model, bad)


def test_quantize_weights_passes_importance_to_int4_g128_only():
    rng = np.random.default_rng(4)
    w = (rng.standard_t(4, (32, 256)) * 0.02).astype(np.float32)
    imp = rng.random(256).astype(np.float32) ** 4
    q, chosen = quantize_weight(DenseWeight(w, "f32"), "int4_g128", imp)
    assert chosen == "int4_g128"
    np.testing.assert_array_equal(q.blocks, int4_g128.quantize(w, importance=imp))
    q0, _ = quantize_weight(DenseWeight(w, "f32"), "q4_0", imp)  # a format without the search ignores it
    np.testing.assert_array_equal(q0.blocks, get_format("q4_0").quantize(w))
    # through quantize_weights, by input_importance's names; a matrix that falls back (32 columns: q4_1)
    # ignores its importance
    model = LlamaForCausalLM.from_pretrained(FIXTURE)
    imp = input_importance(model, np.arange(10))
    _, chosen = quantize_weights(model.weights, "int4_g128", importance=imp)
    assert chosen["layers.0.wq"] == "q4_1"


def test_cli_quantize_with_calibration(tmp_path):
    """`llamacpu quantize SRC DST --type int4_g128 --calibration FILE` writes what the library path gives."""
    import subprocess
    import sys

    from llamacpu.tokenizer.auto import AutoTokenizer

    src = Path(__file__).parent / "fixtures" / "llama3" / "hf"  # intermediate 128: w_down is int4_g128
    text = tmp_path / "calibration.txt"
    text.write_text("The quick brown fox jumps over the lazy dog, and the dog sleeps on. " * 20)
    out = tmp_path / "q"
    cmd = [sys.executable, "-m", "llamacpu.cli", "quantize", str(src), str(out), "--type", "int4_g128",
           "--calibration", str(text), "--calibration-tokens", "40"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "calibrating on 40 tokens" in r.stderr
    model = LlamaForCausalLM.from_pretrained(src)
    ids = AutoTokenizer.from_pretrained(src).encode(text.read_text())[:40]
    imp = input_importance(model, ids)
    written = LlamaForCausalLM.from_pretrained(out)
    for i in range(model.config.num_hidden_layers):
        dense = np.asarray(model.weights.layers[i].w_down.dequantize(), np.float32)
        blocks = written.weights.layers[i].w_down.blocks
        np.testing.assert_array_equal(blocks, int4_g128.quantize(dense, importance=imp[f"layers.{i}.w_down"]))
        assert not np.array_equal(blocks, int4_g128.quantize(dense))  # the calibration changed the rounding
    for dst, fmt in ((tmp_path / "x.gguf", "Q4_K_M"), (tmp_path / "y", "q4_0")):
        r = subprocess.run(cmd[:5] + [str(dst), "--type", fmt, "--calibration", str(text)], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 1 and "--calibration" in r.stderr and "Traceback" not in r.stderr
        assert not dst.exists()
