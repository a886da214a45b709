"""Quantizing weights at load, and llamacpu's quantized checkpoints.

Policy (`quantize_weights`):
  - the seven projection matrices of every layer take the requested format;
  - the token embedding and the LM head take Q8_0: they set the quality of every logit, and at 8.5
    bits per weight Q8_0 is indistinguishable from F16 in perplexity (bench/README.md), while still
    halving an F16 embedding;
  - a matrix whose input width is not a whole number of the format's blocks falls back along
    FALLBACK (e.g. Q4_K needs multiples of 256: a 172-wide input cannot use it), last of all keeping
    its stored precision; every fallback is reported;
  - norms and biases stay float32.

Checkpoint layout (`llamacpu quantize SRC DST --type T`, loaded back without re-quantizing):
  DST/config.json              the source config plus "quantization_config": {"quant_method": "llamacpu", "format": T}
  DST/model.safetensors        each quantized matrix as a U8 tensor [rows, bytes_per_row] of its blocks
                               under its Hugging Face name; everything else as stored
  __metadata__                 "llamacpu.format_version": "1", and for every quantized tensor
                               "llamacpu.q.<name>": "<format>:<rows>x<cols>"
  DST/tokenizer files          copied from SRC
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, InputError
from ..limits import read_json
from ..model.llama import LlamaWeights
from ..model.weights import DenseWeight

FORMAT_VERSION = "1"
PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
FALLBACK = {"q4_k": ["q4_0", "q8_0"], "q6_k": ["q8_0"], "int4_g128": ["q4_1", "q8_0"], "q4_0": ["q8_0"],
            "q4_1": ["q8_0"], "q8_0": []}
HEAD_FORMAT = "q8_0"
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json", "chat_template.jinja")


def choose_format(fmt: str, cols: int) -> str | None:
    """The first format in fmt's fallback chain that fits `cols` inputs, or None (keep as stored)."""
    from ..quant import get_format

    for name in [fmt] + FALLBACK[fmt]:
        if cols % get_format(name).block_size == 0:
            return name
    return None


def quantize_weight(w, fmt: str):
    from ..quant import QuantizedWeight

    if not isinstance(w, DenseWeight):
        raise InputError(f"quantization= applies to float weights; this one is already {w.dtype}")
    chosen = choose_format(fmt, w.shape[1])
    if chosen is None:
        return w, None
    from ..runtime import KERNEL_LOCK

    with KERNEL_LOCK:  # dequantize may launch a parallel kernel (see llamacpu.runtime)
        dense = w.dequantize()
    return QuantizedWeight.quantize(chosen, dense), chosen


def quantize_weights(weights: LlamaWeights, fmt: str, progress: bool = False) -> tuple[LlamaWeights, dict]:
    """Quantize in place (see the policy above). Returns the weights and {name: format or None}."""
    from ..quant import get_format

    fmt = get_format(fmt).name
    if fmt not in FALLBACK:
        raise InputError(f"quantization: {fmt!r} cannot be used at load; choose one of {sorted(FALLBACK)}")
    jobs = [(f"layers.{i}.{n}", layer, n, fmt) for i, layer in enumerate(weights.layers) for n in PROJECTIONS]
    chosen = {}
    bar = _progress(len(jobs) + 2, f"quantizing to {fmt}", progress)
    tied = weights.lm_head is weights.embed
    weights.embed, chosen["embed"] = quantize_weight(weights.embed, HEAD_FORMAT)
    bar.update()
    if tied:
        weights.lm_head = weights.embed
    elif weights.lm_head is not None:
        weights.lm_head, chosen["lm_head"] = quantize_weight(weights.lm_head, HEAD_FORMAT)
    bar.update()
    for name, layer, attr, f in jobs:
        q, chosen[name] = quantize_weight(getattr(layer, attr), f)
        setattr(layer, attr, q)
        bar.update()
    bar.close()
    return weights, chosen


def _progress(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


# ---- the on-disk format ----------------------------------------------------------------------------

def quantized_entries(tensors) -> dict[str, tuple[str, tuple[int, int]]]:
    """From a checkpoint's safetensors metadata: {stored name: (format, (rows, cols))}."""
    meta = tensors.metadata
    if "llamacpu.format_version" not in meta:
        return {}
    if meta["llamacpu.format_version"] != FORMAT_VERSION:
        raise CheckpointError(f"quantized checkpoint version {meta['llamacpu.format_version']!r}; "
                              f"this llamacpu reads version {FORMAT_VERSION}")
    out = {}
    for key, value in meta.items():
        if not key.startswith("llamacpu.q."):
            continue
        try:
            fmt, dims = value.split(":")
            rows, cols = (int(d) for d in dims.split("x"))
        except ValueError:
            raise CheckpointError(f"quantized checkpoint: bad metadata {key}={value!r}") from None
        out[key[len("llamacpu.q."):]] = (fmt, (rows, cols))
    return out


def quantize_checkpoint(src, dst, fmt: str, progress: bool = False) -> Path:
    """Write DST: SRC (a float checkpoint folder) quantized to `fmt` in llamacpu's format."""
    from .load import load

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src}: quantize reads a checkpoint folder (config.json + safetensors)")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{dst} exists and is not a folder; quantize writes a checkpoint folder")
    if dst.exists() and any(dst.iterdir()):
        raise InputError(f"{dst} exists and is not empty")
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the destination is the source folder")
    config, weights, tensors = load(src, quantization=fmt, progress=progress)
    # Written into a temporary folder beside DST and renamed when complete: a failure (disk full, a file
    # size limit, Ctrl-C) leaves no partial DST, and SRC is only ever read.
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".partial", dir=dst.parent))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stay on DST
    except OSError as e:
        raise CheckpointError(f"{dst}: cannot create the destination folder ({e.strerror or e})") from None
    try:
        _write_quantized(src, tmp, config, weights, tensors, fmt)
        if dst.exists():
            dst.rmdir()  # empty (checked above)
        os.rename(tmp, dst)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        where = e.filename or dst
        raise CheckpointError(f"{dst}: writing the quantized checkpoint failed at {where} "
                              f"({e.strerror or e}); nothing was left behind") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _write_quantized(src: Path, dst: Path, config, weights, tensors, fmt: str) -> None:
    from ..quant import QuantizedWeight
    from .hf import NAME_TABLE
    from .writer import write_safetensors

    engine_to_hf = {}
    for pattern, (engine, _) in NAME_TABLE.items():
        for i in range(config.num_hidden_layers) if "{i}" in pattern else [None]:
            engine_to_hf[engine.format(i=i)] = pattern.format(i=i)
    mats = {"embed": weights.embed, "lm_head": None if weights.lm_head is weights.embed else weights.lm_head}
    for i, layer in enumerate(weights.layers):
        for n in PROJECTIONS:
            mats[f"{i}.{n}"] = getattr(layer, n)
    entries, meta = [], {"llamacpu.format_version": FORMAT_VERSION, "llamacpu.quantization": fmt}
    for engine, w in mats.items():
        if w is None:
            continue
        name = engine_to_hf[engine]
        if isinstance(w, QuantizedWeight):
            entries.append((name, "U8", w.blocks.shape, w.blocks))
            meta[f"llamacpu.q.{name}"] = f"{w.dtype}:{w.shape[0]}x{w.shape[1]}"
        else:
            entries.append((name, tensors.dtype(_stored_name(tensors, name)), w.shape,
                            lambda n=name: np.asarray(tensors.get(_stored_name(tensors, n)))))
    for canon in tensors.names():  # norms and biases, as stored
        hf_name = canon if canon.startswith(("model.", "lm_head.", "score.")) else "model." + canon
        if hf_name.endswith(".weight") and len(tensors.shape(canon)) == 2:
            continue
        entries.append((hf_name, tensors.dtype(canon), tensors.shape(canon), lambda c=canon: np.asarray(tensors.get(c))))
    write_safetensors(dst / "model.safetensors", entries, metadata=meta)
    cfg = read_json(src / "config.json", CheckpointError, "config.json")
    cfg["quantization_config"] = {"quant_method": "llamacpu", "format": fmt}
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in TOKENIZER_FILES:
        if (src / f).is_file():
            shutil.copy(src / f, dst / f)


def _stored_name(tensors, hf_name: str) -> str:
    if hf_name in tensors.where:
        return hf_name
    short = hf_name[len("model."):]
    if short in tensors.where:
        return short
    raise CheckpointError(f"tensor {hf_name} not found")
