"""A generator of hostile inputs: files, templates, arguments and faults built on purpose, as an attacker
or an unlucky user would make them (the fuzz tests in test_reliability.py mutate good files at random;
these aim at each known way a reader, a template or an entry point can be made to crash, hang, allocate
without bound or answer wrongly).

Each kind of case is a function registered with `@case(kind, expect, match)`:
  expect=<a LlamacpuError subclass>: the case must raise it, with a message matching `match` (it names the
      file or the argument, and what was expected);
  expect=None: the case must return; its own asserts check the result (an AssertionError is "wrong").
A case gets a `Ctx` (a fresh temporary folder and shared fixtures: a tiny checkpoint, its model, a
SentencePiece tokenizer...). `tests/hostile_worker.py` runs them, each under a time and a memory limit,
and sorts every outcome into ok / crash / hang / wrong; `tests/test_hostile.py` runs them all.
"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from llamacpu.errors import CheckpointError, ConfigError, InputError, TokenizerError, UnsupportedError


@dataclass
class Case:
    kind: str
    run: Callable
    expect: type | None
    match: str
    budget_s: float  # the case fails ("wrong") when it takes longer than TIME_SCALE times this, though it
    # finished: a guard against quadratic or unbounded work, not a speed test (the machine may be loaded)
    budget_mb: int  # ... or when the peak resident memory grows by more


CASES: dict[str, Case] = {}
TIME_SCALE = float(os.environ.get("HOSTILE_TIME_SCALE", "5"))


def case(kind: str, expect: type | None = None, match: str = "", budget_s: float = 10.0, budget_mb: int = 400):
    def register(fn):
        assert kind not in CASES, kind
        CASES[kind] = Case(kind, fn, expect, match, budget_s, budget_mb)
        return fn

    return register


# ---- fixtures shared by the cases of one worker --------------------------------------------------------

class Ctx:
    """Fixtures built once per worker process (cheap: a tiny checkpoint and a 300-token vocabulary)."""

    def __init__(self, root: Path):
        self.root = root
        self.tmp = root  # replaced by a fresh folder for every case
        self._model = None
        self._tok = None

    @property
    def vocab(self) -> dict:
        """A SentencePiece-style ("llama") GGUF vocabulary: <unk> <s> </s>, 256 byte tokens, some words."""
        words = ["▁the", "▁a", "▁hello", "▁world", "▁is", "▁and", "▁cat", "▁dog", "he", "ll", "o", "▁"]
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + words
        types = [2, 3, 3] + [6] * 256 + [1] * len(words)
        scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
        return {"model": "llama", "tokens": tokens, "scores": np.array(scores, np.float32),
                "token_type": np.array(types, np.int32), "bos_token_id": 1, "eos_token_id": 2,
                "unknown_token_id": 0, "add_bos_token": True}

    @property
    def checkpoint(self) -> Path:
        """A tiny random Llama whose vocabulary matches `vocab`, with the tokenizer beside it."""
        folder = self.root / "tiny"
        if not (folder / "config.json").is_file():
            from llamacpu.checkpoint.synthetic import write_synthetic
            from llamacpu.tokenizer.gguf_vocab import sentencepiece_model_proto

            write_synthetic(folder, "tiny", vocab_size=len(self.vocab["tokens"]), max_position_embeddings=512)
            (folder / "tokenizer.model").write_bytes(sentencepiece_model_proto(self.vocab))
            (folder / "tokenizer_config.json").write_text(json.dumps(
                {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                 "chat_template": "{% for m in messages %}<s>{{ m.role }}: {{ m.content }}</s>{% endfor %}"
                                  "{% if add_generation_prompt %}<s>assistant:{% endif %}"}))
        return folder

    @property
    def model(self):
        if self._model is None:
            from llamacpu import LlamaForCausalLM

            self._model = LlamaForCausalLM.from_pretrained(self.checkpoint)
        return self._model

    @property
    def tok(self):
        if self._tok is None:
            from llamacpu import LlamaTokenizer

            self._tok = LlamaTokenizer.from_pretrained(self.checkpoint)
        return self._tok

    @property
    def fast_tok(self):
        from tokenizers import Tokenizer, models

        from llamacpu.tokenizer.fast import LlamaTokenizerFast

        vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "a", "b", "ab"])}
        return LlamaTokenizerFast(tokenizer_object=Tokenizer(models.BPE(vocab=vocab, merges=[("a", "b")],
                                                                        unk_token="<unk>")))

    def copy_checkpoint(self, name="ck") -> Path:
        import shutil

        dst = self.tmp / name
        shutil.copytree(self.checkpoint, dst)
        return dst


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def nested(depth: int, leaf="0") -> str:
    return "[" * depth + leaf + "]" * depth


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def load(path, **kw):
    from llamacpu import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, **kw)


def load_tok(path):
    from llamacpu import LlamaTokenizer

    return LlamaTokenizer.from_pretrained(path)


# ---- config.json -------------------------------------------------------------------------------------

def with_config(ctx, **changes) -> Path:
    ck = ctx.copy_checkpoint()
    cfg = json.loads((ck / "config.json").read_text())
    cfg.update(changes)
    (ck / "config.json").write_text(json.dumps(cfg))
    return ck


@case("config: num_hidden_layers 2**31", CheckpointError, r"num_hidden_layers=2147483648", budget_s=2)
def _(ctx):
    load(with_config(ctx, num_hidden_layers=2**31))


@case("config: vocab_size 2**31", CheckpointError, r"shape \[271, 64\], expected \[2147483648, 64\]", budget_s=2)
def _(ctx):
    load(with_config(ctx, vocab_size=2**31))


@case("config: max_position_embeddings 16M under RLIMIT_AS", InputError, r"KV cache.*max_context", budget_s=3)
def _(ctx):
    load(with_config(ctx, max_position_embeddings=16 << 20))(np.array([[1, 2]]))


@case("config: max_position_embeddings 2**31", InputError, r"KV cache.*max_context", budget_s=3)
def _(ctx):
    load(with_config(ctx, max_position_embeddings=2**31))(np.array([[1, 2]]))


@case("config: 100000 nested arrays", ConfigError, r"config.json.*nested deeper", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "config.json").write_text(nested(100_000))
    load(ck)


@case("config: 500-deep value in a field", ConfigError, r"config.json.*nested deeper than 100", budget_s=2)
def _(ctx):
    ck = with_config(ctx)
    cfg = (ck / "config.json").read_text()
    (ck / "config.json").write_text(cfg[:-1] + ', "junk": ' + nested(500) + "}")
    load(ck)


@case("config: not UTF-8", ConfigError, r"config.json.*not UTF-8")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "config.json").write_bytes(b'{"model_type": "\xff\xfe"}')
    load(ck)


@case("config: a FIFO", ConfigError, r"config.json.*FIFO", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "config.json").unlink()
    fifo(ck / "config.json")
    load(ck)


@case("config: a folder", ConfigError, r"config.json.*directory")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "config.json").unlink()
    (ck / "config.json").mkdir()
    load(ck)


@case("config: 4 GiB sparse file", ConfigError, r"config.json.*bytes, more than", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    with open(ck / "config.json", "wb") as f:
        f.truncate(4 << 30)
    load(ck)


@case("config: rope_theta NaN", ConfigError, r"rope_theta")
def _(ctx):
    ck = with_config(ctx)
    (ck / "config.json").write_text((ck / "config.json").read_text()[:-1] + ', "rope_theta": NaN}')
    load(ck)


@case("config: heads not divisible", ConfigError, r"num_key_value_heads")
def _(ctx):
    load(with_config(ctx, num_key_value_heads=3))


@case("config: rope_scaling a list", ConfigError, r"rope_scaling")
def _(ctx):
    load(with_config(ctx, rope_scaling=[1, 2]))


@case("config: eos_token_id 2**70", ConfigError, r"eos_token_id")
def _(ctx):
    load(with_config(ctx, eos_token_id=2**70))


@case("config: pad_token_id 2**70", ConfigError, r"pad_token_id")
def _(ctx):
    load(with_config(ctx, pad_token_id=2**70))


@case("config: hidden_size true", ConfigError, r"hidden_size")
def _(ctx):
    load(with_config(ctx, hidden_size=True))


@case("config: a JSON array", ConfigError, r"expected a JSON object")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "config.json").write_text("[1, 2]")
    load(ck)


# ---- safetensors ---------------------------------------------------------------------------------------

def safetensors_bytes(header, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def with_weights(ctx, blob: bytes) -> Path:
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors").write_bytes(blob)
    return ck


@case("safetensors: header nested 100000 deep", CheckpointError, r"model.safetensors.*nested deeper")
def _(ctx):
    load(with_weights(ctx, safetensors_bytes(nested(100_000).encode())))


@case("safetensors: header length 2**63", CheckpointError, r"header length")
def _(ctx):
    load(with_weights(ctx, struct.pack("<Q", 2**63) + b"{}"))


@case("safetensors: offsets past the end", CheckpointError, r"data_offsets")
def _(ctx):
    load(with_weights(ctx, safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"x" * 8)))


@case("safetensors: shape 2**39 x 2**39", CheckpointError, r"bad shape|do not hold")
def _(ctx):
    load(with_weights(ctx, safetensors_bytes({"a": {"dtype": "F32", "shape": [2**39, 2**39], "data_offsets": [0, 8]}},
                                             b"x" * 8)))


@case("safetensors: overlapping tensors", CheckpointError, r"overlap")
def _(ctx):
    e = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    load(with_weights(ctx, safetensors_bytes({"a": e, "b": {**e, "data_offsets": [4, 12]}}, b"x" * 16)))


@case("safetensors: truncated data", CheckpointError, r"model.safetensors")
def _(ctx):
    ck = ctx.copy_checkpoint()
    raw = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    load(ck)


@case("safetensors: model.safetensors is a FIFO", CheckpointError, r"model.safetensors.*FIFO", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors").unlink()
    fifo(ck / "model.safetensors")
    load(ck)


@case("safetensors: a lone shard that is a FIFO", CheckpointError, r"x.safetensors.*FIFO", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors").unlink()
    fifo(ck / "x.safetensors")
    load(ck)


@case("safetensors: a link to /dev/zero", CheckpointError, r"model.safetensors.*device", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors").unlink()
    (ck / "model.safetensors").symlink_to("/dev/zero")
    load(ck)


@case("safetensors: shard index nested 100000 deep", CheckpointError, r"index.json.*nested deeper")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors.index.json").write_text(nested(100_000))
    load(ck)


@case("safetensors: shard index names a FIFO", CheckpointError, r"FIFO|missing", budget_s=2)
def _(ctx):
    ck = ctx.copy_checkpoint()
    fifo(ck / "shard.safetensors")
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "shard.safetensors"}}))
    load(ck)


@case("safetensors: shard index path traversal", CheckpointError, r"shard '../model.safetensors' is missing")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../model.safetensors"}}))
    load(ck)


@case("safetensors: shard index is a list", CheckpointError, r"index.json.*expected a JSON object")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors.index.json").write_text("[1]")
    load(ck)


@case("safetensors: weight_map is a string", CheckpointError, r"corrupt shard index")
def _(ctx):
    ck = ctx.copy_checkpoint()
    (ck / "model.safetensors.index.json").write_text(json.dumps({"weight_map": "x"}))
    load(ck)


# ---- GGUF --------------------------------------------------------------------------------------------

def gstr(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b


def gguf_bytes(kvs: list[bytes], n_tensors: int = 0, version: int = 3, tensor_infos: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", version, n_tensors, len(kvs)) + b"".join(kvs) + tensor_infos


def kv_str(key: bytes, value: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", 8) + gstr(value)


def write_gguf(ctx, blob: bytes) -> Path:
    path = ctx.tmp / "m.gguf"
    path.write_bytes(blob)
    return path


def read(path):
    from llamacpu.checkpoint.gguf import read_gguf

    return read_gguf(path)


ARCH = kv_str(b"general.architecture", b"llama")


@case("gguf: 2M empty metadata strings (15 MB)", CheckpointError, r"more than \d+ strings", budget_s=3, budget_mb=100)
def _(ctx):
    n = 2_000_000
    read(write_gguf(ctx, gguf_bytes([ARCH, gstr(b"x") + struct.pack("<IIQ", 9, 8, n) + gstr(b"") * n])))


@case("gguf: 1M empty nested arrays", CheckpointError, r"arrays inside arrays", budget_s=3, budget_mb=100)
def _(ctx):
    n = 1_000_000
    read(write_gguf(ctx, gguf_bytes([ARCH, gstr(b"x") + struct.pack("<IIQ", 9, 9, n)
                                     + struct.pack("<IQ", 4, 0) * n])))


@case("gguf: 500k short strings in 4 arrays", CheckpointError, r"tensor|token_embd|missing", budget_s=3, budget_mb=100)
def _(ctx):
    n = 125_000
    arrays = [gstr(b"x%d" % i) + struct.pack("<IIQ", 9, 8, n) + gstr(b"ab") * n for i in range(4)]
    read(write_gguf(ctx, gguf_bytes([ARCH] + arrays)))


@case("gguf: array of 2**60 int32", CheckpointError, r"truncated or corrupt", budget_s=3)
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH, gstr(b"x") + struct.pack("<IIQ", 9, 5, 2**60) + b"\0" * 64])))


@case("gguf: string length 2**63", CheckpointError, r"truncated or corrupt", budget_s=3)
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([gstr(b"x") + struct.pack("<IQ", 8, 2**63) + b"abc"])))


@case("gguf: tensor count 2**60", CheckpointError, r"truncated or corrupt|more than", budget_s=3)
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], n_tensors=2**60)))


@case("gguf: key count 2**60", CheckpointError, r"truncated or corrupt|more than", budget_s=3)
def _(ctx):
    read(write_gguf(ctx, b"GGUF" + struct.pack("<IQQ", 3, 0, 2**60) + ARCH))


@case("gguf: bad magic", CheckpointError, r"not a GGUF file")
def _(ctx):
    read(write_gguf(ctx, b"GGML" + b"\0" * 60))


@case("gguf: version 99", CheckpointError, r"unknown GGUF version 99")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], version=99)))


@case("gguf: empty file", CheckpointError, r"empty file")
def _(ctx):
    read(write_gguf(ctx, b""))


@case("gguf: a FIFO", CheckpointError, r"m.gguf.*FIFO", budget_s=2)
def _(ctx):
    read(fifo(ctx.tmp / "m.gguf"))


@case("gguf: arrays nested 4 deep", CheckpointError, r"nests arrays too deeply")
def _(ctx):
    inner = struct.pack("<IQ", 4, 0)
    for _ in range(4):
        inner = struct.pack("<IQ", 9, 1) + inner
    read(write_gguf(ctx, gguf_bytes([ARCH, gstr(b"x") + struct.pack("<I", 9) + inner])))


def tensor_info(name: bytes, dims, ggml_type: int, offset: int) -> bytes:
    return gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims) + \
        struct.pack("<IQ", ggml_type, offset)


@case("gguf: tensor data past the end", CheckpointError, r"runs past the end")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], 1, tensor_infos=tensor_info(b"token_embd.weight", [64, 1 << 20], 0, 0))))


@case("gguf: tensor with a zero dimension", CheckpointError, r"has dims")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], 1, tensor_infos=tensor_info(b"token_embd.weight", [0, 4], 0, 0)) + b"\0" * 64))


@case("gguf: unknown tensor type", UnsupportedError, r"unknown ggml type 999")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], 1, tensor_infos=tensor_info(b"token_embd.weight", [4, 4], 999, 0))))


@case("gguf: key not UTF-8", CheckpointError, r"not UTF-8")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([kv_str(b"\xff\xfe", b"x")])))


@case("gguf: 5-dimensional tensor", CheckpointError, r"5 dimensions")
def _(ctx):
    read(write_gguf(ctx, gguf_bytes([ARCH], 1, tensor_infos=tensor_info(b"t", [1, 1, 1, 1, 1], 0, 0))))


@case("gguf: block_count 2**31", ConfigError, r"implausible hyperparameters")
def _(ctx):
    kvs = [ARCH] + [gstr(k) + struct.pack("<II", 4, v) for k, v in (
        (b"llama.embedding_length", 4), (b"llama.block_count", 2**31), (b"llama.attention.head_count", 2),
        (b"llama.feed_forward_length", 4), (b"llama.context_length", 8))]
    data = np.zeros((4, 4), np.float32).tobytes()
    info = tensor_info(b"token_embd.weight", [4, 4], 0, 0)
    blob = gguf_bytes(kvs, 1, tensor_infos=info)
    blob += b"\0" * (-len(blob) % 32) + data
    read(write_gguf(ctx, blob))


def gguf_tokenizer(meta):
    from llamacpu.tokenizer.auto import tokenizer_from_gguf_metadata

    return tokenizer_from_gguf_metadata(meta)


@case("gguf vocab: llama without tokens", TokenizerError, r"tokenizer.ggml.tokens")
def _(ctx):
    meta = ctx.vocab
    del meta["tokens"]
    gguf_tokenizer(meta)


@case("gguf vocab: scores are strings", TokenizerError, r"scores")
def _(ctx):
    meta = ctx.vocab
    meta["scores"] = ["x"] * len(meta["tokens"])
    gguf_tokenizer(meta)


@case("gguf vocab: token types are strings", TokenizerError, r"token_type")
def _(ctx):
    meta = ctx.vocab
    meta["token_type"] = ["x"] * len(meta["tokens"])
    gguf_tokenizer(meta)


@case("gguf vocab: bos id outside the vocabulary", TokenizerError, r"bos_token_id")
def _(ctx):
    meta = ctx.vocab
    meta["bos_token_id"] = 10**6
    gguf_tokenizer(meta)


@case("gguf vocab: gpt2 pre is a list", UnsupportedError, r"tokenizer.ggml.pre")
def _(ctx):
    gguf_tokenizer({"model": "gpt2", "pre": ["x"], "tokens": ["a", "b"], "merges": ["a b"]})


@case("gguf vocab: tokens not strings", TokenizerError, r"tokenizer.ggml.tokens")
def _(ctx):
    meta = ctx.vocab
    meta["tokens"] = list(range(len(meta["tokens"])))
    gguf_tokenizer(meta)


# ---- tokenizer files -----------------------------------------------------------------------------------

def tok_folder(ctx, **files) -> Path:
    ck = ctx.copy_checkpoint()
    for name, content in files.items():
        name = name.replace("__", ".")
        (ck / name).unlink(missing_ok=True)
        if content is fifo:
            fifo(ck / name)
        elif isinstance(content, bytes):
            (ck / name).write_bytes(content)
        else:
            (ck / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return ck


@case("tokenizer_config: nested 100000 deep", TokenizerError, r"tokenizer_config.json.*nested deeper")
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer_config__json=nested(100_000)))


@case("tokenizer_config: added_tokens_decoder key not a number", TokenizerError, r"added_tokens_decoder.*'abc'")
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer_config__json={"added_tokens_decoder": {"abc": {"content": "<x>"}}}))


@case("tokenizer_config: added_tokens_decoder a list", TokenizerError, r"added_tokens_decoder.*list")
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer_config__json={"added_tokens_decoder": [1, 2]}))


@case("tokenizer_config: model_max_length a string", TokenizerError, r"model_max_length")
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer_config__json={"model_max_length": "big"}))


@case("tokenizer_config: a FIFO", TokenizerError, r"tokenizer_config.json.*FIFO", budget_s=2)
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer_config__json=fifo))


@case("added_tokens.json: id not a number", TokenizerError, r"added_tokens.json.*'y'")
def _(ctx):
    load_tok(tok_folder(ctx, added_tokens__json={"x": "y"}))


@case("added_tokens.json: id 2**40", TokenizerError, r"added_tokens.json.*1099511627776")
def _(ctx):
    load_tok(tok_folder(ctx, added_tokens__json={"x": 2**40}))


@case("special_tokens_map.json: nested 100000 deep", TokenizerError, r"special_tokens_map.json.*nested")
def _(ctx):
    load_tok(tok_folder(ctx, special_tokens_map__json=nested(100_000)))


@case("tokenizer.model: a FIFO", TokenizerError, r"tokenizer.model.*FIFO", budget_s=2)
def _(ctx):
    load_tok(tok_folder(ctx, tokenizer__model=fifo))


@case("tokenizer.json: a FIFO", TokenizerError, r"tokenizer.json.*FIFO", budget_s=2)
def _(ctx):
    from llamacpu.tokenizer.fast import LlamaTokenizerFast

    LlamaTokenizerFast.from_pretrained(tok_folder(ctx, tokenizer__json=fifo))


@case("tokenizer.json: nested 100000 deep", TokenizerError, r"tokenizer.json")
def _(ctx):
    from llamacpu.tokenizer.fast import LlamaTokenizerFast

    LlamaTokenizerFast.from_pretrained(tok_folder(ctx, tokenizer__json=nested(100_000)))


@case("chat_template.jinja: not UTF-8", TokenizerError, r"chat_template.jinja.*not UTF-8")
def _(ctx):
    load_tok(tok_folder(ctx, chat_template__jinja=b"{{ '\xff' }}", tokenizer_config__json={}))


@case("tokenizer_config: chat_template a list of named templates")
def _(ctx):
    tok = load_tok(tok_folder(ctx, tokenizer_config__json={"chat_template": [
        {"name": "default", "template": "D{{ messages[0].content }}"},
        {"name": "tool_use", "template": "T{{ messages[0].content }}"}]}))
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == "Dhi"
    assert tok.apply_chat_template(msgs, tokenize=False, chat_template="tool_use") == "Thi"


@case("tokenizer_config: chat_template a list without default", TokenizerError, r"no template named 'default'")
def _(ctx):
    tok = load_tok(tok_folder(ctx, tokenizer_config__json={"chat_template": [{"name": "x", "template": "X"}]}))
    tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@case("tokenizer_config: chat_template a list of numbers", TokenizerError, r"chat_template")
def _(ctx):
    tok = load_tok(tok_folder(ctx, tokenizer_config__json={"chat_template": [1, 2]}))
    tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


@case("tokenizer_config: chat_template a number", TokenizerError, r"chat_template")
def _(ctx):
    tok = load_tok(tok_folder(ctx, tokenizer_config__json={"chat_template": 42}))
    tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)


# ---- chat templates ------------------------------------------------------------------------------------

def render(template, seconds: float | None = None):
    from llamacpu.tokenizer import chat

    old = chat.RENDER_TIME_LIMIT
    chat.RENDER_TIME_LIMIT = seconds or old
    try:
        return chat.render_chat(template, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    finally:
        chat.RENDER_TIME_LIMIT = old


LIMIT = r"chat template: .*(exceeds the limit|longer than)"


@case("template: loop of 10**10 steps", TokenizerError, r"longer than 5 s", budget_s=7)
def _(ctx):
    render("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}")


@case("template: recursion through a macro", TokenizerError, r"recursion too deep")
def _(ctx):
    render("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")


@case("template: 'x' * 10**10", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ 'x' * 10000000000 }}")


@case("template: list * 10**9", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ ([1, 2] * 1000000000)|length }}")


@case("template: join of 10**10 characters", TokenizerError, LIMIT, budget_s=2)
def _(ctx):
    render("{{ range(99999)|join('x' * 99999) }}")


@case("template: string doubled 60 times with ~", TokenizerError, LIMIT, budget_s=2)
def _(ctx):
    render("{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
           "{{ ns.s|length }}")


@case("template: string doubled 60 times with +", TokenizerError, LIMIT, budget_s=2)
def _(ctx):
    render("{% set ns = namespace(s='xx') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}{% endfor %}")


@case("template: 7 ** 10**9", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ 7 ** 1000000000 }}")


@case("template: '%0999999999d' % 1", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ '%0999999999d' % 1 }}")


@case("template: format filter width", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ '%*d'|format(999999999, 1) }}")


@case("template: 'x'.ljust(10**10)", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ 'x'.ljust(10000000000) }}")


@case("template: center filter 10**10", TokenizerError, LIMIT, budget_s=3)
def _(ctx):
    render("{{ 'x'|center(10000000000) }}")


@case("template: s.replace('', s)", TokenizerError, LIMIT, budget_s=2)
def _(ctx):
    render("{% set s = 'x' * 5000000 %}{{ s.replace('', s) }}")


@case("template: 2.4G characters of output", TokenizerError, LIMIT, budget_s=7)
def _(ctx):
    render("{% for i in range(100000) %}{% for j in range(1000) %}xxxxxxxxxxxxxxxxxxxxxxxx{% endfor %}{% endfor %}")


@case("template: tojson indent 10**9", TokenizerError, r"tojson indent", budget_s=3)
def _(ctx):
    render("{{ messages|tojson(indent=1000000000) }}")


@case("template: 1/0", TokenizerError, r"ZeroDivisionError")
def _(ctx):
    render("{{ 1 / 0 }}")


@case("template: tojson of an object", TokenizerError, r"tojson cannot serialize")
def _(ctx):
    render("{{ raise_exception|tojson }}")


@case("template: raise_exception", TokenizerError, r"chat template: roles must alternate")
def _(ctx):
    render("{{ raise_exception('roles must alternate') }}")


@case("template: raise_exception with a number", TokenizerError, r"chat template: 42")
def _(ctx):
    render("{{ raise_exception(42) }}")


@case("template: calling an undefined", TokenizerError, r"chat template failed.*undefined")
def _(ctx):
    render("{{ nothing.here() }}")


@case("template: syntax error", TokenizerError, r"does not compile")
def _(ctx):
    render("{% for %}")


@case("template: sandbox escape via __class__", TokenizerError, r"chat template failed")
def _(ctx):
    render("{{ ''.__class__.__mro__[1].__subclasses__() }}")


@case("template: sandbox escape via format", TokenizerError, r"chat template failed")
def _(ctx):
    render("{{ '{0.__class__.__init__.__globals__}'.format(cycler) }}")


@case("template: 1 + 'a'", TokenizerError, r"TypeError")
def _(ctx):
    render("{{ 1 + 'a' }}")


@case("template: strftime_now(5)", TokenizerError, r"chat template failed")
def _(ctx):
    render("{{ strftime_now(5) }}")


@case("template: 2000-deep nesting in the source", TokenizerError, r"chat template")
def _(ctx):
    render("{{ " + "(" * 2000 + "1" + ")" * 2000 + " }}")


@case("template: messages not a list", InputError, r"messages")
def _(ctx):
    ctx.tok.apply_chat_template("hello", tokenize=False)


# ---- paths and writes -------------------------------------------------------------------------------

@case("hub: repo id with ..", CheckpointError, r"not a Hugging Face repo id")
def _(ctx):
    from llamacpu.hub import resolve_model

    os.chdir(ctx.tmp)
    resolve_model("org/..")


@case("hub: repo id with --", CheckpointError, r"not a Hugging Face repo id")
def _(ctx):
    from llamacpu.hub import resolve_model

    os.chdir(ctx.tmp)
    resolve_model("org/a--b")


@case("hub: repo id with a leading dot", CheckpointError, r"not a Hugging Face repo id")
def _(ctx):
    from llamacpu.hub import resolve_model

    os.chdir(ctx.tmp)
    resolve_model(".org/name")


def quantize(src, dst):
    from llamacpu.checkpoint.quantized import quantize_checkpoint

    return quantize_checkpoint(src, dst, "q8_0")


@case("quantize: DST an existing file", InputError, r"dst.*not a folder")
def _(ctx):
    src = ctx.copy_checkpoint()
    before = digest(src)
    (ctx.tmp / "dst").write_text("mine")
    try:
        quantize(src, ctx.tmp / "dst")
    finally:
        assert digest(src) == before and (ctx.tmp / "dst").read_text() == "mine"


@case("quantize: DST a non-empty folder", InputError, r"not empty")
def _(ctx):
    src = ctx.copy_checkpoint()
    (ctx.tmp / "dst").mkdir()
    (ctx.tmp / "dst" / "keep").write_text("mine")
    quantize(src, ctx.tmp / "dst")


@case("quantize: DST the source", InputError, r"not empty|the source")
def _(ctx):
    src = ctx.copy_checkpoint()
    quantize(src, src)


def no_partial(ctx):
    left = [p.name for p in ctx.tmp.iterdir() if p.name not in ("ck",)]
    assert not left, f"left behind: {left}"


@case("quantize: file size limit hit midway", CheckpointError, r"dst.*File too large", budget_s=5)
def _(ctx):
    src = ctx.copy_checkpoint()
    before = digest(src)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death, as a full disk
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, old[1]))
    try:
        quantize(src, ctx.tmp / "dst")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)
        assert digest(src) == before
        no_partial(ctx)


@case("quantize: Ctrl-C while writing", KeyboardInterrupt, r"", budget_s=5)
def _(ctx):
    from llamacpu.checkpoint import writer

    src = ctx.copy_checkpoint()
    before = digest(src)

    class Interrupted:  # a file whose third write "receives" Ctrl-C
        def __init__(self, *a):
            self.f, self.n = open(*a), 0

        def write(self, b):
            self.n += 1
            if self.n == 3:
                raise KeyboardInterrupt
            return self.f.write(b)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    writer.open = Interrupted
    try:
        quantize(src, ctx.tmp / "dst")
    finally:
        del writer.open
        assert digest(src) == before
        no_partial(ctx)


@case("quantize: DST inside a file", CheckpointError, r"cannot create the destination folder")
def _(ctx):
    src = ctx.copy_checkpoint()
    (ctx.tmp / "file").write_text("x")
    quantize(src, ctx.tmp / "file" / "dst")


# ---- faults while running ------------------------------------------------------------------------------

def greedy(model, ids=(1, 5, 9), n=8):
    return model.generate(np.array([list(ids)]), max_new_tokens=n).tolist()


def background_generation(model, stop: threading.Event, errors: list, outputs: list):
    def work():
        try:
            while not stop.is_set():
                outputs.append(greedy(model, n=4))
        except BaseException as e:  # reported by the case
            errors.append(e)

    t = threading.Thread(target=work, daemon=True)
    t.start()
    return t


@case("faults: load a model while another thread generates", budget_s=20)
def _(ctx):
    model = ctx.model
    want = greedy(model, n=4)
    stop, errors, outputs = threading.Event(), [], []
    t = background_generation(model, stop, errors, outputs)
    try:
        for _ in range(3):
            other = load(ctx.checkpoint)  # check_finite runs kernels at load
            assert greedy(other, n=4) == want
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert outputs and all(o == want for o in outputs)


@case("faults: fork while another thread generates", budget_s=20)
def _(ctx):
    model = ctx.model
    want = greedy(model)
    stop, errors, outputs = threading.Event(), [], []
    t = background_generation(model, stop, errors, outputs)
    try:
        for _ in range(3):
            time.sleep(0.05)
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    os.write(write_end, json.dumps(greedy(model)).encode())
                finally:
                    os._exit(0)
            os.close(write_end)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                time.sleep(0.02)
            else:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the forked child hung")
            got = os.read(read_end, 1 << 16)
            os.close(read_end)
            assert os.WIFEXITED(status) and json.loads(got) == want
    finally:
        stop.set()
        t.join()
    assert not errors, errors


def chat_turns(ctx, interrupt_at: int | None):
    """Two chat turns; the first is interrupted (KeyboardInterrupt) at its interrupt_at-th line of
    llamacpu code. The second turn must then give what a fresh session with the same history gives."""
    from llamacpu.generation.chat import ChatSession

    session = ChatSession(ctx.model, ctx.tok, max_new_tokens=6)
    count = [0]

    def tracer(frame, event, arg):
        if "llamacpu" not in frame.f_code.co_filename:
            return None

        def local(frame, event, arg):
            if event == "line":
                count[0] += 1
                if count[0] == interrupt_at:
                    raise KeyboardInterrupt
            return local

        return local

    sys.settrace(tracer)
    try:
        "".join(session.send("hello world"))
    except KeyboardInterrupt:
        pass
    finally:
        sys.settrace(None)
    history = [dict(m) for m in session.messages]
    assert [m["role"] for m in history] in ([], ["user", "assistant"]), history
    second = "".join(session.send("the cat"))
    fresh = ChatSession(ctx.model, ctx.tok, max_new_tokens=6)
    fresh.messages = history
    assert second == "".join(fresh.send("the cat"))
    assert [m["role"] for m in session.messages] == ["user", "assistant"] * (len(history) // 2 + 1)
    return count[0]


# a turn runs ~15k lines of llamacpu code: rendering, prefill, each decode step, the history update
for _point in sorted({int(1.8 ** k) for k in range(16)} | {5000, 8000, 11000, 14000}):
    case(f"faults: chat interrupted at line {_point} of a turn", budget_s=20)(
        lambda ctx, p=_point: chat_turns(ctx, p))


@case("faults: generation interrupted at each step", budget_s=20)
def _(ctx):
    model = ctx.model
    want = greedy(model, n=10)
    for step in range(1, 11):
        class Interrupt:
            count = 0

            def put(self, value):
                self.count += 1
                if self.count == step:
                    raise KeyboardInterrupt

            def end(self):
                pass

        try:
            model.generate(np.array([[1, 5, 9]]), max_new_tokens=10, streamer=Interrupt())
        except KeyboardInterrupt:
            pass
        assert greedy(model, n=10) == want, step


# ---- arguments ---------------------------------------------------------------------------------------

def gen(ctx, ids, **kw):
    return ctx.model.generate(ids, max_new_tokens=kw.pop("max_new_tokens", 2), **kw)


ARGUMENT_CASES = {
    "generate: ragged input_ids": (lambda c: gen(c, [[1, 2], [3]]), r"input_ids: rows have different lengths"),
    "generate: object array": (lambda c: gen(c, np.array([1, "a"], dtype=object)), r"input_ids.*dtype object"),
    "generate: float ids": (lambda c: gen(c, [[1.5, 2.0]]), r"input_ids.*1.5"),
    "generate: bool ids": (lambda c: gen(c, [True, False]), r"input_ids"),
    "generate: string ids": (lambda c: gen(c, "hello"), r"input_ids.*str"),
    "generate: id 2**70": (lambda c: gen(c, [[2**70]]), r"input_ids.*int64"),
    "generate: 3-D input_ids": (lambda c: gen(c, np.ones((1, 1, 2), np.int64)), r"input_ids.*dimensions"),
    "generate: id outside the vocabulary": (lambda c: gen(c, [[10**6]]), r"input_ids: token id 1000000 is out of range"),
    "generate: empty input_ids": (lambda c: gen(c, []), r"input_ids"),
    "generate: None in input_ids": (lambda c: gen(c, [[1, None]]), r"input_ids\[0\].*None"),
    "generate: dict as input_ids": (lambda c: gen(c, {"input_ids": [1]}), r"input_ids.*dict"),
    "generate: eos_token_id 2**70": (lambda c: gen(c, [[1]], eos_token_id=2**70), r"eos_token_id"),
    "generate: pad_token_id 2**70": (lambda c: gen(c, [[1]], pad_token_id=2**70), r"pad_token_id"),
    "generate: pad_token_id outside the vocabulary": (lambda c: gen(c, [[1]], pad_token_id=10**6), r"pad_token_id"),
    "generate: max_new_tokens 10**30": (lambda c: gen(c, [[1]], max_new_tokens=10**30), r"exceeds the context"),
    "generate: max_new_tokens 2.5": (lambda c: gen(c, [[1]], max_new_tokens=2.5), r"max_new_tokens"),
    "generate: temperature NaN": (lambda c: gen(c, [[1]], do_sample=True, temperature=float("nan")), r"temperature"),
    "generate: attention_mask of 2s": (lambda c: gen(c, [[1, 2]], attention_mask=[[2, 2]]), r"attention_mask"),
    "generate: ragged attention_mask": (lambda c: gen(c, [[1, 2]], attention_mask=[[1], [1, 1]]), r"attention_mask"),
    "generate: unknown argument": (lambda c: gen(c, [[1]], beams=3), r"unknown arguments"),
    "decode: [1.5] (sentencepiece)": (lambda c: c.tok.decode([1.5]), r"token_ids.*1.5"),
    "decode: [1.5] (fast)": (lambda c: c.fast_tok.decode([1.5]), r"token_ids.*1.5"),
    "decode: [-1]": (lambda c: c.tok.decode([-1]), r"token id -1"),
    "decode: [2**70]": (lambda c: c.tok.decode([2**70]), r"token_ids.*int64"),
    "decode: [[1, 2]] nested (fast)": (lambda c: c.fast_tok.decode([[1, 2]]), r"token_ids"),
    "decode: [True]": (lambda c: c.tok.decode([True]), r"token_ids"),
    "model: labels of floats": (lambda c: c.model(np.array([[1, 2]]), labels=[[0.5, 1.5]]), r"labels"),
    "model: labels of the wrong shape": (lambda c: c.model(np.array([[1, 2]]), labels=[[1, 2, 3]]), r"labels"),
    "model: labels outside the vocabulary": (lambda c: c.model(np.array([[1, 2]]), labels=[[1, 10**6]]), r"labels"),
    "model: logits_to_keep 1.5": (lambda c: c.model(np.array([[1, 2]]), logits_to_keep=1.5), r"logits_to_keep"),
    "model: logits_to_keep -1": (lambda c: c.model(np.array([[1, 2]]), logits_to_keep=-1), r"logits_to_keep"),
    "model: past_key_values 'junk'": (lambda c: c.model(np.array([[1, 2]]), past_key_values="junk"), r"past_key_values"),
    "model: past_key_values of another batch": (
        lambda c: c.model(np.array([[1, 2]]), past_key_values=c.model.new_cache(2)), r"past_key_values"),
    "model: new_cache(-1)": (lambda c: c.model.new_cache(-1), r"new_cache: batch"),
    "model: new_cache(1.5)": (lambda c: c.model.new_cache(1.5), r"new_cache: batch"),
    "model: new_cache(1, max_len=-5)": (lambda c: c.model.new_cache(1, -5), r"new_cache: max_len"),
    "model: new_cache(2**40) rows": (lambda c: c.model.new_cache(2**40), r"new_cache: batch"),
    "model: resize_token_embeddings(-1)": (lambda c: c.model.resize_token_embeddings(-1), r"new_num_tokens"),
    "from_pretrained: max_context 2**40": (lambda c: load(c.checkpoint, max_context=2**40)(np.array([[1]])),
                                           r"max_context"),
    "from_pretrained: unknown argument": (lambda c: load(c.checkpoint, colour="red"), r"unknown arguments"),
    "from_pretrained: dtype 'float8'": (lambda c: load(c.checkpoint, dtype="float8"), r"dtype"),
    "from_pretrained: num_threads 0": (lambda c: load(c.checkpoint, num_threads=0), r"num_threads"),
    "from_pretrained: path that does not exist": (lambda c: load(c.tmp / "nothing"), r"nothing"),
}
for _kind, (_fn, _match) in ARGUMENT_CASES.items():
    case(_kind, (InputError if not _kind.startswith("from_pretrained: path") else CheckpointError), _match)(_fn)


@case("from_pretrained: dtype conversion beyond RLIMIT_AS", CheckpointError, r"converting the weights to float32.*dtype='auto'",
      budget_s=5)
def _(ctx):
    # one layer of 4096 x 8192 BF16 matrices: 330 MB as stored (a sparse file), 660 MB as float32, with
    # RLIMIT_AS leaving 512 MB
    shape = dict(vocab_size=256, hidden_size=4096, intermediate_size=8192, num_hidden_layers=1,
                 num_attention_heads=32, num_key_value_heads=32)
    folder = ctx.tmp / "big"
    folder.mkdir()
    cfg = dict(shape, architectures=["LlamaForCausalLM"], model_type="llama", torch_dtype="bfloat16")
    (folder / "config.json").write_text(json.dumps(cfg))
    from llamacpu.checkpoint.hf import expected_tensors, required_names
    from llamacpu.config import LlamaConfig

    config = LlamaConfig.from_dict(cfg)
    names = required_names(config)
    header = {}
    offset = 0
    for name, (_, shp) in expected_tensors(config).items():
        if name in names:
            n = int(np.prod(shp)) * 2
            header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [offset, offset + n]}
            offset += n
    raw = json.dumps(header).encode()
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)  # sparse: zeros
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    old = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (512 << 20), old[1]))
    try:
        load(folder, dtype="float32", check_finite=False)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)


@case("generate: an array-like input_ids (a tensor of another library)")
def _(ctx):
    class ArrayLike:
        def __array__(self, dtype=None, copy=None):
            return np.array([[1, 5, 9]])

    assert ctx.model.generate(ArrayLike(), max_new_tokens=4).tolist() == greedy(ctx.model, n=4)


@case("chat: load a saved conversation that is a FIFO", InputError, r"conv.json.*FIFO", budget_s=2)
def _(ctx):
    from llamacpu.generation.chat import ChatSession

    ChatSession(ctx.model, ctx.tok).load(fifo(ctx.tmp / "conv.json"))


@case("chat: load a saved conversation nested 100000 deep", InputError, r"conv.json.*nested deeper")
def _(ctx):
    from llamacpu.generation.chat import ChatSession

    (ctx.tmp / "conv.json").write_text(nested(100_000))
    ChatSession(ctx.model, ctx.tok).load(ctx.tmp / "conv.json")


@case("chat: a message that is not a string", InputError, r"chat message")
def _(ctx):
    from llamacpu.generation.chat import ChatSession

    "".join(ChatSession(ctx.model, ctx.tok).send(["hi"]))


@case("generation_config.json: nested 100000 deep", ConfigError, r"generation_config.json.*nested deeper")
def _(ctx):
    from llamacpu.generation.sampling import GenerationConfig

    (ctx.tmp / "generation_config.json").write_text(nested(100_000))
    GenerationConfig.from_pretrained(ctx.tmp)


@case("generation_config.json: a FIFO", ConfigError, r"generation_config.json.*FIFO", budget_s=2)
def _(ctx):
    from llamacpu.generation.sampling import GenerationConfig

    fifo(ctx.tmp / "generation_config.json")
    GenerationConfig.from_pretrained(ctx.tmp)
