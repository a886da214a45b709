"""`llamacpu bench`: runs on a checkpoint without a tokenizer and reports every field (no timing asserts:
benchmarks report, tests check that they do)."""
import json
import subprocess
import sys

import pytest

from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.cli import main

FIELDS = {"model", "formats", "threads", "weight_bytes", "decode_bytes", "load_s", "first_token_s", "startup_s",
          "prompt_tokens", "prefill_s", "prefill_tok_s", "ttft_s", "new_tokens", "decode_s", "decode_tok_s",
          "decode_gbps", "peak_rss_bytes"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("bench") / "tiny", "tiny")


def test_bench_json_in_a_fresh_process(tiny):
    r = subprocess.run([sys.executable, "-m", "llamacpu.cli", "bench", str(tiny), "--prompt-tokens", "12",
                        "--new-tokens", "5", "--json", "-t", "1"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert FIELDS <= set(out)
    assert out["prompt_tokens"] == 12 and out["new_tokens"] == 5
    assert out["formats"] == ["f32"] and out["threads"] == 1
    assert 0 < out["decode_bytes"] < out["weight_bytes"]  # the embedding table counts one row per step
    for key in ("prefill_tok_s", "decode_tok_s", "decode_gbps", "ttft_s", "load_s", "first_token_s"):
        assert out[key] > 0
    assert out["peak_rss_bytes"] > out["weight_bytes"]
    assert out["startup_s"] is None or out["startup_s"] >= out["first_token_s"]


def test_bench_text_report_and_quantization(tiny, capsys):
    assert main(["bench", str(tiny), "--prompt-tokens", "4", "--new-tokens", "3", "-q", "q8_0"]) == 0
    text = capsys.readouterr().out
    for word in ("model", "q8_0", "load", "prefill", "4 tokens", "decode", "3 tokens", "tok/s", "GB/s", "peak memory"):
        assert word in text


@pytest.mark.parametrize("flags", [["--prompt-tokens", "0"], ["--new-tokens", "0"],
                                   ["--prompt-tokens", "8", "--new-tokens", "8", "-c", "10"]])
def test_bench_refuses_bad_sizes(tiny, flags, capsys):
    assert main(["bench", str(tiny), *flags]) == 1
    assert "error" in capsys.readouterr().err


# ---- the benchmark's GGUF writer (bench/checkpoints.py): llama.cpp reads what llamacpu reads ----------

def _bench_checkpoints():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "checkpoints.py"
    spec = importlib.util.spec_from_file_location("bench_checkpoints", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("fmt", ["f16", "q8_0", "q4_0"])
def test_bench_gguf_holds_the_same_model(tmp_path, fmt):
    """write_gguf permutes Q/K for llama.cpp and copies blocks as they are: llamacpu's GGUF reader undoes
    the permutation, so the GGUF gives the checkpoint's logits."""
    import numpy as np

    from llamacpu import LlamaForCausalLM
    from llamacpu.checkpoint.quantized import quantize_checkpoint

    ck = _bench_checkpoints()
    src = write_synthetic(tmp_path / "f16", "tiny", dtype="F16")
    if fmt != "f16":
        src = quantize_checkpoint(src, tmp_path / fmt, fmt)
    gguf = ck.write_gguf(src, tmp_path / f"{fmt}.gguf", fmt)
    ids = np.array([[1, 7, 42, 99, 3]])
    want = LlamaForCausalLM.from_pretrained(src)(ids).logits
    got = LlamaForCausalLM.from_pretrained(gguf)(ids).logits
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bench_streaming_quantized_checkpoint_matches_quantize_checkpoint(tmp_path):
    """The 7B path (generate, quantize, write one tensor at a time) gives what `llamacpu quantize` gives
    for the same random weights."""
    import numpy as np

    from llamacpu import LlamaForCausalLM
    from llamacpu.checkpoint.quantized import quantize_checkpoint

    ck = _bench_checkpoints()
    streamed = ck.write_quantized_streaming(tmp_path / "streamed", "tiny", "q4_0")
    reference = quantize_checkpoint(write_synthetic(tmp_path / "f32", "tiny", dtype="F32"), tmp_path / "ref", "q4_0")
    ids = np.array([[1, 7, 42, 99, 3]])
    np.testing.assert_array_equal(LlamaForCausalLM.from_pretrained(streamed)(ids).logits,
                                  LlamaForCausalLM.from_pretrained(reference)(ids).logits)
