"""Activation statistics for activation-aware quantization (AWQ's idea): how much each input column of
every projection matters, measured on a calibration text.

A weight's rounding error reaches the output multiplied by the activation it meets, and a few input
columns carry activations tens to hundreds of times larger than the rest (SmolLM2's down projections:
up to 900x the mean square). The importance of column j of a matrix is the mean of a_j^2 over the
calibration tokens, a_j being that matrix's input; int4_g128's clip search (quant/int4_g128.py) then
minimises sum_j a_j^2 (error_j)^2 per group, the expected squared error of the matrix's output, instead
of the weights' own squared error.

One forward pass per chunk of tokens, in a fresh cache, on the unquantized model; a recorder set as
the model's tracer (see llamacpu.inspect.trace) adds up the squares at each hook, so nothing but
[columns] sums is kept.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError

# projection -> the forward pass's hook (LlamaCore.forward_chunk) that records its input
INPUT_OF = {"wq": "attn_norm", "wk": "attn_norm", "wv": "attn_norm", "wo": "attn_out",
            "w_gate": "mlp_norm", "w_up": "mlp_norm", "w_down": "act"}


class _SumOfSquares:
    """A tracer: per (layer, hook), the sum over tokens of each column's square, and the token count."""

    def __init__(self, widths: dict[str, int]):
        self.widths = widths  # hook -> columns of its array
        self.sums: dict[tuple[int, str], np.ndarray] = {}
        self.tokens = 0

    def begin(self, ids, *args, **named) -> None:
        self.tokens += int(np.asarray(ids).size)

    def record(self, layer, **named) -> None:
        if layer is None:
            return
        for hook, array in named.items():
            if hook in self.widths:
                a = np.asarray(array, np.float32).reshape(-1, self.widths[hook])
                s = np.einsum("ij,ij->j", a, a, dtype=np.float64)
                key = (layer, hook)
                self.sums[key] = self.sums[key] + s if key in self.sums else s


def input_importance(model, input_ids, chunk: int = 512) -> dict[str, np.ndarray]:
    """{"layers.{i}.{projection}": float32 [input columns]}: the mean squared input of every projection
    over `input_ids` (a 1-D sequence of token ids, read in chunks of `chunk` tokens from a fresh cache)."""
    ids = np.asarray(input_ids)
    if ids.ndim != 1 or ids.size < 1 or not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"calibration: expected a 1-D sequence of token ids, got shape {ids.shape} {ids.dtype}")
    if ids.min() < 0 or ids.max() >= model.config.vocab_size:
        raise InputError(f"calibration: token ids must lie in [0, {model.config.vocab_size})")
    if chunk < 1:
        raise InputError(f"calibration: chunk must be at least 1 token, got {chunk}")
    chunk = min(chunk, model.max_context)
    cfg = model.config
    rec = _SumOfSquares({"attn_norm": cfg.hidden_size, "attn_out": cfg.num_attention_heads * cfg.head_dim,
                         "mlp_norm": cfg.hidden_size, "act": cfg.intermediate_size})
    previous, model.tracer = model.tracer, rec
    try:
        for start in range(0, ids.size, chunk):
            piece = ids[start:start + chunk].reshape(1, -1).astype(np.int64)
            cache = model.new_cache(1, max_len=piece.shape[1])
            model.forward_chunk(piece, np.ones_like(piece), cache)
    finally:
        model.tracer = previous
    return {f"layers.{layer}.{proj}": (rec.sums[(layer, hook)] / rec.tokens).astype(np.float32)
            for layer in range(model.config.num_hidden_layers) for proj, hook in INPUT_OF.items()}
