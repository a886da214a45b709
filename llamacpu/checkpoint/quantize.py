"""Quantizing weights at load, and reading back which tensors of a llamacpu quantized checkpoint are
quantized (the writer is `checkpoint.quantized`).

Policy (`quantize_weights`):
  - the seven projection matrices of every layer take the requested format;
  - the token embedding and the LM head take Q8_0: they set the quality of every logit, and at 8.5
    bits per weight Q8_0 is indistinguishable from F16 in perplexity (bench/README.md), while still
    halving an F16 embedding;
  - a matrix whose input width is not a whole number of the format's blocks falls back along
    FALLBACK (e.g. Q4_K needs multiples of 256: a 172-wide input cannot use it), last of all keeping
    its stored precision; every fallback is reported;
  - norms and biases stay float32.
"""
from __future__ import annotations

import inspect

import numpy as np
from tqdm.auto import tqdm

from ..errors import CheckpointError, InputError
from ..model.llama import LlamaWeights
from ..model.names import PROJECTIONS
from ..model.weights import DenseWeight
from ..quant import QuantizedWeight, get_format
from ..runtime import KERNEL_LOCK

FORMAT_VERSION = "1"
FALLBACK = {"q4_k": ["q4_0", "q8_0"], "q6_k": ["q8_0"], "int4_g128": ["q4_1", "q8_0"], "q4_0": ["q8_0"],
            "q4_1": ["q8_0"], "q8_0": [], "q5_0": ["q8_0"], "q5_1": ["q8_0"], "q5_k": ["q5_1", "q8_0"],
            "q3_k": ["q4_0", "q8_0"], "q2_k": ["q4_0", "q8_0"], "iq4_nl": ["q8_0"], "iq4_xs": ["iq4_nl", "q8_0"]}
HEAD_FORMAT = "q8_0"


def choose_format(fmt: str, cols: int) -> str | None:
    """The first format in fmt's fallback chain that fits `cols` inputs, or None (keep as stored)."""
    for name in [fmt] + FALLBACK[fmt]:
        if cols % get_format(name).block_size == 0:
            return name
    return None


def quantize_weight(w, fmt: str, importance=None):
    """-> (the weight in fmt or its fallback, the format chosen). importance: float32 [in_features], the
    mean squared input per column (checkpoint/calibrate.py), used by formats whose quantizer takes it
    (int4_g128's clip search), ignored by the others."""
    chosen = choose_format(fmt, w.shape[1])
    if chosen is None or chosen == w.dtype:
        return w, chosen
    if not isinstance(w, DenseWeight):
        # already quantized (a GGUF file): as transformers loads GGUF, go through float, then quantize;
        # the two roundings add up, so say so once
        _warn_requantize(w.dtype, chosen)
    with KERNEL_LOCK:  # dequantize may launch a parallel kernel (see llamacpu.runtime)
        dense = w.dequantize()
    fmt_ = get_format(chosen)
    if importance is not None and "importance" in inspect.signature(fmt_.quantize).parameters:
        return QuantizedWeight(fmt_, fmt_.quantize(np.ascontiguousarray(dense, np.float32), importance=importance),
                               dense.shape), chosen
    return QuantizedWeight.quantize(chosen, dense), chosen


def _warn_requantize(stored: str, target: str, _seen=set()) -> None:
    import warnings

    if (stored, target) not in _seen:
        _seen.add((stored, target))
        warnings.warn(f"re-quantizing {stored} blocks to {target}: the weights were already quantized, so both "
                      f"roundings add up (load a float checkpoint for the best {target} model)", stacklevel=4)


def quantize_weights(weights: LlamaWeights, fmt: str, progress: bool = False,
                     importance: dict | None = None) -> tuple[LlamaWeights, dict]:
    """Quantize in place (see the policy above). Returns the weights and {name: format or None}.
    importance: {"layers.{i}.{projection}": [in_features]} from checkpoint.calibrate.input_importance
    (activation-aware rounding for the formats that use it: int4_g128)."""
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
        q, chosen[name] = quantize_weight(getattr(layer, attr), f, (importance or {}).get(name))
        setattr(layer, attr, q)
        bar.update()
    bar.close()
    return weights, chosen


def _progress(total, desc, enabled):
    return tqdm(total=total, desc=desc, unit="tensor", disable=not enabled, leave=False)


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
