"""The benchmark's model files: random weights in real shapes, written once into the work folder and
reused by later runs. Every engine reads the SAME weights:

    WORKDIR/<shape>/f16/                 config.json + model.safetensors (F16), Llama 2 tokenizer.model
    WORKDIR/<shape>/<fmt>/               llamacpu quantized checkpoint (q8_0, q4_0, q4_k, int4_g128),
                                         made from f16/ by `quantize_checkpoint` (or, for shapes too big
                                         for RAM, written streaming, see `write_quantized_streaming`)
    WORKDIR/<shape>/gguf/<fmt>.gguf      the same tensors for llama.cpp: F16 from f16/, and Q8_0, Q4_0,
                                         Q4_K from the llamacpu checkpoint's blocks, byte for byte

Quantized files follow llamacpu's policy (llamacpu/checkpoint/quantized.py): the seven projections
of every layer in the format, token embedding and LM head in Q8_0, norms as stored. The GGUF files copy
those blocks as they are, so llama.cpp's "Q4_K" file here is Q4_K everywhere except token_embd/output
in Q8_0 (llama.cpp's own Q4_K_M puts Q6_K in output and in half of attn_v/ffn_down: slightly more
bytes; ours is the like-for-like comparison). llamacpu's int4_g128 has no ggml type: no GGUF.

GGUF layout (what llama.cpp's convert_hf_to_gguf.py writes for a Llama): arch "llama", llama.*
hyperparameters, the Llama 2 SentencePiece vocabulary (32000 pieces: both shapes here have vocab
32000), tensors under GGUF names with the Q/K rows permuted to llama.cpp's RoPE layout (`permute_qk`).
Files are written streaming: tensor infos first, then one tensor at a time.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT.parent / "shared" / "models" / "llama2-tokenizer" / "tokenizer.model"
GGUF_FORMATS = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_k": "Q4_K"}  # ours -> ggml type
DONE = ".complete"  # a folder/file is reused only when this marker (or the final name) exists


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def _done(folder: Path) -> bool:
    return (folder / DONE).is_file()


def _finish(tmp: Path, final: Path) -> Path:
    (tmp / DONE).write_text(time.strftime("%Y-%m-%d %H:%M:%S"))
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def _fresh_tmp(final: Path) -> Path:
    tmp = final.with_name(final.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def _copy_tokenizer(folder: Path, vocab_size: int) -> None:
    if vocab_size == 32000 and TOKENIZER.is_file():
        shutil.copy(TOKENIZER, folder / "tokenizer.model")


# ---- llamacpu checkpoints ----------------------------------------------------------------------------

def f16_checkpoint(workdir: Path, shape: str, shape_cfg: dict | None = None) -> Path:
    """WORKDIR/<shape>/f16: write_synthetic(..., dtype="F16") plus the Llama 2 tokenizer."""
    from llamacpu.checkpoint.synthetic import SHAPES, write_synthetic

    final = workdir / shape / "f16"
    if _done(final):
        return final
    cfg = shape_cfg or SHAPES[shape]
    log(f"writing {final} (random F16 weights)")
    t = time.time()
    tmp = _fresh_tmp(final)
    write_synthetic(tmp, cfg, dtype="F16")
    _copy_tokenizer(tmp, cfg["vocab_size"])
    log(f"  {time.time() - t:.0f} s")
    return _finish(tmp, final)


def quantized_checkpoint(workdir: Path, shape: str, fmt: str, streaming: bool = False,
                         shape_cfg: dict | None = None) -> Path:
    """WORKDIR/<shape>/<fmt>: llamacpu's quantized checkpoint of the same weights as f16/.
    streaming=True generates each tensor, quantizes it and writes it (no F16 file, one tensor in RAM)."""
    from llamacpu.checkpoint.quantized import quantize_checkpoint

    final = workdir / shape / fmt
    if _done(final):
        return final
    t = time.time()
    tmp = _fresh_tmp(final)
    if streaming:
        log(f"writing {final} (random weights generated and quantized one tensor at a time)")
        write_quantized_streaming(tmp, shape_cfg or shape, fmt)
    else:
        src = f16_checkpoint(workdir, shape, shape_cfg)
        log(f"quantizing {src} -> {final}")
        tmp.rmdir()  # quantize_checkpoint wants an empty or absent folder
        quantize_checkpoint(src, tmp, fmt)
    log(f"  {time.time() - t:.0f} s")
    return _finish(tmp, final)


def write_quantized_streaming(folder: Path, shape, fmt: str, seed: int = 0) -> Path:
    """A llamacpu quantized checkpoint of random weights, never holding more than one float32 tensor.

    The weights are those `write_synthetic(folder, shape, dtype="F32", seed)` would write (same
    generator per tensor), quantized under the same policy as `quantize_checkpoint`; the file has the
    same layout and metadata, so it loads exactly like one made by `llamacpu quantize`. Norms are F32."""
    from llamacpu.checkpoint.hf import expected_tensors, required_names
    from llamacpu.checkpoint.quantize import FORMAT_VERSION, HEAD_FORMAT, choose_format
    from llamacpu.checkpoint.synthetic import SHAPES
    from llamacpu.checkpoint.writer import write_safetensors
    from llamacpu.config import LlamaConfig
    from llamacpu.quant import get_format, quantize

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(SHAPES[shape] if isinstance(shape, str) else shape)
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    cfg.setdefault("model_type", "llama")
    cfg["torch_dtype"] = "float32"
    config = LlamaConfig.from_dict(cfg)
    names = required_names(config)
    shapes = {n: s for n, (_, s) in expected_tensors(config).items() if n in names}
    entries = []
    meta = {"llamacpu.format_version": FORMAT_VERSION, "llamacpu.quantization": fmt}

    def generate(shape_, index):  # as write_synthetic's maker
        rng = np.random.default_rng([seed, index])
        if len(shape_) == 1:
            return 1.0 + 0.1 * rng.standard_normal(shape_, dtype=np.float32)
        return rng.standard_normal(shape_, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape_[1]))

    for index, (name, shp) in enumerate(sorted(shapes.items())):
        if len(shp) == 1:
            entries.append((name, "F32", shp, lambda s=shp, i=index: generate(s, i)))
            continue
        head = name in ("model.embed_tokens.weight", "lm_head.weight")
        chosen = HEAD_FORMAT if head else choose_format(fmt, shp[1])
        if chosen is None:
            entries.append((name, "F16", shp, lambda s=shp, i=index: generate(s, i).astype(np.float16)))
            continue
        qf = get_format(chosen)
        entries.append((name, "U8", (shp[0], qf.bytes_per_row(shp[1])),
                        lambda s=shp, i=index, c=chosen, n=name: _quantize_logged(n, c, generate(s, i))))
        meta[f"llamacpu.q.{name}"] = f"{chosen}:{shp[0]}x{shp[1]}"
    write_safetensors(folder / "model.safetensors", entries, metadata=meta)
    cfg["quantization_config"] = {"quant_method": "llamacpu", "format": fmt}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    _copy_tokenizer(folder, cfg["vocab_size"])
    return folder


def _quantize_logged(name, fmt, w):
    from llamacpu.quant import quantize

    if name.endswith("layers.0.self_attn.q_proj.weight") or "embed" in name or name.endswith(".31.mlp.up_proj.weight"):
        log(f"  {name} -> {fmt}")
    return quantize(fmt, w)


# ---- GGUF for llama.cpp ----------------------------------------------------------------------------

def gguf_file(workdir: Path, shape: str, fmt: str, shape_cfg: dict | None = None,
              source: Path | None = None) -> Path | None:
    """WORKDIR/<shape>/gguf/<fmt>.gguf with the tensors of the llamacpu checkpoint for `fmt`
    (f16/ for "f16"); None for a format ggml lacks (int4_g128)."""
    if fmt not in GGUF_FORMATS:
        return None
    final = workdir / shape / "gguf" / f"{fmt}.gguf"
    if final.is_file():
        return final
    if source is None:
        source = (f16_checkpoint(workdir, shape, shape_cfg) if fmt == "f16"
                  else quantized_checkpoint(workdir, shape, fmt, shape_cfg=shape_cfg))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".partial")
    log(f"writing {final} from {source}")
    t = time.time()
    write_gguf(source, tmp, fmt, name=f"synthetic {shape} {fmt}")
    os.replace(tmp, final)
    log(f"  {time.time() - t:.0f} s")
    return final


def hf_to_gguf_names(n_layers: int) -> dict[str, str]:
    from llamacpu.checkpoint.gguf import GGUF_TO_HF

    out = {}
    for g, h in GGUF_TO_HF.items():
        for i in range(n_layers) if "{i}" in g else [None]:
            out[h.format(i=i)] = g.format(i=i)
    return out


def write_gguf(folder: Path, path: Path, fmt: str, name: str = "synthetic") -> Path:
    """A llama GGUF file holding the tensors of checkpoint `folder` (F16 safetensors, or a llamacpu
    quantized checkpoint whose blocks are copied as they are). Streaming: one tensor at a time."""
    import gguf
    from gguf import GGMLQuantizationType, LlamaFileType

    from llamacpu.checkpoint.gguf import permute_qk
    from llamacpu.checkpoint.hf import CheckpointTensors, weight_files
    from llamacpu.checkpoint.quantize import quantized_entries
    from llamacpu.config import LlamaConfig
    from llamacpu.quant import get_format
    from llamacpu.tokenizer.gguf_vocab import add_tokenizer_metadata, gguf_metadata_from_sentencepiece

    folder = Path(folder)
    config = LlamaConfig.from_pretrained(folder)
    tensors = CheckpointTensors(weight_files(folder))
    quantized = quantized_entries(tensors)
    names = hf_to_gguf_names(config.num_hidden_layers)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name(name)
    w.add_context_length(config.max_position_embeddings)
    w.add_embedding_length(config.hidden_size)
    w.add_block_count(config.num_hidden_layers)
    w.add_feed_forward_length(config.intermediate_size)
    w.add_rope_dimension_count(config.head_dim)
    w.add_head_count(config.num_attention_heads)
    w.add_head_count_kv(config.num_key_value_heads)
    w.add_layer_norm_rms_eps(config.rms_norm_eps)
    w.add_rope_freq_base(float(getattr(config, "rope_theta", 10000.0) or 10000.0))
    w.add_vocab_size(config.vocab_size)
    w.add_file_type({"f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0,
                     "q4_0": LlamaFileType.MOSTLY_Q4_0, "q4_k": LlamaFileType.MOSTLY_Q4_K_M}[fmt])
    if (folder / "tokenizer.model").is_file():
        meta = gguf_metadata_from_sentencepiece(folder / "tokenizer.model")
    else:
        meta = {"model": "llama", "tokens": [f"<t{i}>" for i in range(config.vocab_size)],
                "scores": np.zeros(config.vocab_size, np.float32),
                "token_type": np.ones(config.vocab_size, np.int32), "bos_token_id": 1, "eos_token_id": 2}
    add_tokenizer_metadata(w, meta)

    plan = []  # (gguf name, hf name, ggml type or None for F32/F16, shape for the info, nbytes)
    for hf_name in sorted(tensors.names(), key=lambda n: _gguf_order(names.get(n, n))):
        g = names.get(hf_name) or names.get("model." + hf_name)
        if g is None:
            raise ValueError(f"{folder}: tensor {hf_name} has no GGUF name")
        dt, shp = tensors.dtype(hf_name), tuple(tensors.shape(hf_name))
        if hf_name in quantized:
            qfmt, (rows, cols) = quantized[hf_name]
            ggml = get_format(qfmt).ggml_type
            plan.append((g, hf_name, ggml, shp, int(np.prod(shp))))
        elif len(shp) == 1:  # norms: F32, as llama.cpp's converter writes them
            plan.append((g, hf_name, GGMLQuantizationType.F32, shp, shp[0] * 4))
        elif dt == "F16":
            plan.append((g, hf_name, GGMLQuantizationType.F16, shp, int(np.prod(shp)) * 2))
        else:
            raise ValueError(f"{folder}: {hf_name} is {dt}; write_gguf takes F16 or quantized matrices")
    for g, hf_name, ggml, shp, nbytes in plan:
        if ggml in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            w.add_tensor_info(g, shp, np.dtype(np.float32 if ggml == GGMLQuantizationType.F32 else np.float16),
                              nbytes)
        else:
            w.add_tensor_info(g, shp, np.dtype(np.uint8), nbytes, raw_dtype=ggml)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    for g, hf_name, ggml, shp, nbytes in plan:
        data = tensors.get(hf_name)
        if ggml == GGMLQuantizationType.F32:
            data = np.asarray(tensors.get_f32(hf_name), np.float32)
        elif ggml == GGMLQuantizationType.F16:
            data = np.asarray(data).view(np.float16)
        kind = g.split(".")[-2] if g.startswith("blk.") else ""
        if kind in heads:
            data = permute_qk(np.asarray(data), heads[kind])  # llama.cpp's RoPE pairs adjacent dims
        w.write_tensor_data(np.ascontiguousarray(data))
    w.close()
    return path


def _gguf_order(g: str):
    """convert_hf_to_gguf's order: token_embd, then blocks in order, then output_norm, output."""
    if g.startswith("token_embd"):
        return (0, 0, g)
    if g.startswith("blk."):
        return (1, int(g.split(".")[1]), g)
    return (2, 0, g)
