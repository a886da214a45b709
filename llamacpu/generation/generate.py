"""generate(): the prompt is prefilled into the KV cache in one pass, then tokens are decoded one at a
time, each step reading every weight once.

    generate_tokens()  the loop, as a generator of per-step token columns (streaming builds on it)
    generate()         transformers' API: -> int64 [B, T + new]
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import InputError, UnsupportedError
from ..model.inputs import as_batch
from ..validation import token_ids
from .sampling import GenerationConfig, Sampler
from .stopping import StopStrings


def resolve_config(model, kwargs) -> GenerationConfig:
    """Call arguments over the model's generation_config (its generation_config.json) over defaults.
    For the token-by-token paths (streaming, pipeline, chat): what needs model.generate is refused."""
    whole = [k for k in ("max_length", "num_beams", "num_return_sequences", "return_dict_in_generate",
                         "output_scores", "output_logits") if kwargs.get(k) not in (None, False, 1)]
    if whole:
        raise UnsupportedError(f"{whole}: streaming generates one sequence per prompt token by token; use "
                               f"model.generate(...) for these (and max_new_tokens for the length)")
    kwargs = {**{k: v for k, v in model_defaults(model).items() if k not in _WHOLE_CALL}, **kwargs}
    return config_for(model, kwargs)


def config_for(model, kwargs: dict) -> GenerationConfig:
    """GenerationConfig from merged arguments, the model's end tokens and pad token filled in where unset."""
    if kwargs.get("eos_token_id") is None:
        kwargs["eos_token_id"] = model.config.eos_token_ids
    config = GenerationConfig.from_kwargs(**kwargs)
    if config.pad_token_id is None:
        pad = model.config.pad_token_id
        config.pad_token_id = pad if pad is not None else (config.eos_token_id[0] if config.eos_token_id else 0)
    if not 0 <= config.pad_token_id < model.config.vocab_size:  # finished rows feed it back
        raise InputError(f"pad_token_id: {config.pad_token_id} is outside the vocabulary [0, {model.config.vocab_size})")
    return config


_WHOLE_CALL = ("max_length", "num_beams", "num_return_sequences", "return_dict_in_generate", "output_scores",
               "output_logits", "length_penalty", "early_stopping")


def model_defaults(model) -> dict:
    """The fields of `model.generation_config` that differ from GenerationConfig's defaults."""
    gc = getattr(model, "generation_config", None)
    return gc.to_diff_dict() if gc is not None else {}


def generate_tokens(model, input_ids, attention_mask, config: GenerationConfig, cache=None,
                    tokenizer=None, history=None, sampler=None, constraints=None) -> Iterator[np.ndarray]:
    """Yield the next token of every row, int64 [B], until max_new_tokens, all rows at EOS, or a stop
    string. Finished rows get pad_token_id. `cache` defaults to an empty one lent for this call; a
    cache that already holds a prefix gets input_ids appended (chat reuses the shared history so),
    and `history` then lists each row's earlier ids for the repetition penalty. `constraints`: one
    structured-output grammar state per row (llamacpu.generation.structured.Constraint); a row ends when
    its grammar is complete."""

    ids, mask = as_batch(input_ids, attention_mask, model.config.vocab_size)
    batch = ids.shape[0]
    own = cache is None  # a cache of our own, lent by the model for this call only (thread-safe)
    if own:
        cache = model.take_cache(batch)
    try:
        cache.check_room(ids.shape[1] + max(config.max_new_tokens - 1, 0))
        if config.max_new_tokens == 0:
            return
        yield from _decode(model, ids, mask, config, cache, tokenizer, history, sampler, constraints)
    finally:
        if own:
            model.give_back_cache(cache)


def _decode(model, ids, mask, config, cache, tokenizer, history, sampler=None, constraints=None):
    batch = ids.shape[0]
    stops = StopStrings(config.stop_strings, tokenizer, batch) if config.stop_strings else None
    earlier = history if history is not None else [[]] * batch  # per row: ids before input_ids
    history = [np.concatenate([np.asarray(h, np.int64).reshape(-1), row[m.astype(bool)]])
               for h, row, m in zip(earlier, ids, mask)]
    sampler = sampler or Sampler(config)
    eos = np.array(config.eos_token_id or [], np.int64)
    done = np.zeros(batch, bool)
    logits = model.next_token_logits(ids, mask, cache)
    for step in range(config.max_new_tokens):
        if constraints is None:
            nxt = np.where(done, config.pad_token_id, sampler(logits, history))
        else:
            nxt = _constrained(logits, history, done, constraints, sampler, config.pad_token_id)
        yield nxt
        done |= np.isin(nxt, eos)
        if constraints is not None:
            done |= np.array([c.done() for c in constraints])
        if stops is not None:
            done |= stops.update(nxt, done)
        if done.all() or step == config.max_new_tokens - 1:
            return
        history = [np.append(h, t) for h, t in zip(history, nxt)]
        logits = model.next_token_logits(nxt[:, None], np.ones((batch, 1), np.uint8), cache)


def _constrained(logits, history, done, constraints, sampler, pad) -> np.ndarray:
    """One step under per-row grammars: each live row's token drawn under its mask by the call's sampler
    (row by row, in order: a seed gives the same tokens every run), then fed to its grammar."""
    from .structured import sample_allowed

    nxt = np.full(len(constraints), pad, np.int64)
    for b, c in enumerate(constraints):
        if not done[b]:
            nxt[b] = sample_allowed(c, logits[b], lambda z: sampler(z, [history[b]])[0])
            c.advance(int(nxt[b]))
    return nxt


def generate(model, input_ids, attention_mask=None, streamer=None, tokenizer=None, **kwargs) -> np.ndarray:
    """transformers-style: max_new_tokens, do_sample, temperature, top_k, top_p, min_p,
    repetition_penalty, eos_token_id (one or several), pad_token_id, stop_strings (needs tokenizer=),
    seed. Returns int64 [B, T + n]; stops early only when every row has ended."""
    config = resolve_config(model, kwargs)
    if config.stop_strings and tokenizer is None:
        raise InputError("stop_strings need the tokenizer: generate(..., stop_strings=[...], tokenizer=tok)")
    ids = token_ids(input_ids, "input_ids")
    ids = ids[None] if ids.ndim == 1 else ids
    columns = [np.asarray(ids, dtype=np.int64)]
    if streamer is not None:
        streamer.put(columns[0])
    try:
        for nxt in generate_tokens(model, ids, attention_mask, config, tokenizer=tokenizer):
            columns.append(nxt[:, None])
            if streamer is not None:
                streamer.put(nxt)
    finally:
        if streamer is not None:
            streamer.end()
    return np.concatenate(columns, axis=1)
