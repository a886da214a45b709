"""model.save_pretrained(folder): a checkpoint folder that llamacpu and (for float weights)
transformers load. Weights are written as they are in memory (F32/F16/BF16 as stored; quantized
blocks in llamacpu's quantized-checkpoint layout, see checkpoint/quantized.py). Each file is written
under a temporary name and renamed, so a failure never leaves a half-written checkpoint file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import UnsupportedError


def _entries(model):
    from .names import LAYER
    from ..quant import QuantizedWeight

    w = model.weights
    named = [("model.embed_tokens.weight", w.embed), ("model.norm.weight", w.norm)]
    if w.lm_head is not None and w.lm_head is not w.embed:
        named.append(("lm_head.weight", w.lm_head))
    if w.score is not None:
        named.append(("score.weight", w.score))
    for i, layer in enumerate(w.layers):
        for t in LAYER:  # the one checkpoint name table (checkpoint/names.py)
            if getattr(layer, t.field) is not None:
                named.append((t.hf.format(i=i), getattr(layer, t.field)))
    entries, meta, formats = [], {}, set()
    for name, t in named:
        if isinstance(t, np.ndarray):
            entries.append((name, "F32", t.shape, np.asarray(t, np.float32)))
        elif isinstance(t, QuantizedWeight):
            entries.append((name, "U8", t.blocks.shape, t.blocks))
            meta[f"llamacpu.q.{name}"] = f"{t.dtype}:{t.shape[0]}x{t.shape[1]}"
            formats.add(t.dtype)
        elif t.dtype in ("f32", "f16", "bf16"):
            entries.append((name, t.dtype.upper(), t.shape, t.data.view(np.float16) if t.dtype == "f16" else t.data))
        else:
            raise UnsupportedError(f"save_pretrained: cannot write a {t.dtype} matrix ({name})")
    return entries, meta, formats


def save_model(model, save_directory) -> None:
    from ..checkpoint.quantize import FORMAT_VERSION
    from ..checkpoint.writer import write_safetensors

    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise UnsupportedError(f"save_pretrained: {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    entries, meta, formats = _entries(model)
    config = model.config
    extra = {}
    if formats:
        meta.update({"llamacpu.format_version": FORMAT_VERSION, "llamacpu.quantization": ",".join(sorted(formats))})
        extra["quantization_config"] = {"quant_method": "llamacpu", "format": ",".join(sorted(formats))}
    tmp = folder / ".model.safetensors.tmp"
    try:
        write_safetensors(tmp, entries, metadata={"format": "pt", **meta})
        os.replace(tmp, folder / "model.safetensors")
    finally:
        if tmp.exists():
            tmp.unlink()
    config.save_pretrained(folder, architectures=[type(model).__name__], **extra)
    gc = getattr(model, "generation_config", None)
    if gc is not None and getattr(model, "head_kind", None) == "lm":
        gc.save_pretrained(folder)
