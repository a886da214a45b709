"""llamacpu's quantized checkpoints: `quantize_checkpoint` writes one (`llamacpu quantize SRC DST --type T`);
`checkpoint.load` reads it back without re-quantizing. Which matrices take which format: see
`checkpoint.quantize`.

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
from ..quant import QuantizedWeight
from .hf import NAME_TABLE
from .load import load
from .quantize import FORMAT_VERSION, PROJECTIONS, quantize_weights
from .writer import write_safetensors

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "generation_config.json", "chat_template.jinja")


def quantize_checkpoint(src, dst, fmt: str, progress: bool = False, importance: dict | None = None) -> Path:
    """Write DST: SRC (a float checkpoint folder) quantized to `fmt` in llamacpu's format. importance:
    checkpoint.calibrate.input_importance of SRC's model (activation-aware rounding, int4_g128)."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise CheckpointError(f"{src}: quantize reads a checkpoint folder (config.json + safetensors)")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"{dst} exists and is not a folder; quantize writes a checkpoint folder")
    if dst.exists() and any(dst.iterdir()):
        raise InputError(f"{dst} exists and is not empty")
    if dst.resolve() == src.resolve():
        raise InputError(f"{dst}: the destination is the source folder")
    config, weights, tensors = load(src, progress=progress)
    weights, _ = quantize_weights(weights, fmt, progress=progress, importance=importance)
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
