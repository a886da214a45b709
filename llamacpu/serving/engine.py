"""The generation engine: one per model, shared by every caller (threads, asyncio tasks, the HTTP server).

    engine = Engine(model, tokenizer, slots=8, context=2048)
    req = engine.submit(tokenizer.encode("Once upon a time"), max_new_tokens=40, temperature=0)
    for ev in req:                 # or `async for ev in req` inside an event loop
        print(ev.text, end="")
    engine.close()

One background thread runs continuous batching: at each step it feeds every running sequence's next
token together with chunks of the prompts of sequences that are joining (at most `max_batch_tokens` a
step, so the running ones keep decoding while a long prompt is prefilled), samples each sequence's
token with that request's own sampler (its own seeded generator: no other request takes its draws),
and sends it to the caller. A request's numbers do not depend on its batch mates, on how its prompt was
chunked or on a reused prefix (serving/batch.py: every kernel is chosen by the role of a row, decode or
prompt, never by how many rows share the step; the LM head runs every row through the decode kernel),
so a seeded sample is the same alone or under load. The price, measured in bench/README.md "Serving":
decode rows through the decode kernel at any count, and chat history that was generated is recomputed
as prompt rather than reused. A finished or cancelled sequence leaves at the next step boundary
and its slot is free at once. Requests beyond the free slots wait in a queue of `max_queue`; beyond
that, `submit` refuses with `EngineBusy`.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, LlamacpuError
from ..generation.generate import resolve_config
from ..generation.sampling import Sampler
from ..generation.stopping import find_stop
from ..runtime import KERNEL_LOCK
from ..tokenizer.streaming import IncrementalDecoder
from .batch import SlotCache, check_model, forward_slots
from ..generation.structured import sample_allowed


class EngineBusy(LlamacpuError):
    """Every slot is taken and the waiting queue is full: try again later (HTTP 429)."""


class EngineClosed(LlamacpuError):
    """The engine was shut down."""


@dataclass
class Event:
    """One step of a request's output. `text` may be empty (a token that completes no character
    yet, or text held back because it could be the start of a stop string)."""

    text: str = ""
    token: int | None = None  # the sampled id (None on a closing event without a token)
    logprob: float | None = None  # log-probability of `token` under the model (raw logits)
    top_logprobs: list[tuple[int, float]] | None = None  # the k most likely ids and their log-probs
    finish_reason: str | None = None  # set on the last event: "stop", "length", "cancelled", "error"
    error: str | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys/values were reused from a slot (prefix reuse)


class Request:
    """A submitted generation. Iterate it (blocking, from a thread) or `async for` it (from the event
    loop it was submitted on) to get `Event`s; `cancel()` ends it and frees its slot."""

    _ids = itertools.count()

    def __init__(self, engine, prompt_ids, config, logprobs, constraint, loop):
        self.id = next(Request._ids)
        self.engine = engine
        self.prompt = [int(t) for t in prompt_ids]
        self.config = config
        self.logprobs = logprobs  # None, or how many top alternatives to report (0 = only the chosen)
        self.constraint = constraint  # structured output: .allowed(vocab) -> bool mask, .advance(tok), .done()
        self.usage = Usage(prompt_tokens=len(self.prompt))
        self.cancelled = False
        self.finished = False
        self.slot: int | None = None
        self.pending: list[int] = []  # ids to feed before the next sample (prompt rest, then the last token)
        self.decoding = False  # pending is the last sampled token (a decode row), not prompt
        self.sampler = Sampler(config)
        self.history = np.asarray(self.prompt, np.int64)  # for the repetition penalty
        self.eos = set(config.eos_token_id or [])
        self.decoder = IncrementalDecoder(engine.tokenizer, skip_special_tokens=True)
        for t in self.prompt[-8:]:  # prime: the first piece gets its leading space right
            self.decoder.push(t)
        self.text = ""  # generated text so far
        self.sent = 0  # how much of it was sent
        self._loop = loop
        self._q = asyncio.Queue() if loop is not None else queue.SimpleQueue()

    # ---- the caller's side -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop generating; the slot is freed at the next step boundary (the current step at most)."""
        if not self.finished:
            self.cancelled = True
            self.engine._wake()

    def __iter__(self):
        if self._loop is not None:
            raise InputError("this request was submitted from an event loop: use `async for`")
        while True:
            ev = self._q.get()
            yield ev
            if ev.finish_reason is not None:
                return

    async def __aiter__(self):
        if self._loop is None:
            raise InputError("this request was submitted without an event loop: iterate it with `for`")
        try:
            while True:
                ev = await self._q.get()
                yield ev
                if ev.finish_reason is not None:
                    return
        finally:
            self.cancel()  # the consumer left early (e.g. an HTTP client disconnected)

    def result(self) -> dict:
        """Wait for the end: {"text", "tokens", "finish_reason", "logprobs", "usage"} (blocking)."""
        return collect(self)

    # ---- the engine's side -------------------------------------------------------------------------
    def _emit(self, ev: Event) -> None:
        if ev.finish_reason is not None:
            self.finished = True
            self.engine.finish_counts[ev.finish_reason] += 1
        if self._loop is None:
            self._q.put(ev)
            return
        try:
            self._loop.call_soon_threadsafe(self._q.put_nowait, ev)
        except RuntimeError:  # the caller's event loop is gone: nobody listens any more
            self.cancelled = True


def collect(events) -> dict:
    text, tokens, logprobs, finish, error = [], [], [], None, None
    for ev in events:
        text.append(ev.text)
        if ev.token is not None:
            tokens.append(ev.token)
            logprobs.append((ev.token, ev.logprob, ev.top_logprobs))
        finish, error = ev.finish_reason, ev.error
    return {"text": "".join(text), "tokens": tokens, "finish_reason": finish, "logprobs": logprobs, "error": error}


class Engine:
    def __init__(self, model, tokenizer, slots: int = 8, context: int | None = None, max_queue: int = 64,
                 max_batch_tokens: int = 256, batch_invariant: bool = True):
        """batch_invariant=False: kernels chosen by the step's row count and generated tokens reused as a
        prefix (seeded samples then depend on the batch; see the module docstring and bench/README.md)."""
        check_model(model)
        for name, v in (("slots", slots), ("max_queue", max_queue), ("max_batch_tokens", max_batch_tokens)):
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "max_queue" else 1):
                raise InputError(f"{name}: expected a positive integer, got {v!r}")
        self.model, self.tokenizer = model, tokenizer
        self.context = int(min(context or model.max_context, model.max_context))
        self.batch_invariant = bool(batch_invariant)
        self.cache = SlotCache(model.config, slots, self.context, reuse_generated=not self.batch_invariant)
        self.max_queue, self.max_batch_tokens = max_queue, max_batch_tokens
        self._free = list(range(slots))  # free slot ids
        self._waiting: collections.deque[Request] = collections.deque()
        self._running: list[Request] = []  # touched by the loop thread only
        self._cv = threading.Condition()
        self._closed = False
        self._ll_tokenizer = None
        self.steps = 0  # forward passes run (for tests and stats)
        self.finish_counts = collections.Counter()  # requests ended, by finish reason
        self._thread = threading.Thread(target=self._loop, name="llamacpu-engine", daemon=True)
        self._thread.start()

    # ---- submitting ------------------------------------------------------------------------------------
    def submit(self, prompt_ids, logprobs: int | None = None, constraint=None, json_schema=None,
               regex: str | None = None, lark: str | None = None, loop: asyncio.AbstractEventLoop | None = None,
               **generation_kwargs) -> Request:
        """Queue a generation of `prompt_ids` (a list of ids). generation_kwargs: as generate()
        (max_new_tokens, do_sample, temperature, top_k, top_p, min_p, repetition_penalty, stop_strings,
        eos_token_id, seed). json_schema (a dict) / regex / lark: constrain the output to it (llguidance).
        Raises InputError for bad values or a prompt that does not fit the context,
        EngineBusy when the queue is full. With `loop` (an asyncio event loop; submit may be called from
        another thread) the request is read with `async for` in that loop, its events delivered through it."""
        config = resolve_config(self.model, generation_kwargs)
        ids = list(prompt_ids)
        if not ids or not all(isinstance(t, (int, np.integer)) and 0 <= t < self.model.config.vocab_size for t in ids):
            raise InputError(f"prompt: expected a non-empty list of token ids in [0, {self.model.config.vocab_size})")
        if len(ids) + max(config.max_new_tokens, 1) > self.context:
            raise InputError(f"prompt of {len(ids)} tokens + max_new_tokens {config.max_new_tokens} exceeds the "
                             f"context of {self.context} tokens")
        if logprobs is not None and (not isinstance(logprobs, int) or not 0 <= logprobs <= 20):
            raise InputError(f"logprobs: expected an integer in [0, 20], got {logprobs!r}")
        if constraint is None and (json_schema is not None or regex is not None or lark is not None):
            from ..generation.structured import Constraint

            constraint = Constraint(self.ll_tokenizer(), json_schema=json_schema, regex=regex, lark=lark)
        req = Request(self, ids, config, logprobs, constraint, loop)
        with self._cv:
            if self._closed:
                raise EngineClosed("the engine is closed")
            if len(self._waiting) >= self.max_queue + len(self._free):
                raise EngineBusy(f"all {self.cache.n_slots} slots are busy and {len(self._waiting)} requests wait")
            self._waiting.append(req)
            self._cv.notify()
        return req

    def ll_tokenizer(self):
        """llguidance's view of the vocabulary, built once per tokenizer (a second or two for a 50k
        vocabulary) and shared with model.generate; under structured.py's lock, not the engine's, so the
        running sequences keep decoding while the first structured request waits for it."""
        if self._ll_tokenizer is None:
            from ..generation.structured import cached_ll_tokenizer

            self._ll_tokenizer = cached_ll_tokenizer(self.tokenizer, self.model.config.vocab_size,
                                                     self.model.config.eos_token_ids)
        return self._ll_tokenizer

    def generate(self, prompt_ids, **kwargs) -> dict:
        """Submit and wait (blocking): see `Request.result`."""
        return self.submit(prompt_ids, **kwargs).result()

    def stats(self) -> dict:
        with self._cv:
            return {"slots": self.cache.n_slots, "slots_free": len(self._free), "waiting": len(self._waiting),
                    "context": self.context, "steps": self.steps, "finished": dict(self.finish_counts)}

    def close(self) -> None:
        """Stop the loop; waiting and running requests end with finish_reason "cancelled"."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _wake(self):
        with self._cv:
            self._cv.notify()

    # ---- the loop ----------------------------------------------------------------------------------------
    def _loop(self):
        while True:
            with self._cv:
                while not self._closed and not self._waiting and not self._running:
                    self._cv.wait()
                if self._closed:
                    break
            try:
                with self._cv:
                    self._drop_cancelled()
                    self._admit()
                if self._running:
                    self._step()
            except Exception as e:  # a bug here must not leave callers waiting forever: fail, keep serving
                for r in list(self._running):
                    self._finish(r, Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))
        with self._cv:
            for r in list(self._waiting) + self._running:
                r._emit(Event(finish_reason="cancelled"))
            self._waiting.clear()
            self._running.clear()

    def _drop_cancelled(self):
        for r in [r for r in self._waiting if r.cancelled]:
            self._waiting.remove(r)
            r._emit(Event(finish_reason="cancelled"))
        for r in [r for r in self._running if r.cancelled]:
            self._finish(r, Event(finish_reason="cancelled"))

    def _admit(self):
        """Waiting requests take free slots, each the one holding the longest prefix of its prompt."""
        while self._waiting and self._free:
            r = self._waiting.popleft()
            slot = max(self._free, key=lambda s: self.cache.common_prefix(s, r.prompt))
            keep = min(self.cache.common_prefix(slot, r.prompt), len(r.prompt) - 1)  # the last id is always fed
            self._free.remove(slot)
            self.cache.truncate(slot, keep)
            r.slot, r.pending, r.usage.cached_tokens = slot, r.prompt[keep:], keep
            self._running.append(r)

    def _finish(self, r: Request, ev: Event):
        if r in self._running:
            self._running.remove(r)
        if r.slot is not None:
            with self._cv:
                self._free.append(r.slot)
            r.slot = None
        r._emit(ev)

    def _step(self):
        """One forward pass: every decoding sequence's token, then prompt chunks within the budget."""
        budget = self.max_batch_tokens
        segments, fed = [], []
        n_decode = 0
        for r in sorted(self._running, key=lambda r: not r.decoding):  # decoding ones first
            n = min(len(r.pending), max(budget, 1 if r.decoding else 0))
            if n == 0:
                continue
            segments.append((r.slot, np.asarray(r.pending[:n], np.int64)))
            fed.append((r, n == len(r.pending)))
            n_decode += r.decoding
            r.pending = r.pending[n:]
            budget -= n
        try:
            hidden = forward_slots(self.model, self.cache, segments, n_decode, self.batch_invariant)
            rows = [i for i, (_, complete) in enumerate(fed) if complete]
            logits = self._logits(hidden[rows]) if rows else None
        except Exception as e:  # nothing a request does may kill the loop: fail this batch, keep serving
            for r, _ in fed:
                self._finish(r, Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))
            return
        self.steps += 1
        for j, i in enumerate(rows):
            r = fed[i][0]
            try:
                self._sample(r, logits[j])
            except Exception as e:
                self._finish(r, Event(finish_reason="error", error=f"{type(e).__name__}: {e}"))

    def _logits(self, hidden: np.ndarray) -> np.ndarray:
        """The LM head over hidden [n, D], every row through the decode kernel (batch-invariant)."""
        lm_head, ops = self.model.weights.lm_head, self.model.backend
        out = np.empty((hidden.shape[0], lm_head.shape[0]), np.float32)
        with KERNEL_LOCK:
            ops.linear(lm_head, np.ascontiguousarray(hidden, np.float32), out,
                       role="decode" if self.batch_invariant else None)
        return out

    def _sample(self, r: Request, logits: np.ndarray):
        draw = lambda z: r.sampler(z, [r.history])[0]  # noqa: E731  [1, vocab] -> id, the request's own sampler
        if r.constraint is not None:
            tok = sample_allowed(r.constraint, logits, draw)
        else:
            tok = int(draw(logits[None].astype(np.float32)))
        ev = Event(token=tok)
        if r.logprobs is not None:
            lp = logits.astype(np.float64) - logits.max()
            lp -= np.log(np.exp(lp).sum())
            ev.logprob = float(lp[tok])
            if r.logprobs:
                cand = np.argpartition(-lp, r.logprobs - 1)[:r.logprobs]  # the k best: a full sort of 49k ids costs ~6x more
                top = cand[np.lexsort((cand, -lp[cand]))]  # best first, ties by id
                ev.top_logprobs = [(int(t), float(lp[t])) for t in top]
        r.usage.completion_tokens += 1
        r.history = np.append(r.history, tok)
        stops = r.config.stop_strings
        if r.constraint is not None:
            r.constraint.advance(tok)
        if tok in r.eos:
            ev.text = r.text[r.sent:] + r.decoder.flush()
            ev.finish_reason = "stop"
            return self._finish(r, ev)
        r.text += r.decoder.push(tok)
        end = find_stop(r.text, stops) if stops else None
        if end is not None:  # OpenAI's rule: the stop string itself is not returned
            start = min(r.text.find(s) for s in stops if s in r.text)
            ev.text, ev.finish_reason = r.text[r.sent:start], "stop"
            return self._finish(r, ev)
        if r.constraint is not None and r.constraint.done():
            ev.text, ev.finish_reason = r.text[r.sent:] + r.decoder.flush(), "stop"
            return self._finish(r, ev)
        if r.usage.completion_tokens >= r.config.max_new_tokens or self.cache.length(r.slot) + 1 >= self.context:
            tail = r.decoder.flush()
            rest = r.text + tail
            end = find_stop(rest, stops) if stops else None
            ev.text = rest[r.sent:min(rest.find(s) for s in stops if s in rest)] if end is not None else rest[r.sent:]
            ev.finish_reason = "length" if end is None else "stop"
            return self._finish(r, ev)
        safe = len(r.text) - _held_back(r.text, stops)
        ev.text = r.text[r.sent:safe]
        r.sent = max(r.sent, safe)
        r.pending, r.decoding = [tok], True
        r._emit(ev)


def _held_back(text: str, stops) -> int:
    """How many trailing characters could be the start of a stop string (kept until it is decided)."""
    hold = 0
    for s in stops or ():
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold
