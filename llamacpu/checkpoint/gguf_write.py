"""Write a Llama GGUF file that llama.cpp loads, in llama.cpp's quantization mixes (`llamacpu quantize
SRC DST.gguf --type Q4_K_M`).

Through the `gguf` package's GGUFWriter (the writer llama.cpp's own converter uses): llama.*
hyperparameters, tokenizer.ggml.* and the chat template, tensors under GGUF names with the Q/K rows in
llama.cpp's order (`permute_qk`). Tensors are quantized and written one at a time (header and tensor
infos first, then the data), so the peak memory is one float32 tensor, not the model.

Per-tensor types: `tensor_type` is llama.cpp's choice (src/llama-quant.cpp, llama_tensor_get_type for
the llama architecture without an importance matrix): the mix's base type, the output (and a tied
embedding) in Q6_K, attn_v / ffn_down / attn_output raised in some layers per mix, and llama.cpp's
fallback when a row is not a whole number of 256-weight blocks (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0,
Q2_K / Q3_K -> Q4_0, IQ4_XS -> IQ4_NL, then F16), each fallback reported.

The file is written under a temporary name beside DST and renamed when complete: an interrupted run
leaves no file that loads (its `.partial` name is not a .gguf).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter, LlamaFileType

from ..config import LlamaConfig
from ..errors import InputError
from .gguf import GGUF_TO_HF, permute_qk

# mix name -> (base type, llama.cpp's file type)
MIXES: dict[str, tuple[QT, LlamaFileType]] = {
    "F32": (QT.F32, LlamaFileType.ALL_F32), "F16": (QT.F16, LlamaFileType.MOSTLY_F16),
    "Q8_0": (QT.Q8_0, LlamaFileType.MOSTLY_Q8_0), "Q6_K": (QT.Q6_K, LlamaFileType.MOSTLY_Q6_K),
    "Q5_K_M": (QT.Q5_K, LlamaFileType.MOSTLY_Q5_K_M), "Q5_K_S": (QT.Q5_K, LlamaFileType.MOSTLY_Q5_K_S),
    "Q4_K_M": (QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_M), "Q4_K_S": (QT.Q4_K, LlamaFileType.MOSTLY_Q4_K_S),
    "Q3_K_L": (QT.Q3_K, LlamaFileType.MOSTLY_Q3_K_L), "Q3_K_M": (QT.Q3_K, LlamaFileType.MOSTLY_Q3_K_M),
    "Q3_K_S": (QT.Q3_K, LlamaFileType.MOSTLY_Q3_K_S), "Q2_K": (QT.Q2_K, LlamaFileType.MOSTLY_Q2_K),
    "Q5_1": (QT.Q5_1, LlamaFileType.MOSTLY_Q5_1), "Q5_0": (QT.Q5_0, LlamaFileType.MOSTLY_Q5_0),
    "Q4_1": (QT.Q4_1, LlamaFileType.MOSTLY_Q4_1), "Q4_0": (QT.Q4_0, LlamaFileType.MOSTLY_Q4_0),
    "IQ4_XS": (QT.IQ4_XS, LlamaFileType.MOSTLY_IQ4_XS), "IQ4_NL": (QT.IQ4_NL, LlamaFileType.MOSTLY_IQ4_NL),
}
FALLBACK = {QT.IQ4_XS: QT.IQ4_NL, QT.Q2_K: QT.Q4_0, QT.Q3_K: QT.Q4_0, QT.Q4_K: QT.Q5_0, QT.Q5_K: QT.Q5_1,
            QT.Q6_K: QT.Q8_0}
HF_TO_GGUF = {hf: g for g, hf in GGUF_TO_HF.items()}


def mix_names() -> tuple[str, ...]:
    return tuple(MIXES)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_type(mix: str, gguf_name: str, layer: int | None, n_layer: int, n_gqa: int, tied: bool) -> QT:
    """llama.cpp's type for one 2-D tensor of a llama model in `mix` (before the shape fallback)."""
    base, _ = MIXES[mix]
    if base in (QT.F32, QT.F16):
        return base
    kind = gguf_name.split(".")[-2]  # attn_v, ffn_down, output, token_embd, ...
    ft = mix
    if kind == "output" or (tied and kind == "token_embd"):
        return base if base == QT.Q8_0 else QT.Q6_K
    if kind == "token_embd":
        return base
    t = base
    if kind == "attn_v":
        if ft == "Q2_K":
            t = QT.Q4_K if n_gqa >= 4 else QT.Q3_K
        elif ft == "Q3_K_M":
            t = QT.Q5_K if layer < 2 else QT.Q4_K
        elif ft == "Q3_K_L":
            t = QT.Q5_K
        elif ft in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            t = QT.Q5_K
        elif ft in ("Q4_K_M", "Q5_K_M") and _use_more_bits(layer, n_layer):
            t = QT.Q6_K
        elif ft == "Q4_K_S" and layer < 4:
            t = QT.Q5_K
    elif kind == "ffn_down":
        if ft == "Q2_K":
            t = QT.Q3_K
        elif ft == "Q3_K_M":
            t = QT.Q5_K if layer < n_layer // 16 else QT.Q4_K
        elif ft == "Q3_K_L":
            t = QT.Q5_K
        elif ft == "Q4_K_M":
            if _use_more_bits(layer, n_layer):
                t = QT.Q6_K
        elif layer < n_layer // 8 and ft in ("IQ4_NL", "IQ4_XS"):
            t = QT.Q5_K
        elif ft == "Q5_K_M" and _use_more_bits(layer, n_layer):
            t = QT.Q6_K
        elif ft == "Q4_K_S" and layer < n_layer // 8:
            t = QT.Q5_K
    elif kind == "attn_output":
        t = {"Q2_K": QT.Q3_K, "Q3_K_M": QT.Q4_K, "Q3_K_L": QT.Q5_K}.get(ft, base)
    return t


def with_fallback(t: QT, cols: int) -> QT:
    """llama.cpp's tensor_type_fallback: a type whose blocks fit a row of `cols` weights."""
    from gguf import GGML_QUANT_SIZES

    if t in (QT.F32, QT.F16) or cols % GGML_QUANT_SIZES[t][0] == 0:
        return t
    t = FALLBACK.get(t, QT.F16)
    return t if cols % GGML_QUANT_SIZES[t][0] == 0 else QT.F16


def gguf_tensor_name(hf: str) -> tuple[str, int | None]:
    if hf in HF_TO_GGUF:
        return HF_TO_GGUF[hf], None
    if hf.startswith("model.layers."):
        i, rest = hf[len("model.layers."):].split(".", 1)
        g = HF_TO_GGUF.get("model.layers.{i}." + rest)
        if g is not None:
            return g.format(i=i), int(i)
    if hf == "rope_freqs.weight":
        return hf, None
    raise InputError(f"no GGUF name for tensor {hf!r}")


def encode(t: QT, w: np.ndarray) -> np.ndarray:
    """float32 [rows, cols] (or [n]) -> what the file holds: float arrays, or uint8 blocks."""
    if t == QT.F32:
        return np.ascontiguousarray(w, np.float32)
    if t == QT.F16:
        return np.ascontiguousarray(w, np.float16)
    from ..quant import get_format

    return get_format(int(t)).quantize(w)


def plan(mix: str, config: LlamaConfig, shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, QT], list[str]]:
    """The type of every tensor (HF name -> ggml type) and the fallbacks as printable lines."""
    if mix.upper() not in MIXES:
        raise InputError(f"unknown GGUF quantization mix {mix!r}; known: {', '.join(MIXES)}")
    mix = mix.upper()
    n_gqa = config.num_attention_heads // config.num_key_value_heads
    tied = "lm_head.weight" not in shapes
    types, notes = {}, []
    for hf, shape in shapes.items():
        name, layer = gguf_tensor_name(hf)
        if len(shape) < 2 or hf == "rope_freqs.weight":
            types[hf] = QT.F32  # norms (llama.cpp never quantizes 1-D tensors)
            continue
        want = tensor_type(mix, name, layer, config.num_hidden_layers, n_gqa, tied)
        got = with_fallback(want, shape[1])
        if got != want:
            notes.append(f"{name}: {shape[1]} columns are not whole {want.name} blocks: {got.name} instead")
        types[hf] = got
    return types, notes


def write_gguf(dst, config: LlamaConfig, shapes: dict[str, tuple[int, ...]],
               tensor: Callable[[str], np.ndarray], tokenizer_meta: dict, mix: str, name: str | None = None,
               progress: bool = False) -> Path:
    """Write DST: `shapes` are the HF names and PyTorch shapes to write, `tensor(hf_name)` gives each as
    float32, `tokenizer_meta` is GGUFCheckpoint.tokenizer_metadata's layout. Returns DST."""
    from tqdm.auto import tqdm

    from ..tokenizer.gguf_vocab import add_tokenizer_metadata

    dst = Path(dst)
    types, notes = plan(mix, config, shapes)
    for line in notes:
        print(f"llamacpu quantize: fallback: {line}", file=sys.stderr)
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    w = GGUFWriter(str(tmp), "llama")
    try:
        w.add_name(name or dst.stem)
        w.add_file_type(MIXES[mix.upper()][1])
        w.add_quantization_version(2)
        w.add_block_count(config.num_hidden_layers)
        w.add_context_length(config.max_position_embeddings)
        w.add_embedding_length(config.hidden_size)
        w.add_feed_forward_length(config.intermediate_size)
        w.add_head_count(config.num_attention_heads)
        w.add_head_count_kv(config.num_key_value_heads)
        w.add_key_length(config.head_dim)
        w.add_value_length(config.head_dim)
        w.add_rope_dimension_count(config.head_dim)
        w.add_layer_norm_rms_eps(config.rms_norm_eps)
        w.add_rope_freq_base(config.rope_theta)
        w.add_vocab_size(config.vocab_size)
        rs = config.rope_scaling or {}
        if config.rope_type in ("linear", "yarn") and rs.get("factor"):
            w.add_rope_scaling_type(config.rope_type)
            w.add_rope_scaling_factor(float(rs["factor"]))
        add_tokenizer_metadata(w, tokenizer_meta)

        order = list(shapes)
        for hf in order:
            t = types[hf]
            shape = shapes[hf]
            cols = shape[-1]
            rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
            from gguf import GGML_QUANT_SIZES

            block, size = GGML_QUANT_SIZES[t]
            nbytes = rows * cols // block * size
            gname = gguf_tensor_name(hf)[0]
            if t in (QT.F32, QT.F16):
                w.add_tensor_info(gname, shape, np.dtype(np.float32 if t == QT.F32 else np.float16), nbytes)
            else:
                w.add_tensor_info(gname, (rows, cols // block * size), np.dtype(np.uint8), nbytes, raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for hf in tqdm(order, desc="quantizing", unit="tensor", disable=not progress, leave=False):
            arr = encode(types[hf], np.asarray(tensor(hf), np.float32))
            if hf.endswith("self_attn.q_proj.weight"):
                arr = permute_qk(arr, config.num_attention_heads)
            elif hf.endswith("self_attn.k_proj.weight"):
                arr = permute_qk(arr, config.num_key_value_heads)
            w.write_tensor_data(arr)
        w.close()
        os.replace(tmp, dst)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return dst


# ---------------------------------------------------------------------------------------------------
# From a checkpoint on disk (Hugging Face folder, llamacpu quantized checkpoint, or GGUF)

def quantize_to_gguf(src, dst, mix: str, progress: bool = False) -> Path:
    """Read SRC with llamacpu's loader and write DST in `mix`. A quantized source is dequantized and
    requantized (with a warning: the errors of both quantizations add up)."""
    from ..model.names import LAYER
    from ..model.weights import DenseWeight
    from .load import load

    src, dst = Path(src), Path(dst)
    if mix.upper() not in MIXES:
        raise InputError(f"unknown GGUF quantization mix {mix!r}; known: {', '.join(MIXES)}")
    config, weights, source = load(src, check_finite=False)
    tensors: dict[str, object] = {"model.embed_tokens.weight": weights.embed}
    for i, layer in enumerate(weights.layers):
        for t in LAYER:
            v = getattr(layer, t.field)
            if v is not None:
                if t.gguf is None:
                    raise InputError(f"{src}: {t.hf.format(i=i)} has no place in a llama GGUF (llama.cpp has no "
                                     "such tensor)")
                tensors[t.hf.format(i=i)] = v
    tensors["model.norm.weight"] = weights.norm
    if weights.lm_head is not None and weights.lm_head is not weights.embed:
        tensors["lm_head.weight"] = weights.lm_head
    factors = getattr(config, "rope_freq_factors", None)
    if factors is None and config.rope_type == "llama3":
        # as llama.cpp's converter: the llama3 scaling becomes per-frequency divisors (rope_freqs.weight)
        from ..model.rope_scaling import default_inv_freq, inv_freq

        factors = (default_inv_freq(config.rope_theta, config.head_dim) / inv_freq(config)).astype(np.float32)
    if factors is not None:
        tensors["rope_freqs.weight"] = factors
    stored = {type(t).__name__ for t in tensors.values() if not isinstance(t, (np.ndarray, DenseWeight))}
    if stored:
        print(f"llamacpu quantize: warning: {src} is already quantized; dequantizing and requantizing to {mix} "
              "adds the errors of both", file=sys.stderr)

    def shape(t):
        return tuple(t.shape)

    def tensor(hf):
        t = tensors[hf]
        return t if isinstance(t, np.ndarray) else t.dequantize()

    meta = tokenizer_metadata(src, source)
    return write_gguf(dst, config, {k: shape(v) for k, v in tensors.items()}, tensor, meta, mix,
                      name=getattr(source, "name", None) or src.stem, progress=progress)


def tokenizer_metadata(src: Path, source) -> dict:
    """tokenizer.ggml.* of the source: a GGUF's as stored; a folder's tokenizer.model (SentencePiece)
    or tokenizer.json (byte-level BPE), with the chat template of tokenizer_config.json."""
    import json

    from ..errors import CheckpointError
    from ..limits import is_present, read_json, read_text
    from ..tokenizer.gguf_vocab import gguf_metadata_from_sentencepiece

    if hasattr(source, "tokenizer_metadata"):
        return dict(source.tokenizer_metadata)
    cfg = {}
    if is_present(src / "tokenizer_config.json", CheckpointError, "tokenizer_config.json"):
        cfg = read_json(src / "tokenizer_config.json", CheckpointError, "tokenizer_config.json")
    if (src / "tokenizer.model").is_file():
        meta = gguf_metadata_from_sentencepiece(src / "tokenizer.model")
    elif (src / "tokenizer.json").is_file():
        meta = _bpe_metadata(read_json(src / "tokenizer.json", CheckpointError, "tokenizer.json"), cfg)
    else:
        raise CheckpointError(f"{src}: no tokenizer.model or tokenizer.json to write into the GGUF")
    template = cfg.get("chat_template")
    if template is None and is_present(src / "chat_template.jinja", CheckpointError, "chat template"):
        template = read_text(src / "chat_template.jinja", CheckpointError, "chat template")
    if isinstance(template, str):
        meta["chat_template"] = template
    return meta


def _bpe_metadata(tj: dict, cfg: dict) -> dict:
    """A byte-level BPE tokenizer.json as tokenizer.ggml.* (model "gpt2"), as convert_hf_to_gguf.py writes
    it: tokens by id, merges as "a b", added special tokens CONTROL (3), others NORMAL (1)."""
    from ..errors import UnsupportedError

    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedError(f"tokenizer.json model {model.get('type')!r}: only byte-level BPE can be written to GGUF")
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in tj.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [5] * n  # UNUSED until named
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = 3 if tok in added and added[tok].get("special") else (4 if tok in added else 1)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    pre = "llama-bpe" if "<|begin_of_text|>" in vocab else ("smollm" if "<|im_start|>" in vocab else "default")
    meta = {"model": "gpt2", "pre": pre, "tokens": tokens, "token_type": types, "merges": merges}
    for key, field in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"), ("pad_token", "padding_token_id"),
                       ("unk_token", "unknown_token_id")):
        tok = cfg.get(key)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if isinstance(tok, str) and tok in vocab:
            meta[field] = vocab[tok]
    if "add_bos_token" in cfg:
        meta["add_bos_token"] = bool(cfg["add_bos_token"])
    return meta
