"""Perplexity with llama-perplexity's windows, against a NumPy computation of the same windows written
out here from llama.cpp's definition (tools/perplexity/perplexity.cpp): consecutive windows of n_ctx
tokens, BOS in front of each, tokens n_ctx/2 + 1 ... n_ctx - 1 scored; --ppl-stride: a window every
stride tokens, its last stride tokens scored."""
import math
import subprocess
import sys

import numpy as np
import pytest

from llamacpu import InputError, LlamaForCausalLM
from llamacpu.perplexity import perplexity, windows
from llamacpu.tokenizer.llama import LlamaTokenizer


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    tok = LlamaTokenizer.from_pretrained(path)
    text = (path / "golden.txt").read_text()
    return LlamaForCausalLM.from_pretrained(path), tok, tok.encode(text), path


def reference(model, ids, n_ctx, stride=None, bos=1):
    """llama.cpp's loops, one token at a time, with the full logits of each window."""
    nlls = []
    if stride is None:
        starts, first = [i * n_ctx for i in range(len(ids) // n_ctx)], n_ctx // 2
    else:
        starts, first = [i * stride for i in range((len(ids) - n_ctx + stride - 1) // stride)], n_ctx - stride - 1
    for start in starts:
        window = list(ids[start:start + n_ctx])
        if stride is None:
            window[0] = bos
        logits = model(np.array([window])).logits[0].astype(np.float64)  # [n_ctx, vocab]
        for j in range(first, n_ctx - 1):
            p = np.exp(logits[j] - logits[j].max())
            nlls.append(-math.log(p[window[j + 1]] / p.sum()))
    nlls = np.array(nlls)
    ppl = math.exp(nlls.mean())
    return ppl, ppl * math.sqrt((np.mean(nlls ** 2) - nlls.mean() ** 2) / (len(nlls) - 1)), len(nlls)


@pytest.mark.parametrize("n_ctx, stride", [(64, None), (48, None), (64, 16), (64, 40)])
def test_matches_numpy_over_the_same_windows(stories, n_ctx, stride):
    model, tok, ids, _ = stories
    got = perplexity(model, ids, n_ctx, stride, bos_token_id=tok.bos_token_id)
    ppl, se, count = reference(model, ids, n_ctx, stride)
    assert got.count == count
    assert got.ppl == pytest.approx(ppl, rel=1e-5)
    assert got.se == pytest.approx(se, rel=1e-4)
    assert 1 < got.ppl < model.config.vocab_size  # a trained model beats the uniform guess


def test_window_arithmetic_and_refusals():
    assert windows(1030, 512) == [(0, 257), (512, 257)]  # the partial third window is dropped
    assert windows(20, 8, stride=4) == [(0, 4), (4, 4), (8, 4)]
    with pytest.raises(InputError, match="at least 1024"):
        windows(1000, 512)
    with pytest.raises(InputError, match="stride"):
        windows(2000, 512, stride=512)


def test_cli_prints_the_same_number(stories, tmp_path):
    model, tok, ids, path = stories
    r = subprocess.run([sys.executable, "-m", "llamacpu.cli", "perplexity", str(path), "-f", str(path / "golden.txt"),
                        "-c", "64"], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    want = perplexity(model, ids, 64, bos_token_id=tok.bos_token_id)
    assert r.stdout.startswith(f"perplexity: {want.ppl:.4f} +/- {want.se:.4f} ({want.windows} windows of 64 tokens")
