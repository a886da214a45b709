"""A Llama-3-architecture GGUF (tests/fixtures/llama3/hf, a transformers checkpoint with llama3 RoPE
scaling made by tools/make_llama3_gguf.py, written as GGUF by llamacpu's writer at test time): logits match
transformers' far past the original context (rope_freqs.weight applied), the Llama 3 pre-tokenizer and
chat template come from the file, and <|eot_id|> ends generation."""
import json
from pathlib import Path

import numpy as np
import pytest

from llamacpu import AutoTokenizer, LlamaForCausalLM
from llamacpu.checkpoint.gguf import read_gguf

FIX = Path(__file__).parent / "fixtures" / "llama3"


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "reference.npz"), json.loads((FIX / "reference.json").read_text(encoding="utf-8"))


def test_file_is_llama3_style(llama3_gguf):
    ckpt = read_gguf(llama3_gguf)
    assert "rope_freqs.weight" in ckpt.tensors and ckpt.config["rope_scaling"] is None
    assert ckpt.tokenizer_metadata["pre"] == "llama-bpe"


def test_logits_match_transformers_past_the_original_context(ref, llama3_gguf):
    npz, _ = ref
    ids = npz["input_ids"]  # 160 positions; the original context is 32
    ours = LlamaForCausalLM.from_pretrained(llama3_gguf)(ids).logits[0]
    want = npz["logits"]
    scale = np.abs(want).max()
    np.testing.assert_allclose(ours, want, atol=2e-4 * scale, rtol=0)
    assert (ours.argmax(-1) == want.argmax(-1)).all()


def test_tokenizer_and_chat_template_from_the_file(ref, llama3_gguf):
    _, meta = ref
    tok = AutoTokenizer.from_pretrained(llama3_gguf)
    for text, ids in meta["texts"].items():
        assert tok.encode(text, add_special_tokens=False) == ids, text
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                                   add_generation_prompt=True, tokenize=False)
    assert chat == meta["chat"]
    assert tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                                   add_generation_prompt=True) == meta["chat_ids"]


def test_eot_is_an_end_token(ref, llama3_gguf):
    _, meta = ref
    m = LlamaForCausalLM.from_pretrained(llama3_gguf)
    end_of_text = m.config.bos_token_id + 1  # <|end_of_text|> follows <|begin_of_text|> in this vocabulary
    assert m.config.eos_token_ids == [end_of_text, meta["eot_id"]]  # generate() stops on either
