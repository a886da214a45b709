"""The model's inputs, checked at the boundary: every entry point (the forward pass, generation, tracing)
turns user input_ids / attention_mask into arrays the kernels can trust here, before any kernel runs."""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..validation import token_ids


def as_batch(input_ids, attention_mask, vocab_size: int):
    """Validate ids and mask at the boundary -> (int64 [B, T], uint8 [B, T]). Kernels never see bad ids."""
    ids = token_ids(input_ids, "input_ids")
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise InputError(f"input_ids: expected a non-empty [batch, seq_len] array, got shape {ids.shape}")
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids: expected integers, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise InputError(f"input_ids: token id {int(ids[bad][0])} is out of range [0, {vocab_size})")
    if attention_mask is None:
        mask = np.ones(ids.shape, np.uint8)
    else:
        mask = token_ids(attention_mask, "attention_mask", allow_empty=True)
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask: shape {mask.shape} does not match input_ids {ids.shape}")
        if not np.isin(mask, (0, 1)).all():
            raise InputError("attention_mask: values must be 0 or 1")
        mask = mask.astype(np.uint8)
    return np.ascontiguousarray(ids, dtype=np.int64), np.ascontiguousarray(mask)
