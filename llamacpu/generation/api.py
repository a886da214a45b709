"""`model.generate(...)` with transformers' surface: settings come from the call, then a
`generation_config=` object, then the model's generation_config (its generation_config.json), then
transformers' defaults (max_length=20 in all when no length is given anywhere). Dispatches to greedy
or sampled decoding (llamacpu.generation.generate) or beam search (llamacpu.generation.beam_search),
and returns an int64 array, or with return_dict_in_generate=True a Generate*Output holding the
sequences and, on request, the per-step scores and raw logits.
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError, UnsupportedError
from ..model.outputs import GenerateDecoderOnlyOutput
from .generate import config_for, generate_tokens, model_defaults
from .sampling import GENERATE_NO_OPS, GenerationConfig, Sampler

TRANSFORMERS_DEFAULT_MAX_LENGTH = 20  # transformers' default when neither max_length nor max_new_tokens is set


def generation_settings(model, input_len: int, generation_config=None, kwargs=None) -> GenerationConfig:
    """Merge call kwargs > generation_config= > model.generation_config > defaults into one config,
    with max_length turned into max_new_tokens for a prompt of `input_len` columns."""
    kwargs = {k: v for k, v in (kwargs or {}).items() if k not in GENERATE_NO_OPS}
    merged = dict(model_defaults(model))
    if generation_config is not None:
        if isinstance(generation_config, dict):
            generation_config = GenerationConfig.from_dict(generation_config)
        if not isinstance(generation_config, GenerationConfig):
            raise InputError(f"generation_config: expected a llamacpu.GenerationConfig, got "
                             f"{type(generation_config).__name__}")
        merged.update(generation_config.to_diff_dict())
    merged.update(kwargs)
    explicit_new = "max_new_tokens" in merged and merged["max_new_tokens"] is not None
    if not explicit_new:
        max_length = merged.get("max_length") or TRANSFORMERS_DEFAULT_MAX_LENGTH
        merged["max_new_tokens"] = max(0, int(max_length) - input_len)
    config = config_for(model, merged)
    if config.num_return_sequences > 1 and config.num_beams == 1 and not config.do_sample:
        raise InputError("num_return_sequences > 1 needs do_sample=True or num_beams >= num_return_sequences "
                         "(greedy decoding gives one sequence per prompt, as in transformers)")
    if config.num_beams > 1 and config.num_return_sequences > config.num_beams:
        raise InputError(f"num_return_sequences ({config.num_return_sequences}) must be <= num_beams "
                         f"({config.num_beams})")
    return config


def generate(model, input_ids, attention_mask=None, streamer=None, tokenizer=None, generation_config=None,
             json_schema=None, regex: str | None = None, grammar: str | None = None, **kwargs):
    """transformers' generate(): -> int64 [B * num_return_sequences, T + new], or a
    GenerateDecoderOnlyOutput / GenerateBeamDecoderOnlyOutput with return_dict_in_generate=True.
    json_schema (a dict) / regex / grammar (Lark, llguidance's dialect): every row's new tokens follow it
    (llamacpu.generation.structured; needs tokenizer= and the llguidance package); a row ends when its
    text is complete."""
    from ..model.inputs import as_batch

    ids, mask = as_batch(input_ids, attention_mask, model.config.vocab_size)
    config = generation_settings(model, ids.shape[1], generation_config, kwargs)
    if config.stop_strings and tokenizer is None:
        raise InputError("stop_strings need the tokenizer: generate(..., stop_strings=[...], tokenizer=tok)")
    constrained = any(g is not None for g in (json_schema, regex, grammar))
    if constrained:
        if tokenizer is None:
            raise InputError("json_schema / regex / grammar need the tokenizer: generate(..., tokenizer=tok)")
        if config.num_beams > 1 or config.output_scores or config.output_logits:
            raise UnsupportedError("structured output (json_schema / regex / grammar) samples row by row: it "
                                   "cannot be combined with num_beams > 1, output_scores or output_logits")
    if config.num_beams > 1:
        if streamer is not None or config.stop_strings or config.do_sample:
            raise UnsupportedError("beam search in llamacpu is deterministic and unstreamed: num_beams > 1 "
                                   "cannot be combined with do_sample=True, streamer= or stop_strings")
        from .beam_search import beam_search

        return beam_search(model, ids, mask, config)
    if config.num_return_sequences > 1:  # sampling: each prompt repeated, rows drawn independently
        ids = np.repeat(ids, config.num_return_sequences, axis=0)
        mask = np.repeat(mask, config.num_return_sequences, axis=0)
    constraints = None
    if constrained:  # one grammar state per row, built after the rows are repeated
        from .structured import Constraint, cached_ll_tokenizer

        lt = cached_ll_tokenizer(tokenizer, model.config.vocab_size, config.eos_token_id)
        constraints = [Constraint(lt, json_schema=json_schema, regex=regex, lark=grammar) for _ in range(len(ids))]
    sampler = Sampler(config)
    # a returned cache must be the call's own, not the model's shared static one
    cache = model.new_cache(ids.shape[0]) if config.return_dict_in_generate else None
    columns, scores, logits = [ids], [], []
    if streamer is not None:
        streamer.put(ids)
    try:
        for nxt in generate_tokens(model, ids, mask, config, cache=cache, tokenizer=tokenizer, sampler=sampler,
                                   constraints=constraints):
            columns.append(nxt[:, None])
            if config.output_scores:
                scores.append(sampler.last_scores.astype(np.float32))
            if config.output_logits:
                logits.append(np.array(sampler.last_logits, np.float32))
            if streamer is not None:
                streamer.put(nxt)
    finally:
        if streamer is not None:
            streamer.end()
    sequences = np.concatenate(columns, axis=1)
    if not config.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=tuple(scores) if config.output_scores else None,
                                     logits=tuple(logits) if config.output_logits else None, cache=cache)
