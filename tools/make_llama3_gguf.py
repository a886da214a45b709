"""Make tests/fixtures/llama3/: a tiny Llama-3-architecture model with llama3 RoPE scaling, made by
transformers, written as GGUF by llamacpu's writer (rope_freqs.weight, the Llama 3 pre-tokenizer, chat
template and <|eot_id|>, as llama.cpp's converter writes them), and transformers' reference outputs.

    /work/benchenv/bin/python tools/make_llama3_gguf.py      # torch 2.13 + transformers 5.24

The GGUF itself is not committed: the tests write it from hf/ with `llamacpu quantize hf OUT.gguf
--type F32` (tests/conftest.py, `llama3_gguf`), so the writer is exercised on every run.

Written:
  hf/                the transformers checkpoint and tokenizer: F32, 2 layers, hidden 64, 4 heads / 2 kv
                     heads, original context 32, factor 8
  reference.npz      input_ids [1, 160] (positions far past the original 32), transformers' fp32 logits,
                     and the HF tokenizer's ids of TEXTS and of the chat template's rendering
Seeded: the same library versions give the same files.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "fixtures" / "llama3"

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
CHAT_TEMPLATE = ("{% set loop_messages = messages %}{% for message in loop_messages %}"
                 "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
                 " + message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
                 "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
TEXTS = ["Hello world", "It's 2024: don't panic!", "  spaces\n\nand lines", "naïve café 12345"]
WORDS = ["Hello", "Ġworld", "Ġthe", "ing", "Ġpan", "ic", "12", "123"]


def byte_chars() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def tokenizer() -> PreTrainedTokenizerFast:
    chars = byte_chars()
    vocab = {chars[b]: b for b in range(256)}
    merges = []
    for w in WORDS:
        cur = w[0]
        for ch in w[1:]:
            if (cur, ch) not in merges:
                merges.append((cur, ch))
            cur += ch
            vocab.setdefault(cur, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>",
                                   chat_template=CHAT_TEMPLATE)


def main() -> None:
    torch.manual_seed(0)
    tok = tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5,
                      rope_theta=500000.0, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32},
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.convert_tokens_to_ids("<|end_of_text|>"))
    model = LlamaForCausalLM(cfg).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    ids = torch.randint(0, len(tok), (1, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits[0].numpy().astype(np.float32)
    chat = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}],
                                   add_generation_prompt=True, tokenize=False)
    OUT.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(OUT / "hf", safe_serialization=True)
    tok.save_pretrained(OUT / "hf")
    text_ids = {t: tok.encode(t, add_special_tokens=False) for t in TEXTS}
    np.savez(OUT / "reference.npz", input_ids=ids.numpy(), logits=logits)
    (OUT / "reference.json").write_text(json.dumps({"texts": text_ids, "chat": chat, "chat_ids": tok.encode(
        chat, add_special_tokens=False), "eot_id": tok.convert_tokens_to_ids("<|eot_id|>"),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}},
        indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
