"""Streaming text out of generation, for terminals and for Python apps embedding the engine.

    for piece in TextGeneration(model, tokenizer).stream(ids, max_new_tokens=64):
        print(piece, end="", flush=True)

Pieces never split a UTF-8 character, join to exactly the decoded continuation, and stop exactly at
(and including) the first stop string. `TextStreamer` is the callback form transformers users know:
`model.generate(ids, streamer=TextStreamer(tokenizer))` prints as it goes.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import InputError
from ..tokenizer.streaming import IncrementalDecoder
from .generate import generate_tokens, resolve_config
from .stopping import cut_at_stop, find_stop


@dataclass
class Stats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prompt_seconds: float = 0.0  # prefill and the first token: time to first token
    gen_seconds: float = 0.0  # the remaining decode steps

    @property
    def prompt_tps(self) -> float:
        return self.prompt_tokens / self.prompt_seconds if self.prompt_seconds else 0.0

    @property
    def gen_tps(self) -> float:
        return (self.new_tokens - 1) / self.gen_seconds if self.gen_seconds and self.new_tokens > 1 else 0.0


class TextGeneration:
    """One model + tokenizer, generating text for a single prompt at a time."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.stats = Stats()
        self.token_ids: list[int] = []  # the ids of the last run's continuation
        self.finish_reason: str | None = None  # "stop" (end of text, stop string), "length", None (interrupted)

    def stream(self, input_ids, cache=None, history=None, context_ids=None, **kwargs) -> Iterator[str]:
        """Yield text pieces of the continuation of `input_ids` (a list of ids or a [1, T] array).
        `cache`/`history`: continue a cached prefix (chat). `context_ids`: ids the continuation follows
        for decoding purposes (default input_ids), so the first piece gets its leading space right."""
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1) if len(input_ids) else None
        if ids is None:
            raise InputError("input_ids: empty prompt (give at least the BOS token)")
        config = resolve_config(self.model, kwargs)
        eos = set(config.eos_token_id or [])
        decoder = IncrementalDecoder(self.tokenizer, skip_special_tokens=True)
        for t in (context_ids if context_ids is not None else ids[0]):  # prime: the text so far is not re-emitted
            decoder.push(int(t))
        self.stats = Stats(prompt_tokens=ids.shape[1])
        self.token_ids = []
        self.finish_reason = None
        text = ""
        t0 = time.perf_counter()
        tokens = generate_tokens(self.model, ids, None, config, cache=cache, tokenizer=self.tokenizer, history=history)
        try:
            for step, nxt in enumerate(tokens):
                now = time.perf_counter()
                if step == 0:
                    self.stats.prompt_seconds = now - t0
                else:
                    self.stats.gen_seconds = now - t0 - self.stats.prompt_seconds
                self.stats.new_tokens += 1
                tok = int(nxt[0])
                self.token_ids.append(tok)
                if tok in eos:
                    self.finish_reason = "stop"
                    break
                piece = decoder.push(tok)
                if piece and config.stop_strings:
                    end = find_stop(text + piece, config.stop_strings)
                    if end is not None:  # stop exactly after the stop string
                        self.finish_reason = "stop"
                        yield (text + piece)[len(text):end]
                        return
                if piece:
                    text += piece
                    yield piece
            if self.finish_reason is None:  # the loop ended: at the token limit, or a stop it saw first
                self.finish_reason = "length" if len(self.token_ids) >= config.max_new_tokens else "stop"
            tail = decoder.flush()
            if tail:
                yield cut_at_stop(text + tail, config.stop_strings)[len(text):]
        finally:
            tokens.close()


def stream(model, tokenizer, prompt: str, **kwargs) -> Iterator[str]:
    """Text in, text pieces out: the simplest way to embed the engine in an app."""
    ids = tokenizer.encode(prompt) or [tokenizer.bos_token_id]
    yield from TextGeneration(model, tokenizer).stream(ids, **kwargs)


class TextStreamer:
    """transformers' TextStreamer: pass as `generate(..., streamer=...)`; prints text as it decodes.
    Batch size 1. `skip_prompt=True` leaves the prompt out. Override `on_finalized_text` to send
    the text elsewhere than stdout."""

    def __init__(self, tokenizer, skip_prompt: bool = False, skip_special_tokens: bool = True, file=None):
        self.tokenizer, self.skip_prompt, self.file = tokenizer, skip_prompt, file
        self.decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
        self.next_is_prompt = True

    def put(self, value) -> None:
        ids = np.asarray(value).reshape(-1) if np.ndim(value) <= 1 else np.asarray(value)[0]
        if np.ndim(value) == 2 and np.shape(value)[0] > 1:
            raise InputError("TextStreamer supports batch size 1")
        prompt = self.next_is_prompt
        self.next_is_prompt = False
        text = "".join(self.decoder.push(int(t)) for t in ids)
        if text and not (prompt and self.skip_prompt):
            self.on_finalized_text(text, stream_end=False)

    def end(self) -> None:
        self.on_finalized_text(self.decoder.flush(), stream_end=True)
        self.next_is_prompt = True

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, end="" if not stream_end else "\n", flush=True, file=self.file or sys.stdout)
