"""AutoTokenizer: the right tokenizer for a checkpoint folder or a GGUF file.

    folder with tokenizer.json   -> LlamaTokenizerFast (tokenizers library), as transformers prefers
    folder with tokenizer.model  -> LlamaTokenizer (sentencepiece)
    .gguf, "llama" vocabulary    -> LlamaTokenizer over a SentencePiece model rebuilt from the metadata
    .gguf, "gpt2" vocabulary     -> LlamaTokenizerFast over a byte-level BPE rebuilt from the metadata
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TokenizerError, UnsupportedError
from ..limits import is_present
from ..checkpoint.gguf import read_gguf
from ..hub import check_model_type, resolve_model
from .fast import LlamaTokenizerFast
from .gguf_vocab import fast_tokenizer_from_gguf, sentencepiece_model_proto
from .llama import LlamaTokenizer


def tokenizer_from_gguf_metadata(meta: dict):
    kind = meta.get("model")
    if kind == "llama":
        tokens = meta.get("tokens")
        if not isinstance(tokens, list):
            raise TokenizerError("GGUF vocabulary: tokenizer.ggml.tokens is missing or not a list of strings")

        def piece(key, default):
            i = meta.get(key, default)
            return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None

        return LlamaTokenizer(model_proto=sentencepiece_model_proto(meta),
                              bos_token=piece("bos_token_id", 1), eos_token=piece("eos_token_id", 2),
                              unk_token=piece("unknown_token_id", 0), pad_token=piece("padding_token_id", None),
                              add_bos_token=bool(meta.get("add_bos_token", True)),
                              add_eos_token=bool(meta.get("add_eos_token", False)),
                              chat_template=meta.get("chat_template"))
    if kind == "gpt2":
        return fast_tokenizer_from_gguf(meta)
    raise UnsupportedError(f"GGUF tokenizer model {kind!r} is not supported (only 'llama' and 'gpt2')")


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path, **kwargs):
        check_model_type(path, "AutoTokenizer.from_pretrained")
        path = Path(path) if Path(path).exists() else resolve_model(str(path))
        if path.is_file() and path.suffix == ".gguf":
            return tokenizer_from_gguf_metadata(read_gguf(path).tokenizer_metadata)
        if path.is_dir():
            if is_present(path / "tokenizer.json", TokenizerError, "tokenizer.json"):
                return LlamaTokenizerFast.from_pretrained(path, **kwargs)
            if (path / "tokenizer.model").is_file():
                return LlamaTokenizer.from_pretrained(path, **kwargs)
        raise TokenizerError(f"{path}: no tokenizer.json, tokenizer.model or GGUF vocabulary found")
