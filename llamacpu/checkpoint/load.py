"""From a path on disk to (LlamaConfig, LlamaWeights): the one entry point every front end uses.

Sources: a Hugging Face folder (config.json + safetensors, possibly sharded, possibly a llamacpu
quantized checkpoint) or a GGUF file. Weights stay memory-mapped in their stored format unless
`dtype` asks for a conversion or `quantization` for quantizing at load.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from ..config import LlamaConfig
from ..errors import CheckpointError, InputError, UnsupportedError
from ..model.names import GLOBAL, LAYER, MATRIX
from ..model.llama import LayerWeights, LlamaWeights
from ..model.weights import DenseWeight
from ..limits import check_allocation
from ..runtime import KERNEL_LOCK
from ..quant import QuantizedWeight, get_format
from . import hf
from .gguf import read_gguf
from .quantize import quantize_weights, quantized_entries
from .safetensors_mmap import bf16_to_f32

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def load(path, dtype: str = "auto", quantization: str | None = None, head: str = "lm",
         check_finite: bool = True, progress: bool = False):
    """-> (config, weights, source) for a checkpoint folder or file. `head` is "lm", "score" or "none"."""
    if dtype not in DTYPE_CHOICES:
        raise InputError(f"dtype: expected one of {DTYPE_CHOICES}, got {dtype!r}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".gguf":
        config, weights, source = load_gguf(path, dtype, head)
    elif path.is_dir():
        config = LlamaConfig.from_pretrained(path)
        source = hf.CheckpointTensors(hf.weight_files(path))
        quantized = quantized_entries(source)
        names = hf.validate(source, config, head, quantized)
        _check_conversion_memory(path, dtype, [(source.dtype(n), source.shape(n)) for n in names.values()
                                               if n not in quantized and len(source.shape(n)) == 2])
        weights = build_weights(config, source, names, dtype, head, quantized)
    else:
        raise CheckpointError(f"{path}: expected a checkpoint folder (config.json + *.safetensors) or a .gguf file")
    if check_finite:  # GGUF files too; before quantizing, so the stored values are checked
        check_all_finite(weights, progress)
    if quantization:
        weights, _ = quantize_weights(weights, quantization, progress=progress)
    return config, weights, source


def _check_conversion_memory(path: Path, dtype: str, matrices: list[tuple[str, tuple]]) -> None:
    """dtype= other than "auto" copies every matrix not already stored so: check the copies fit first."""
    if dtype == "auto":
        return
    want = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
    size = 4 if dtype == "float32" else 2
    need = sum(int(np.prod(shape, dtype=np.int64)) * size for stored, shape in matrices if stored.upper() != want)
    check_allocation(need, f"{path}: converting the weights to {dtype}", CheckpointError,
                     "dtype='auto' keeps the stored precision, memory-mapped")


def load_gguf(path: Path, dtype: str, head: str):
    """A llama GGUF file: blocks used as stored (no re-quantization), floats as stored or converted."""
    ckpt = read_gguf(path)
    config = LlamaConfig.from_dict(ckpt.config)
    _check_conversion_memory(path, dtype, [(t.dtype, t.shape) for t in ckpt.tensors.values()
                                           if t.dtype.upper() in ("F32", "F16", "BF16") and len(t.shape) == 2])
    if "rope_freqs.weight" in ckpt.tensors:
        config.rope_freq_factors = rope_freq_factors(ckpt.tensors["rope_freqs.weight"], config, path)
    fallback = {t.ggml_type.name for t in ckpt.tensors.values() if t.ggml_type not in KERNEL_TYPES}
    if fallback:
        print(f"llamacpu: {', '.join(sorted(fallback))} tensors have no llamacpu kernel: dequantized to F16 "
              "at load (correct, slower, more memory)", file=sys.stderr)

    def matrix(name):
        t = ckpt.tensors[name]
        kind = t.dtype.upper()
        if kind in ("F32", "F16", "BF16"):
            return DenseWeight.from_array(t.data, dtype, kind)
        if t.ggml_type not in KERNEL_TYPES:
            return DenseWeight.from_array(dequantize_rows(t, path), dtype, "F16")
        return QuantizedWeight.from_blocks(get_format(int(t.ggml_type)).name, t.data, t.shape)

    def vector(name):
        if name not in ckpt.tensors:
            return None
        t = ckpt.tensors[name]
        kind = t.dtype.upper()
        if kind not in ("F32", "F16", "BF16"):
            raise CheckpointError(f"{path}: {name} is stored as {kind}; norms and biases must be float")
        return bf16_to_f32(t.data).reshape(-1) if kind == "BF16" else np.array(t.data, np.float32).reshape(-1)

    weights = _build(config, matrix, vector, set(ckpt.tensors), head)
    return config, weights, ckpt


def _kernel_types():
    from ..quant import FORMATS

    return {f.ggml_type for f in FORMATS.values() if f.ggml_type is not None} | {
        GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}


KERNEL_TYPES = _kernel_types()  # ggml types read as stored; any other that gguf.quants decodes: F16 at load


def dequantize_rows(t, path, rows_per_chunk: int = 256) -> np.ndarray:
    """A tensor of a ggml type with no llamacpu kernel, dequantized by gguf.quants into float16
    [rows, cols], a chunk of rows at a time (the float32 temporaries stay small)."""
    import gguf.quants

    rows, cols = t.shape
    out = np.empty((rows, cols), np.float16)
    try:
        for r0 in range(0, rows, rows_per_chunk):
            out[r0:r0 + rows_per_chunk] = gguf.quants.dequantize(t.data[r0:r0 + rows_per_chunk], t.ggml_type)
    except (NotImplementedError, ValueError) as e:
        raise UnsupportedError(f"{path}: tensors of type {t.ggml_type.name} cannot be decoded ({e})") from None
    return out


def rope_freq_factors(t, config: LlamaConfig, path) -> np.ndarray:
    """rope_freqs.weight [head_dim / 2] as float32, checked (positive and finite)."""
    if t.dtype.upper() not in ("F32", "F16", "BF16") or t.data.size != config.head_dim // 2:
        raise CheckpointError(f"{path}: rope_freqs.weight must be a float vector of head_dim / 2 = "
                              f"{config.head_dim // 2} values, found {t.ggml_type.name} {t.shape}")
    f = (bf16_to_f32(t.data) if t.dtype.upper() == "BF16" else np.asarray(t.data, np.float32)).reshape(-1)
    if not (np.isfinite(f).all() and (f > 0).all()):
        raise CheckpointError(f"{path}: rope_freqs.weight holds values that are not positive and finite")
    return f.astype(np.float32)


def build_weights(config: LlamaConfig, tensors: "hf.CheckpointTensors", names: dict[str, str],
                  dtype: str, head: str, quantized: dict | None = None) -> LlamaWeights:
    quantized = quantized or {}

    def matrix(canon):
        stored = names[canon]
        if stored in quantized:
            fmt, shape = quantized[stored]
            return QuantizedWeight.from_blocks(fmt, tensors.get(stored), shape)
        return DenseWeight.from_array(tensors.get(stored), dtype, tensors.dtype(stored))

    def vector(canon):
        return tensors.get_f32(names[canon]) if canon in names else None

    return _build(config, matrix, vector, set(names), head)


def _build(config: LlamaConfig, matrix, vector, present: set, head: str) -> LlamaWeights:
    """Assemble LlamaWeights from `matrix(hf_name)` / `vector(hf_name)` for the names `present`."""
    def get(t, i=None):
        return (matrix if t.kind == MATRIX else vector)(t.hf.format(i=i))

    layers = [LayerWeights(**{t.field: get(t, i) for t in LAYER}) for i in range(config.num_hidden_layers)]
    top = {t.field: t for t in GLOBAL}
    embed = get(top["embed"])
    lm_head = None
    if head == "lm":
        untied = not config.tie_word_embeddings and top["lm_head"].hf in present
        lm_head = get(top["lm_head"]) if untied else embed
    score = get(top["score"]) if head == "score" else None
    return LlamaWeights(embed=embed, layers=layers, norm=get(top["norm"]), lm_head=lm_head, score=score)


def check_all_finite(weights: LlamaWeights, progress: bool = False) -> None:
    """NaN/Inf in a checkpoint would silently poison every output: find it at load, name the tensor.

    One decode-speed pass per matrix instead of an elementwise scan: W @ ones sums every row, and a
    row holding a NaN or Inf (or a NaN/Inf block scale) sums to NaN or Inf. The matvec kernels read
    each weight once in its stored format, in parallel, with no temporary arrays, so the check costs
    about one decode step, not a dequantized copy of the model.
    """
    from tqdm.auto import tqdm

    named = [("model.embed_tokens.weight", weights.embed), ("model.norm.weight", weights.norm)]
    if weights.lm_head is not None and weights.lm_head is not weights.embed:
        named.append(("lm_head.weight", weights.lm_head))
    if weights.score is not None:
        named.append(("score.weight", weights.score))
    for i, layer in enumerate(weights.layers):
        for t in LAYER:
            value = getattr(layer, t.field)
            if value is not None:
                named.append((t.hf.format(i=i), value))
    for name, w in tqdm(named, desc="checking weights", unit="tensor", disable=not progress, leave=False):
        if isinstance(w, np.ndarray):
            ok = np.isfinite(w).all()
        else:
            sums = np.empty(w.shape[0], np.float32)
            with KERNEL_LOCK:  # a kernel launch like any other (see llamacpu.runtime)
                w.matvec(np.ones(w.shape[1], np.float32), sums)
            ok = np.isfinite(sums).all()
        if not ok:
            raise CheckpointError(f"tensor {name!r} contains NaN or Inf (or rows whose sum overflows float32) "
                                  f"(from_pretrained(..., check_finite=False) skips this check)")
