"""Tokenizers rebuilt from a GGUF file's tokenizer.ggml.* metadata.

A GGUF carries its vocabulary as arrays, not as a tokenizer file. Two kinds matter for Llama models
(llama.cpp src/llama-vocab.cpp, `llama_vocab::impl::load`):

  tokenizer.ggml.model == "llama"  SentencePiece BPE (Llama 1/2, Mistral, TinyLlama): pieces with
      scores (merge priority) and piece types. We write them into a SentencePiece ModelProto and let
      the sentencepiece library tokenize: `sentencepiece_model_proto(meta) -> bytes`.
  tokenizer.ggml.model == "gpt2"   byte-level BPE (Llama 3, SmolLM, Qwen...): tokens, merges and a
      pre-tokenizer named by tokenizer.ggml.pre, whose split regexes live in llama.cpp's source, not in
      the file. `gpt2_tokenizer(meta) -> tokenizers.Tokenizer`.

`meta` is `GGUFCheckpoint.tokenizer_metadata`: the tokenizer.ggml.* keys without the prefix
(model, pre, tokens, scores, token_type, merges, bos_token_id, eos_token_id, unknown_token_id,
padding_token_id, add_bos_token, add_eos_token, add_space_prefix, ...) plus chat_template.
`gguf_metadata_from_sentencepiece` goes the other way, for tests and GGUF writing.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np

from llamacpu.errors import TokenizerError, UnsupportedError
from llamacpu.tokenizer.fast import LlamaTokenizerFast

# gguf.TokenType; the numbering is SentencePiece's ModelProto.SentencePiece.Type, which llama.cpp copied.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


# ---------------------------------------------------------------------------------------------------
# SentencePiece ("llama") vocabularies
#
# sentencepiece ships its schema as sentencepiece_model_pb2, which imports `protobuf`; protobuf is not
# one of our dependencies (and would be only for this). The message needs a handful of fields, so we
# write the protobuf wire format directly. Field numbers from sentencepiece/src/sentencepiece_model.proto:
#   ModelProto:      1 pieces (repeated SentencePiece), 2 trainer_spec, 3 normalizer_spec
#   SentencePiece:   1 piece (string), 2 score (float), 3 type (enum)
#   TrainerSpec:     3 model_type (BPE = 2), 4 vocab_size, 35 byte_fallback, 40-43 unk/bos/eos/pad id,
#                    45-48 unk/bos/eos/pad piece
#   NormalizerSpec:  1 name, 3 add_dummy_prefix, 4 remove_extra_whitespaces, 5 escape_whitespaces

_VARINT, _I32, _LEN = 0, 5, 2  # protobuf wire types used here


def _varint(v: int) -> bytes:
    v &= (1 << 64) - 1  # negative int32 ids (pad_id = -1) are encoded as 64-bit two's complement
    out = bytearray()
    while True:
        b, v = v & 0x7F, v >> 7
        out.append(b | 0x80 if v else b)
        if not v:
            return bytes(out)


def _tag(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _pb_int(field: int, v: int) -> bytes:
    return _tag(field, _VARINT) + _varint(int(v))


def _pb_float(field: int, v: float) -> bytes:
    return _tag(field, _I32) + struct.pack("<f", float(v))


def _pb_bytes(field: int, b: bytes) -> bytes:
    return _tag(field, _LEN) + _varint(len(b)) + b


def _token_arrays(meta: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    tokens = meta.get("tokens")
    if not isinstance(tokens, list) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("GGUF vocabulary: tokenizer.ggml.tokens is missing or not a list of strings")
    n = len(tokens)
    try:
        scores = np.asarray(meta.get("scores", np.zeros(n)), dtype=np.float32)
        types = np.asarray(meta.get("token_type", np.full(n, NORMAL)), dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise TokenizerError(f"GGUF vocabulary: tokenizer.ggml.scores and token_type must be numbers ({e})") from None
    if scores.shape != (n,) or types.shape != (n,):
        raise TokenizerError(f"GGUF vocabulary: {n} tokens but {scores.size} scores and {types.size} token types")
    return tokens, scores, types


def _special_id(meta: dict, key: str, default: int | None, n: int) -> int | None:
    v = meta.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TokenizerError(f"GGUF vocabulary: tokenizer.ggml.{key} is {v!r}, expected a token id")
    v = int(v)
    if v == -1 or v == 0xFFFFFFFF:  # llama.cpp writes LLAMA_TOKEN_NULL (-1) or its uint32 image for "none"
        return None
    if not 0 <= v < n:
        raise TokenizerError(f"GGUF vocabulary: tokenizer.ggml.{key} = {v} is outside the {n}-token vocabulary")
    return v


def sentencepiece_model_proto(meta: dict) -> bytes:
    """Serialized SentencePiece ModelProto (BPE, byte fallback) for a tokenizer.ggml.model == "llama"
    vocabulary, checked by loading it into sentencepiece. Pass it to LlamaTokenizer(model_proto=...).

    Normalization is "identity" like llama.cpp's SPM tokenizer: only the dummy prefix
    (tokenizer.ggml.add_space_prefix, default true) and spaces -> U+2581 (escape_whitespaces)."""
    import sentencepiece as spm

    if meta.get("model", "llama") != "llama":
        raise TokenizerError(f"GGUF vocabulary is {meta.get('model')!r}, not a SentencePiece ('llama') one")
    tokens, scores, types = _token_arrays(meta)
    n = len(tokens)
    unk = _special_id(meta, "unknown_token_id", 0, n)
    bos = _special_id(meta, "bos_token_id", 1, n)
    eos = _special_id(meta, "eos_token_id", 2, n)
    pad = _special_id(meta, "padding_token_id", None, n)
    if unk is None or types[unk] != UNKNOWN:
        raise TokenizerError(f"GGUF vocabulary: unknown_token_id {unk} is not a token of type UNKNOWN")

    pieces = bytearray()
    for i, (tok, score, typ) in enumerate(zip(tokens, scores, types)):
        if not tok:
            tok = f"[EMPTY_{i}]"  # sentencepiece rejects empty pieces; llama.cpp renames them the same way
        typ = int(typ) if NORMAL <= typ <= BYTE else NORMAL
        pieces += _pb_bytes(1, _pb_bytes(1, tok.encode("utf-8")) + _pb_float(2, score) + _pb_int(3, typ))

    trainer = (_pb_int(3, 2) + _pb_int(4, n) + _pb_int(35, 1)
               + _pb_int(40, unk) + _pb_int(41, -1 if bos is None else bos)
               + _pb_int(42, -1 if eos is None else eos) + _pb_int(43, -1 if pad is None else pad)
               + _pb_bytes(45, tokens[unk].encode("utf-8")))
    for field, tid in ((46, bos), (47, eos), (48, pad)):
        if tid is not None:
            trainer += _pb_bytes(field, tokens[tid].encode("utf-8"))
    normalizer = (_pb_bytes(1, b"identity")
                  + _pb_int(3, bool(meta.get("add_space_prefix", True)))
                  + _pb_int(4, bool(meta.get("remove_extra_whitespaces", False)))
                  + _pb_int(5, 1))
    proto = bytes(pieces) + _pb_bytes(2, trainer) + _pb_bytes(3, normalizer)
    try:
        spm.SentencePieceProcessor(model_proto=proto)
    except Exception as e:  # sentencepiece raises RuntimeError/OSError with its own message
        raise TokenizerError(f"GGUF vocabulary does not make a valid SentencePiece model: {e}") from e
    return proto


def gguf_metadata_from_sentencepiece(model: str | Path | bytes) -> dict[str, Any]:
    """tokenizer.ggml.* metadata (as in GGUFCheckpoint.tokenizer_metadata) for a SentencePiece
    tokenizer.model, the way convert_hf_to_gguf.py's _create_vocab_sentencepiece fills it.

    Uses sentencepiece's own API. It does not expose USER_DEFINED piece types (they come out NORMAL),
    nor the normalizer flags, which are read off its behaviour instead."""
    import sentencepiece as spm

    try:
        if isinstance(model, bytes):
            sp = spm.SentencePieceProcessor(model_proto=model)
        else:
            sp = spm.SentencePieceProcessor(model_file=str(model))
    except Exception as e:
        where = "" if isinstance(model, bytes) else f" {model}"
        raise TokenizerError(f"cannot load SentencePiece model{where}: {e}") from e
    n = sp.get_piece_size()
    tokens, scores, types = [], np.zeros(n, np.float32), np.full(n, NORMAL, np.int32)
    for i in range(n):
        tokens.append(sp.id_to_piece(i))
        scores[i] = sp.get_score(i)
        if sp.is_unknown(i):
            types[i] = UNKNOWN
        elif sp.is_control(i):
            types[i] = CONTROL
        elif sp.is_unused(i):
            types[i] = UNUSED
        elif sp.is_byte(i):
            types[i] = BYTE
    meta: dict[str, Any] = {
        "model": "llama",
        "tokens": tokens,
        "scores": scores,
        "token_type": types,
        "add_space_prefix": sp.encode("a", out_type=str)[0].startswith("\u2581"),
        "add_bos_token": True,
        "add_eos_token": False,
    }
    if sp.decode(sp.encode("a  b")) == "a b":
        meta["remove_extra_whitespaces"] = True
    for key, tid in (("bos_token_id", sp.bos_id()), ("eos_token_id", sp.eos_id()),
                     ("unknown_token_id", sp.unk_id()), ("padding_token_id", sp.pad_id())):
        if tid >= 0:
            meta[key] = tid
    return meta


def add_tokenizer_metadata(writer: Any, meta: dict) -> None:
    """Write tokenizer metadata (GGUFCheckpoint.tokenizer_metadata layout) into a gguf.GGUFWriter."""
    writer.add_tokenizer_model(meta["model"])
    if "pre" in meta:
        writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    if "scores" in meta:
        writer.add_token_scores([float(s) for s in meta["scores"]])
    if "token_type" in meta:
        writer.add_token_types([int(t) for t in meta["token_type"]])
    if "merges" in meta:
        writer.add_token_merges(meta["merges"])
    for key, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                     ("unknown_token_id", writer.add_unk_token_id), ("padding_token_id", writer.add_pad_token_id),
                     ("add_bos_token", writer.add_add_bos_token), ("add_eos_token", writer.add_add_eos_token),
                     ("add_space_prefix", writer.add_add_space_prefix),
                     ("remove_extra_whitespaces", writer.add_remove_extra_whitespaces),
                     ("chat_template", writer.add_chat_template)):
        if key in meta:
            add(meta[key])


# ---------------------------------------------------------------------------------------------------
# Byte-level BPE ("gpt2") vocabularies
#
# The split regexes per tokenizer.ggml.pre, from llama.cpp src/llama-vocab.cpp (llm_tokenizer_bpe).
# Each regex splits every piece left by the one before it, keeping matches and the text between them
# (tokenizers' Split(..., "isolated")). llama.cpp's versions of the Hugging Face regexes spell
# case-insensitive contractions as (?:'[sS]|...) because its regex engine lacks (?i:...).

_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class BPEPre:
    """How llama.cpp pre-tokenizes one family: split regexes, whether a whole pre-token found in the
    vocabulary skips the merges (ignore_merges), the add_bos default, and decode-time space cleanup."""

    def __init__(self, regexes: list[str], ignore_merges: bool = False, add_bos: bool = False,
                 clean_spaces: bool = True):
        self.regexes, self.ignore_merges = regexes, ignore_merges
        self.add_bos, self.clean_spaces = add_bos, clean_spaces


_DEFAULT = BPEPre([r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"])
_LLAMA3_PRE = BPEPre([_LLAMA3], ignore_merges=True, add_bos=True)
_GPT2_PRE = BPEPre([_GPT2])
_DIGITS_GPT2 = BPEPre([r"\p{N}", _GPT2])            # LLAMA_VOCAB_PRE_TYPE_SMOLLM / STARCODER / ...
_DIGITS_GPT2_NOCLEAN = BPEPre([r"\p{N}", _GPT2], clean_spaces=False)

# tokenizer.ggml.pre -> pre-tokenizer (llama-vocab.cpp's name table, for the families listed)
BPE_PRE_TYPES: dict[str, BPEPre] = {
    "default": _DEFAULT,
    **dict.fromkeys(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"],
                    _LLAMA3_PRE),
    **dict.fromkeys(["dbrx", "smaug-bpe"], BPEPre([_LLAMA3])),
    **dict.fromkeys(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
                     "mellum", "mpt", "olmo", "jais", "exaone4"], _GPT2_PRE),
    **dict.fromkeys(["starcoder", "refact", "codeshell", "exaone", "minerva-7b"], _DIGITS_GPT2),
    **dict.fromkeys(["smollm", "command-r"], _DIGITS_GPT2_NOCLEAN),
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "megrez"], BPEPre([_QWEN2], clean_spaces=False)),
    "stablelm2": BPEPre([_QWEN2]),
    "falcon": BPEPre([r"[\p{P}\$\+<=>\^~\|`]+", _GPT2, r"[0-9][0-9][0-9]"]),
}


def bpe_pre(meta: dict) -> BPEPre:
    """The pre-tokenizer for tokenizer.ggml.pre ("default" when absent, as llama.cpp does)."""
    name = meta.get("pre", "default")
    if not isinstance(name, str) or name not in BPE_PRE_TYPES:
        raise UnsupportedError(f"GGUF byte-level BPE pre-tokenizer {name!r} (tokenizer.ggml.pre) is not supported; "
                               f"known: {', '.join(sorted(BPE_PRE_TYPES))}")
    return BPE_PRE_TYPES[name]


def gpt2_tokenizer(meta: dict):
    """tokenizers.Tokenizer for a tokenizer.ggml.model == "gpt2" vocabulary: byte-level BPE over
    tokens + merges, split by the regexes of tokenizer.ggml.pre, CONTROL tokens as special added tokens,
    USER_DEFINED ones as plain added tokens (matched before splitting, never merged across)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    if meta.get("model") != "gpt2":
        raise TokenizerError(f"GGUF vocabulary is {meta.get('model')!r}, not a byte-level BPE ('gpt2') one")
    pre = bpe_pre(meta)
    tokens, _scores, types = _token_arrays(meta)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens):
        dup = next(t for i, t in enumerate(tokens) if vocab[t] != i)
        raise TokenizerError(f"GGUF vocabulary: token {dup!r} appears more than once")
    raw_merges = meta.get("merges")
    if not isinstance(raw_merges, list) or not all(isinstance(m, str) for m in raw_merges):
        raise TokenizerError("GGUF vocabulary: tokenizer.ggml.merges is missing or not a list of strings")
    merges = []
    for m in raw_merges:
        cut = m.find(" ", 1)  # llama.cpp splits at the first space after the first character
        if cut < 0:
            raise TokenizerError(f"GGUF vocabulary: merge {m!r} is not two tokens separated by a space")
        merges.append((m[:cut], m[cut + 1:]))
    try:
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre.ignore_merges,
                                   fuse_unk=False, byte_fallback=False))
    except Exception as e:
        raise TokenizerError(f"GGUF vocabulary does not make a valid BPE model: {e}") from e
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in pre.regexes]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False)
                            for i in np.flatnonzero(types == CONTROL)])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False)
                    for i in np.flatnonzero(types == USER_DEFINED)])
    return tok


def fast_tokenizer_from_gguf(meta: dict):
    """LlamaTokenizerFast for a byte-level BPE GGUF vocabulary, with its special tokens, add_bos/eos
    (GGUF flags, else llama.cpp's per-pre defaults) and chat template."""
    tok = gpt2_tokenizer(meta)
    pre = bpe_pre(meta)
    tokens = meta["tokens"]
    n = len(tokens)

    def piece(key: str) -> str | None:
        i = _special_id(meta, key, None, n)
        return None if i is None else tokens[i]

    types = np.asarray(meta.get("token_type", ()))
    control = [tokens[i] for i in np.flatnonzero(types == CONTROL)]
    return LlamaTokenizerFast(
        tokenizer_object=tok,
        additional_special_tokens=control,  # what transformers lists in additional_special_tokens
        bos_token=piece("bos_token_id"), eos_token=piece("eos_token_id"),
        unk_token=piece("unknown_token_id"), pad_token=piece("padding_token_id"),
        add_bos_token=bool(meta.get("add_bos_token", pre.add_bos)),
        add_eos_token=bool(meta.get("add_eos_token", False)),
        chat_template=meta.get("chat_template"),
        clean_up_tokenization_spaces=pre.clean_spaces,
    )
