"""Quantized models end to end: quantize at load, `llamacpu quantize` checkpoints that load back
without re-quantizing, corrupt quantized files, and the real SmolLM2 GGUF."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamacpu import CheckpointError, LlamaForCausalLM
from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.quant import QuantizedWeight
from llamacpu.quant.weight import InterleavedWeight

SHAPE = dict(vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
# relative RMS error of the logits against F32 on random Gaussian weights, 2 layers (16 quantized
# products in series): per weight, Q8_0 errs about 0.5% of its scale and the 4-bit formats 6-10%.
BOUND = {"q8_0": 0.03, "q4_0": 0.3, "q4_1": 0.3, "q4_k": 0.25, "int4_g128": 0.35}
IDS = np.array([[1, 17, 42, 99, 7, 250, 3, 64]])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("q") / "m", SHAPE, dtype="F32", seed=3)


@pytest.fixture(scope="module")
def reference(synthetic):
    return LlamaForCausalLM.from_pretrained(synthetic)(IDS).logits


def rel_rms(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2) / np.mean(b ** 2)))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0", "q4_1", "q4_k", "int4_g128"])
def test_quantize_at_load(synthetic, reference, fmt):
    model = LlamaForCausalLM.from_pretrained(synthetic, quantization=fmt)
    layer = model.weights.layers[0]
    assert layer.wq.dtype == fmt and layer.w_down.dtype == fmt
    assert model.weights.embed.dtype == "q8_0"  # embedding and head keep quality
    logits = model(IDS).logits
    assert rel_rms(logits, reference) < BOUND[fmt]
    # decode through the cache (matvec kernels) agrees with the prefill (matmul kernels)
    cache = model.new_cache(1)
    model.next_token_logits(IDS[:, :-1], None, cache)
    last = model.next_token_logits(IDS[:, -1:], None, cache)
    np.testing.assert_allclose(last[0], logits[0, -1], rtol=1e-4, atol=1e-4 * np.abs(logits).max())


@pytest.mark.parametrize("fmt", ["q4_0", "q4_k"])
def test_batched_decode_equals_each_sequence_alone(synthetic, fmt):
    """Three sequences decoding together (the decode kernel reads each row once for all three, q/k/v
    and gate/up fused) give the same greedy tokens and, step by step, the same logits as each alone."""
    model = LlamaForCausalLM.from_pretrained(synthetic, quantization=fmt)
    prompts = np.array([[1, 17, 42, 99, 7], [1, 250, 3, 64, 5], [1, 9, 9, 200, 31]])
    batch = model.generate(prompts, max_new_tokens=6)
    for b in range(3):
        alone = model.generate(prompts[b:b + 1], max_new_tokens=6)
        np.testing.assert_array_equal(batch[b], alone[0])
    cache, caches = model.new_cache(3), [model.new_cache(1) for _ in range(3)]
    for step in range(9):  # token by token (decode steps): 3 rows at once against 1 row each
        together = model.next_token_logits(batch[:, step:step + 1], None, cache)
        for b in range(3):
            alone = model.next_token_logits(batch[b:b + 1, step:step + 1], None, caches[b])
            np.testing.assert_array_equal(together[b], alone[0])


def test_fallback_when_blocks_do_not_fit(shared_models):
    """stories260K's 172-wide MLP input holds no whole 32-block: that matrix keeps its precision."""
    model = LlamaForCausalLM.from_pretrained(shared_models / "stories260K", quantization="q4_k")
    layer = model.weights.layers[0]
    assert layer.wq.dtype == "q4_0"  # 64 inputs: no 256-block for q4_k, falls back to q4_0
    assert layer.w_down.dtype == "f32"  # 172 inputs
    ids = model.generate(np.array([[1]]), max_new_tokens=30)
    assert ids.shape == (1, 31)


def test_quantize_cli_round_trip(synthetic, tmp_path):
    dst = tmp_path / "q4"
    out = subprocess.run([sys.executable, "-m", "llamacpu.cli", "quantize", str(synthetic), str(dst), "--type", "q4_0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "llamacpu", "format": "q4_0"}
    loaded = LlamaForCausalLM.from_pretrained(dst)
    at_load = LlamaForCausalLM.from_pretrained(synthetic, quantization="q4_0")
    w = loaded.weights.layers[1].w_up
    assert isinstance(w, QuantizedWeight) and w.dtype == "q4_0"
    np.testing.assert_array_equal(w.blocks, at_load.weights.layers[1].w_up.blocks)
    # the blocks are a view of the mapped file (no re-quantizing), or, where the CPU backend interleaves Q4_0
    # at load (AVX512-VNNI), a permutation of them made once (InterleavedWeight.blocks gives the file's bytes)
    base = w.packed if isinstance(w, InterleavedWeight) else w.blocks
    while getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, memoryview) or isinstance(w, InterleavedWeight)
    np.testing.assert_array_equal(loaded(IDS).logits, at_load(IDS).logits)
    # the file is smaller than F32 by about the bit ratio
    assert (dst / "model.safetensors").stat().st_size < 0.35 * (synthetic / "model.safetensors").stat().st_size


def test_corrupt_quantized_checkpoint(synthetic, tmp_path):
    dst = tmp_path / "q8"
    from llamacpu.checkpoint.quantized import quantize_checkpoint
    quantize_checkpoint(synthetic, dst, "q8_0")
    f = dst / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    # metadata that claims another shape
    bad = json.loads(json.dumps(header))
    key = "llamacpu.q.model.layers.0.mlp.up_proj.weight"
    bad["__metadata__"][key] = "q8_0:512x512"
    h = json.dumps(bad).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])
    with pytest.raises(CheckpointError, match="up_proj"):
        LlamaForCausalLM.from_pretrained(dst)
    bad["__metadata__"][key] = "q8_0:garbage"
    h = json.dumps(bad).encode()
    f.write_bytes(len(h).to_bytes(8, "little") + h + raw[8 + n:])
    with pytest.raises(CheckpointError, match="bad metadata"):
        LlamaForCausalLM.from_pretrained(dst)
    f.write_bytes(raw[: len(raw) // 2])  # truncated
    with pytest.raises(CheckpointError):
        LlamaForCausalLM.from_pretrained(dst)


# ---- the real SmolLM2-135M-Instruct GGUF (Q4_1, byte-level BPE, ChatML) ------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from llamacpu.hub import default_model
    from llamacpu.tokenizer.auto import AutoTokenizer
    try:
        path = default_model()
    except CheckpointError as e:
        pytest.skip(f"SmolLM2 GGUF not installed ({e})")
    return LlamaForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path), path


def test_smollm2_knows_the_capital_of_france(smollm2):
    model, tok, _ = smollm2
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True)
    out = model.generate(np.array([ids]), max_new_tokens=20, do_sample=False)
    assert tok.decode(out[0, len(ids):], skip_special_tokens=True) == "The capital of France is Paris."


def test_smollm2_weights_are_used_as_stored(smollm2):
    model, _, _ = smollm2
    assert model.weights.layers[0].wq.dtype == "q4_1" and model.weights.embed.dtype == "q8_0"
    assert model.weights.lm_head is model.weights.embed
    assert model.config.num_key_value_heads == 3 and model.config.num_hidden_layers == 30


def test_smollm2_teacher_forced_agreement(smollm2):
    """Top-1 agreement with an fp32 NumPy reference on the exactly dequantized weights of the same file
    (tools/make_quant_reference.py, which dequantizes with the gguf package, not with our code)."""
    ref_file = Path(__file__).parent / "fixtures" / "smollm2_reference.npz"
    ref = np.load(ref_file)
    model, _, _ = smollm2
    agree = total = 0
    for i in range(len(ref["lengths"])):
        start, n = int(ref["offsets"][i]), int(ref["lengths"][i])
        ids = ref["ids"][start:start + n]
        top1 = model(ids[None]).logits[0].argmax(-1)
        agree += int((top1 == ref["top1"][start:start + n]).sum())
        total += n
    assert total >= 300
    assert agree / total >= 0.99, f"agreement {agree}/{total}"
