"""GGUF files written by llamacpu (checkpoint/gguf_write.py) in each of llama.cpp's mixes, read back by
our loader; split files; types without a kernel (dequantized at load); rope_freqs; end-of-turn tokens;
an interrupted `llamacpu quantize` leaves nothing that loads.

The reference for each quantized file is the same file's weights dequantized and written as F32 (our
writer's "F32" mix from that file): top-1 of the quantized kernels against that fp32 forward."""
from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT

from llamacpu import LlamaForCausalLM
from llamacpu.checkpoint.gguf import read_gguf, split_parts
from llamacpu.checkpoint.gguf_write import MIXES, plan, quantize_to_gguf, write_gguf
from llamacpu.config import LlamaConfig
from llamacpu.errors import CheckpointError, InputError
from llamacpu.model.rope_scaling import default_inv_freq, inv_freq
from test_gguf import tiny_gpt2_vocab, write_gguf as write_test_gguf

HIDDEN, INTER, LAYERS, HEADS, KV = 256, 512, 2, 4, 2
HD = HIDDEN // HEADS


def config(vocab: int, **kw) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS,
                       num_attention_heads=HEADS, num_key_value_heads=KV, max_position_embeddings=256,
                       rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True, **kw)


def weights(vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def r(*shape, s=0.08):
        return (rng.standard_normal(shape) * s).astype(np.float32)

    w = {"model.embed_tokens.weight": r(vocab, HIDDEN, s=1.0)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": 1 + r(HIDDEN, s=0.1),
                  p + "self_attn.q_proj.weight": r(HEADS * HD, HIDDEN), p + "self_attn.k_proj.weight": r(KV * HD, HIDDEN),
                  p + "self_attn.v_proj.weight": r(KV * HD, HIDDEN), p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * HD),
                  p + "post_attention_layernorm.weight": 1 + r(HIDDEN, s=0.1),
                  p + "mlp.gate_proj.weight": r(INTER, HIDDEN), p + "mlp.up_proj.weight": r(INTER, HIDDEN),
                  p + "mlp.down_proj.weight": r(HIDDEN, INTER)})
    w["model.norm.weight"] = 1 + r(HIDDEN, s=0.1)
    return w


@pytest.fixture(scope="module")
def vocab():
    return tiny_gpt2_vocab()


@pytest.fixture(scope="module")
def f32_file(tmp_path_factory, vocab) -> Path:
    n = len(vocab["tokens"])
    w = weights(n)
    path = tmp_path_factory.mktemp("gw") / "tiny-f32.gguf"
    return write_gguf(path, config(n), {k: v.shape for k, v in w.items()}, w.__getitem__, vocab, "F32")


def top1_agreement(a_path: Path, b_path: Path, n_tokens: int) -> float:
    ids = np.random.default_rng(1).integers(0, n_tokens, (1, 64))
    a = LlamaForCausalLM.from_pretrained(a_path)(ids).logits[0]
    b = LlamaForCausalLM.from_pretrained(b_path)(ids).logits[0]
    return float((a.argmax(-1) == b.argmax(-1)).mean())


MIX_BASE = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"]


@pytest.mark.parametrize("mix", MIX_BASE)
def test_each_mix_loads_and_matches_its_own_dequantized_weights(mix, f32_file, vocab, tmp_path):
    q = quantize_to_gguf(f32_file, tmp_path / f"tiny-{mix}.gguf", mix)
    ckpt = read_gguf(q)
    assert ckpt.file_type == MIXES[mix][1].name
    base = MIXES[mix][0]
    assert ckpt.tensors["model.layers.0.mlp.up_proj.weight"].ggml_type == base
    assert ckpt.tensors["model.embed_tokens.weight"].ggml_type == (QT.Q8_0 if base == QT.Q8_0 else QT.Q6_K)
    ref = quantize_to_gguf(q, tmp_path / "deq.gguf", "F32")  # the file's own weights, dequantized, fp32
    assert top1_agreement(q, ref, len(vocab["tokens"])) >= 0.99


def test_mix_choices_follow_llama_cpp():
    cfg = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=16,
                      num_attention_heads=8, num_key_value_heads=2)
    shapes = {"model.embed_tokens.weight": (512, 256), "lm_head.weight": (512, 256), "model.norm.weight": (256,)}
    for i in range(16):
        shapes[f"model.layers.{i}.self_attn.v_proj.weight"] = (64, 256)
        shapes[f"model.layers.{i}.mlp.down_proj.weight"] = (256, 512)
        shapes[f"model.layers.{i}.self_attn.o_proj.weight"] = (256, 256)
    t, notes = plan("Q4_K_M", cfg, shapes)
    more = [i for i in range(16) if t[f"model.layers.{i}.mlp.down_proj.weight"] == QT.Q6_K]
    assert more == [0, 1, 4, 7, 10, 13, 14, 15]  # use_more_bits: i < n/8, i >= 7n/8, (i - n/8) % 3 == 2
    assert t["lm_head.weight"] == QT.Q6_K and t["model.embed_tokens.weight"] == QT.Q4_K
    assert t["model.norm.weight"] == QT.F32 and not notes
    t, _ = plan("Q3_K_M", cfg, shapes)
    assert [t[f"model.layers.{i}.self_attn.v_proj.weight"] for i in (0, 1, 2)] == [QT.Q5_K, QT.Q5_K, QT.Q4_K]
    assert t["model.layers.3.self_attn.o_proj.weight"] == QT.Q4_K and t["model.layers.0.mlp.down_proj.weight"] == QT.Q5_K
    t, _ = plan("Q2_K", cfg, shapes)
    assert t["model.layers.3.self_attn.v_proj.weight"] == QT.Q4_K  # n_gqa = 4
    shapes["model.layers.0.mlp.down_proj.weight"] = (256, 544)  # not whole 256-blocks: llama.cpp's fallback
    t, notes = plan("Q4_K_M", cfg, shapes)
    assert t["model.layers.0.mlp.down_proj.weight"] == QT.Q8_0 and "Q8_0" in notes[0]
    with pytest.raises(InputError, match="Q4_K_M"):
        plan("Q4_K_XL", cfg, shapes)


def test_split_files_load_as_one_model(f32_file, vocab, tmp_path, monkeypatch):
    n = len(vocab["tokens"])
    w = weights(n)
    monkeypatch.setattr(gguf, "GGUFWriter", functools.partial(gguf.GGUFWriter, split_max_tensors=8))
    write_test_gguf(tmp_path / "split.gguf", w, vocab, block_count=LAYERS, embedding_length=HIDDEN,
                    feed_forward_length=INTER, head_count=HEADS, head_count_kv=KV, rope_dimension_count=HD,
                    rope_freq_base=10000.0, context_length=256)
    parts = sorted(tmp_path.glob("split-*-of-*.gguf"))
    assert len(parts) == 3 and split_parts(parts[1]) == parts
    assert top1_agreement(parts[0], f32_file, n) == 1.0
    assert top1_agreement(parts[2], f32_file, n) == 1.0  # any part names the model
    parts[1].unlink()
    with pytest.raises(CheckpointError, match="missing"):
        read_gguf(parts[0])


def test_types_without_a_kernel_are_dequantized_at_load(f32_file, vocab, tmp_path, capfd):
    n = len(vocab["tokens"])
    w = weights(n)
    types = {k: QT.TQ2_0 for k in w if k.endswith("mlp.up_proj.weight")}
    path = write_test_gguf(tmp_path / "tq.gguf", w, vocab, types=types, block_count=LAYERS, embedding_length=HIDDEN,
                           feed_forward_length=INTER, head_count=HEADS, head_count_kv=KV, rope_dimension_count=HD,
                           rope_freq_base=10000.0, context_length=256)
    ref = quantize_to_gguf(path, tmp_path / "tq-f32.gguf", "F32")
    capfd.readouterr()
    m = LlamaForCausalLM.from_pretrained(path)
    assert "TQ2_0 tensors have no llamacpu kernel" in capfd.readouterr().err
    ids = np.arange(40).reshape(1, 40)
    np.testing.assert_allclose(m(ids).logits, LlamaForCausalLM.from_pretrained(ref)(ids).logits, rtol=1e-3, atol=1e-3)


def test_rope_freqs_are_applied(vocab, tmp_path):
    n = len(vocab["tokens"])
    llama3 = config(n, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                     "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    factors = (default_inv_freq(10000.0, HD) / inv_freq(llama3)).astype(np.float32)
    assert (factors > 1).any()
    w = weights(n)
    with_f = dict(w, **{"rope_freqs.weight": factors})
    a = write_gguf(tmp_path / "a.gguf", config(n), {k: v.shape for k, v in with_f.items()}, with_f.__getitem__, vocab, "F32")
    b = write_gguf(tmp_path / "b.gguf", config(n), {k: v.shape for k, v in w.items()}, w.__getitem__, vocab, "F32")
    ma = LlamaForCausalLM.from_pretrained(a)
    np.testing.assert_allclose(inv_freq(ma.config), inv_freq(llama3), rtol=1e-6)
    ids = np.random.default_rng(2).integers(0, n, (1, 200))  # past the original 64 positions
    la, lb = ma(ids).logits[0], LlamaForCausalLM.from_pretrained(b)(ids).logits[0]
    assert np.abs(la - lb).max() > 1e-2  # the factors change the rotation
    bad = dict(w, **{"rope_freqs.weight": -factors})
    c = write_gguf(tmp_path / "c.gguf", config(n), {k: v.shape for k, v in bad.items()}, bad.__getitem__, vocab, "F32")
    with pytest.raises(CheckpointError, match="rope_freqs"):
        LlamaForCausalLM.from_pretrained(c)


def test_eot_is_an_end_token(vocab, tmp_path):
    n = len(vocab["tokens"]) + 1
    v = dict(vocab, tokens=list(vocab["tokens"]) + ["<|eot_id|>"],
             token_type=np.append(vocab["token_type"], 3).astype(np.int32))
    w = weights(n)
    path = write_gguf(tmp_path / "eot.gguf", config(n), {k: x.shape for k, x in w.items()}, w.__getitem__, v, "Q8_0")
    assert read_gguf(path).config["eos_token_id"] == [2, n - 1]


def test_interrupted_quantize_leaves_nothing_that_loads(tmp_path, vocab):
    n = 4096  # a source big enough that quantizing takes seconds
    rng = np.random.default_rng(0)
    cfg = config(n)
    cfg.num_hidden_layers = 6
    shapes = {"model.embed_tokens.weight": (n, HIDDEN), "model.norm.weight": (HIDDEN,)}
    for i in range(6):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
                       p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (KV * HD, HIDDEN),
                       p + "self_attn.v_proj.weight": (KV * HD, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                       p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                       p + "mlp.down_proj.weight": (HIDDEN, INTER)})
    v = dict(vocab, tokens=list(vocab["tokens"]) + [f"tok{i}" for i in range(n - len(vocab["tokens"]))],
             token_type=np.append(vocab["token_type"], np.ones(n - len(vocab["tokens"]), np.int32)))
    src = write_gguf(tmp_path / "big.gguf", cfg, shapes, lambda k: rng.standard_normal(shapes[k]).astype(np.float32) * 0.05,
                     v, "F32")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "big-Q3_K_M.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "llamacpu.cli", "quantize", str(src), str(dst), "--type", "Q3_K_M"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.stat().st_size > 1 << 20 for p in out.iterdir()):
        assert proc.poll() is None, "quantize finished before it could be interrupted"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = list(out.iterdir())
    assert left and not dst.exists() and all(not p.name.endswith(".gguf") for p in left)
    for p in left:
        with pytest.raises(CheckpointError):
            LlamaForCausalLM.from_pretrained(p)


def test_quantize_cli_threads(f32_file, tmp_path):
    """`llamacpu quantize ... -t 1` (llama-quantize's nthreads) writes the file the default threads write."""
    from llamacpu.cli import main

    import numba

    one, every = tmp_path / "one.gguf", tmp_path / "every.gguf"
    threads = numba.get_num_threads()
    try:
        assert main(["quantize", str(f32_file), str(one), "--type", "Q4_K_M", "-t", "1"]) == 0
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(threads)
    assert main(["quantize", str(f32_file), str(every), "--type", "Q4_K_M"]) == 0
    assert one.read_bytes() == every.read_bytes()
