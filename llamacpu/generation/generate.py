"""generate(): prefill the prompt into the KV cache, then one token at a time."""
from __future__ import annotations

import numpy as np

from ..errors import InputError


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = 20, do_sample: bool = False,
             eos_token_id=None, pad_token_id=None, **kwargs):
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise InputError(f"max_new_tokens: expected a non-negative integer, got {max_new_tokens!r}")
    if do_sample:
        raise InputError("sampling is not implemented yet")
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    batch = ids.shape[0]
    cache = model.static_cache(batch)
    cache.check_room(ids.shape[1] + max_new_tokens)
    eos = model.config.eos_token_ids if eos_token_id is None else (
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
    pad = pad_token_id if pad_token_id is not None else (model.config.pad_token_id if model.config.pad_token_id is not None else (eos[0] if eos else 0))
    out = [np.asarray(ids, dtype=np.int64)]
    logits = model.next_token_logits(ids, attention_mask, cache)
    done = np.zeros(batch, bool)
    for _ in range(max_new_tokens):
        nxt = logits.argmax(axis=-1)
        nxt = np.where(done, pad, nxt)
        out.append(nxt[:, None])
        done |= np.isin(nxt, eos)
        if done.all():
            break
        logits = model.next_token_logits(nxt[:, None], np.ones((batch, 1), np.uint8), cache)
    return np.concatenate(out, axis=1)
