"""OpenAI-shaped requests and responses over the engine, for in-process use and for the HTTP server.

    from llamacpu.serving import Service
    svc = Service.from_pretrained("path/to/model")               # or Service(model, tokenizer)
    svc.create_chat_completion([{"role": "user", "content": "Hi"}], max_tokens=32)
    for chunk in svc.create_chat_completion(messages, stream=True): ...
    svc.create_completion("Once upon a time", max_tokens=16, logprobs=2)
    svc.create_embedding(["a", "b"])

The dicts are what the OpenAI API returns (llama-cpp-python's `Llama.create_chat_completion` returns the
same shapes), so an app can switch between `llamacpu serve` and in-process use without rewriting.
Every method validates its arguments first and raises `InputError` (HTTP 400) with the parameter's name.
"""
from __future__ import annotations

import base64
import functools
import json
import math
import time
import uuid

import numpy as np

from ..errors import InputError
from .engine import Engine, collect

MAX_N = 16
MAX_STOPS = 4


class ParamError(InputError):
    """A request parameter is invalid; `param` names it (the OpenAI error body's "param")."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param}: {message}")
        self.param = param


class ModelNotFound(InputError):
    """The request names a model this server does not serve (HTTP 404)."""


class Service:
    """One model with its engine: OpenAI's completions, chat completions and embeddings."""

    def __init__(self, model, tokenizer, name: str | None = None, **engine_kwargs):
        self.model, self.tokenizer = model, tokenizer
        self.name = name or getattr(model, "name_or_path", "llamacpu")
        self.engine = Engine(model, tokenizer, **engine_kwargs)
        self.created = int(time.time())

    @classmethod
    def from_pretrained(cls, path, name: str | None = None, slots: int = 8, context: int | None = None,
                        max_queue: int = 64, **load_kwargs):
        from ..hub import resolve_model
        from ..model.causal_lm import LlamaForCausalLM
        from ..tokenizer.auto import AutoTokenizer

        local = resolve_model(str(path))
        model = LlamaForCausalLM.from_pretrained(local, max_context=context, **load_kwargs)
        tok = AutoTokenizer.from_pretrained(local)
        return cls(model, tok, name=name or str(path), slots=slots, context=context, max_queue=max_queue)

    def close(self):
        self.engine.close()

    # ---- the endpoints, in-process ---------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.name, "object": "model", "created": self.created,
                                            "owned_by": "llamacpu"}]}

    def create_completion(self, prompt, stream: bool = False, **params):
        job = self.start("completion", {"prompt": prompt, "stream": stream, **params})
        return job.chunks() if stream else job.response()

    def create_chat_completion(self, messages, stream: bool = False, **params):
        job = self.start("chat.completion", {"messages": messages, "stream": stream, **params})
        return job.chunks() if stream else job.response()

    def create_embedding(self, input, model: str | None = None, **params) -> dict:
        self.check_model(model)
        unknown = set(params) - {"encoding_format", "user", "dimensions"}
        if unknown:
            raise ParamError(sorted(unknown)[0], "unknown parameter")
        encoding = params.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise ParamError("encoding_format", "expected 'float' or 'base64'")
        texts = [input] if isinstance(input, str) else input
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t for t in texts):
            raise ParamError("input", "expected a non-empty string or a list of them")
        if len(texts) > 256:
            raise ParamError("input", "at most 256 texts per request")
        from ..model.pooling import embed

        n_tokens = sum(len(self.tokenizer.encode(t)) for t in texts)
        vectors = embed(self.model, self.tokenizer, texts, pooling="mean", normalize=True)

        def encoded(v):  # base64: the float32 little-endian bytes, as OpenAI sends them
            return v.tolist() if encoding == "float" else base64.b64encode(v.astype("<f4").tobytes()).decode()

        return {"object": "list", "model": self.name,
                "data": [{"object": "embedding", "index": i, "embedding": encoded(v)} for i, v in enumerate(vectors)],
                "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}

    # ---- shared by the in-process methods and the server ----------------------------------------------
    def check_model(self, model) -> None:
        if model is not None and model != self.name:
            raise ModelNotFound(f"The model '{model}' does not exist (this server serves '{self.name}')")

    @functools.lru_cache(maxsize=65536)
    def token_text(self, token: int) -> str:
        """A token's text as it reads mid-sentence (with its leading space: SentencePiece drops that when
        a piece is decoded alone), for logprobs. Decoded after a newline, which is then removed."""
        tok = self.tokenizer
        anchor = (tok.encode("\n", add_special_tokens=False) or [None])[-1]
        if anchor is None:
            return tok.decode([token])
        base, both = tok.decode([anchor]), tok.decode([anchor, token])
        return both[len(base):] if both.startswith(base) else tok.decode([token])

    def start(self, kind: str, body: dict, loop=None) -> "Job":
        """Validate an OpenAI request body and submit its sequences. kind: "completion" | "chat.completion".
        With `loop` (an asyncio event loop, as the server does) read the Job in it with `achunks` / `aresponse`."""
        if not isinstance(body, dict):
            raise ParamError("body", "expected a JSON object")
        body = dict(body)
        self.check_model(body.pop("model", None))
        chat = kind == "chat.completion"
        if chat:
            prompts = [self._chat_prompt(body.pop("messages", None))]
        else:
            prompts = self._completion_prompts(body.pop("prompt", None))
        stream = _bool(body, "stream", False)
        stream_options = body.pop("stream_options", None) or {}
        n = _int(body, "n", 1, 1, MAX_N)
        room = self.engine.context - max(len(p) for p in prompts)
        if room < 1:
            raise ParamError("messages" if chat else "prompt",
                             f"the prompt has {self.engine.context - room} tokens, the context is {self.engine.context}")
        max_tokens = _int(body, "max_completion_tokens", None, 1, None) if chat else None
        max_tokens = _int(body, "max_tokens", max_tokens if max_tokens is not None else (min(room, 4096) if chat else 16), 1, None)
        if max_tokens > room:
            raise ParamError("max_tokens", f"prompt ({self.engine.context - room} tokens) + max_tokens ({max_tokens}) "
                                           f"exceeds the context of {self.engine.context} tokens")
        temperature = _num(body, "temperature", 1.0, 0.0, 2.0)
        top_p = _num(body, "top_p", 1.0, 0.0, 1.0)
        if top_p == 0:
            raise ParamError("top_p", "must be > 0")
        seed = _int(body, "seed", None, None, None)
        stop = body.pop("stop", None)
        stop = [stop] if isinstance(stop, str) else (stop or [])
        if not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(s, str) and s for s in stop):
            raise ParamError("stop", f"expected a non-empty string or a list of at most {MAX_STOPS}")
        for name in ("presence_penalty", "frequency_penalty"):
            if _num(body, name, 0.0, -2.0, 2.0) != 0:
                raise ParamError(name, "only 0 is supported (use repetition_penalty)")
        repetition_penalty = _num(body, "repetition_penalty", 1.0, 0.01, 10.0)
        top_k = _int(body, "top_k", 0, 0, None)
        min_p = _num(body, "min_p", 0.0, 0.0, 1.0)
        if chat:
            if not _bool(body, "logprobs", False):
                logprobs = None
                if body.get("top_logprobs") is not None:
                    raise ParamError("top_logprobs", "needs logprobs: true")
            else:
                logprobs = _int(body, "top_logprobs", 0, 0, 20)
            body.pop("top_logprobs", None)
        else:
            logprobs = _int(body, "logprobs", None, 0, 5)
            if _bool(body, "echo", False):
                raise ParamError("echo", "echo is not supported")
        constraint_args = self._response_format(body.pop("response_format", None))
        for ignored in ("user", "suffix", "best_of", "logit_bias", "metadata", "store", "parallel_tool_calls",
                        "service_tier", "tool_choice", "tools"):
            value = body.pop(ignored, None)
            if ignored in ("tools", "logit_bias", "suffix") and value:
                raise ParamError(ignored, "not supported")
            if ignored == "best_of" and value not in (None, 1):
                raise ParamError(ignored, "only 1 is supported")
        if body:
            raise ParamError(sorted(body)[0], "unknown parameter")
        gen = dict(max_new_tokens=max_tokens, do_sample=temperature > 0, temperature=temperature, top_p=top_p,
                   top_k=top_k, min_p=min_p, repetition_penalty=repetition_penalty, stop_strings=stop or None)
        job = Job(self, kind, stream, bool(stream_options.get("include_usage")) if isinstance(stream_options, dict) else False)
        try:
            for p_i, prompt in enumerate(prompts):
                for k in range(n):
                    s = None if seed is None else (seed + k) % 2**63
                    job.add(self.engine.submit(prompt, logprobs=logprobs, seed=s, **(constraint_args or {}),
                                               loop=loop, **gen),
                            len(prompt), first_of_prompt=k == 0)
        except BaseException:
            job.cancel()
            raise
        return job

    def _chat_prompt(self, messages) -> list[int]:
        if not isinstance(messages, list) or not messages:
            raise ParamError("messages", "expected a non-empty list of messages")
        clean = []
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant", "tool"):
                raise ParamError(f"messages[{i}]", "expected {'role': system|user|assistant, 'content': ...}")
            content = m.get("content")
            if isinstance(content, list):  # content parts: only text
                if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                           for p in content):
                    raise ParamError(f"messages[{i}].content", "only text parts are supported")
                content = "".join(p["text"] for p in content)
            if not isinstance(content, str):
                raise ParamError(f"messages[{i}].content", "expected a string")
            clean.append({"role": "system" if m["role"] == "developer" else m["role"], "content": content})
        try:
            ids = self.tokenizer.apply_chat_template(clean, add_generation_prompt=True)
        except InputError:
            raise
        except Exception as e:  # a template that refuses these messages (e.g. roles must alternate)
            raise ParamError("messages", f"the chat template refused them: {e}") from None
        return list(ids)

    def _completion_prompts(self, prompt) -> list[list[int]]:
        V = self.model.config.vocab_size
        if isinstance(prompt, str):
            prompt = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt or len(prompt) > MAX_N:
            raise ParamError("prompt", f"expected a string, a list of up to {MAX_N} strings, or token ids")
        out = []
        for p in prompt:
            if isinstance(p, str):
                ids = self.tokenizer.encode(p) or [self.tokenizer.bos_token_id]
            elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < V for t in p):
                ids = list(p)
            else:
                raise ParamError("prompt", f"expected strings or lists of token ids in [0, {V})")
            out.append([int(t) for t in ids])
        return out

    def _response_format(self, fmt):
        if fmt is None:
            return None
        if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
            raise ParamError("response_format", "expected {'type': 'text' | 'json_object' | 'json_schema'}")
        if fmt["type"] == "text":
            return None
        if fmt["type"] == "json_object":
            return {"json_schema": {"type": "object"}}
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ParamError("response_format.json_schema", "expected {'name': ..., 'schema': {...}}")
        return {"json_schema": spec.get("schema") or {"type": "object"}}


class Job:
    """The requests of one API call (n choices per prompt) and their OpenAI-shaped output."""

    def __init__(self, service: Service, kind: str, stream: bool, include_usage: bool):
        self.service, self.kind, self.stream, self.include_usage = service, kind, stream, include_usage
        self.requests, self.prompt_tokens = [], 0
        self.id = ("chatcmpl-" if kind == "chat.completion" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def add(self, request, prompt_tokens: int, first_of_prompt: bool):
        self.requests.append(request)
        if first_of_prompt:
            self.prompt_tokens += prompt_tokens

    def cancel(self):
        for r in self.requests:
            r.cancel()

    def usage(self) -> dict:
        done = sum(r.usage.completion_tokens for r in self.requests)
        cached = sum(r.usage.cached_tokens for r in self.requests)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done, "prompt_tokens_details": {"cached_tokens": cached}}

    # ---- whole responses ----------------------------------------------------------------------------
    def response(self) -> dict:
        """Blocking: wait for every choice."""
        return self.build([collect(r) for r in self.requests])

    async def aresponse(self) -> dict:
        results = []
        for r in self.requests:
            results.append(collect([ev async for ev in r]))
        return self.build(results)

    def build(self, results) -> dict:
        for res in results:
            if res["finish_reason"] == "error":
                raise RuntimeError(res["error"])
        chat = self.kind == "chat.completion"
        choices = []
        for i, res in enumerate(results):
            c = {"index": i, "finish_reason": res["finish_reason"],
                 "logprobs": self._logprobs(res["logprobs"]) if self.requests[i].logprobs is not None else None}
            if chat:
                c["message"] = {"role": "assistant", "content": res["text"]}
            else:
                c["text"] = res["text"]
            choices.append(c)
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.service.name,
                "choices": choices, "usage": self.usage()}

    # ---- streaming ----------------------------------------------------------------------------------
    def chunks(self):
        """Blocking generator of chunk dicts (choices interleave by index when n > 1)."""
        try:
            if self.kind == "chat.completion":
                for i in range(len(self.requests)):
                    yield self._chunk(i, None, role=True)
            for i, r in enumerate(self.requests):  # requests run concurrently; this reads them in turn
                for ev in r:
                    if ev.finish_reason == "error":
                        raise RuntimeError(ev.error)
                    yield self._chunk(i, ev)
            if self.include_usage:
                yield {**self._base(), "choices": [], "usage": self.usage()}
        finally:
            self.cancel()

    async def achunks(self):
        """The same for an event loop (the server): chunks as soon as any choice produces them."""
        import asyncio

        try:
            if self.kind == "chat.completion":
                for i in range(len(self.requests)):
                    yield self._chunk(i, None, role=True)
            if len(self.requests) == 1:
                async for ev in self.requests[0]:
                    if ev.finish_reason == "error":
                        raise RuntimeError(ev.error)
                    yield self._chunk(0, ev)
            else:
                merged: asyncio.Queue = asyncio.Queue()

                async def pump(i, r):
                    async for ev in r:
                        await merged.put((i, ev))

                tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(self.requests)]
                try:
                    for _ in range(sum(1 for _ in self.requests)):
                        while True:
                            i, ev = await merged.get()
                            if ev.finish_reason == "error":
                                raise RuntimeError(ev.error)
                            yield self._chunk(i, ev)
                            if ev.finish_reason is not None:
                                break
                finally:
                    for t in tasks:
                        t.cancel()
            if self.include_usage:
                yield {**self._base(), "choices": [], "usage": self.usage()}
        finally:
            self.cancel()

    def _base(self) -> dict:
        obj = "chat.completion.chunk" if self.kind == "chat.completion" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.service.name}

    def _chunk(self, i: int, ev, role: bool = False) -> dict:
        if role:
            return {**self._base(), "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                  "logprobs": None, "finish_reason": None}]}
        lp = None
        if self.requests[i].logprobs is not None and ev.token is not None:
            lp = self._logprobs([(ev.token, ev.logprob, ev.top_logprobs)])
        finish = ev.finish_reason
        if self.kind == "chat.completion":
            choice = {"index": i, "delta": {"content": ev.text} if ev.text or not finish else {},
                      "logprobs": lp, "finish_reason": finish}
        else:
            choice = {"index": i, "text": ev.text, "logprobs": lp, "finish_reason": finish}
        return {**self._base(), "choices": [choice]}

    def _logprobs(self, entries) -> dict:
        text = self.service.token_text

        if self.kind == "chat.completion":
            content = []
            for t, lp, top in entries:
                s = text(t)
                content.append({"token": s, "logprob": lp, "bytes": list(s.encode()),
                                "top_logprobs": [{"token": text(a), "logprob": b, "bytes": list(text(a).encode())}
                                                 for a, b in (top or [])]})
            return {"content": content}
        return {"tokens": [text(t) for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [{text(a): b for a, b in (top or [])} for _, _, top in entries],
                "text_offset": list(np.cumsum([0] + [len(text(t)) for t, _, _ in entries[:-1]]).tolist())}


# ---- argument checks ---------------------------------------------------------------------------------

def _pop(body, name, default):
    v = body.pop(name, None)
    return default if v is None else v


def _int(body, name, default, lo, hi):
    v = _pop(body, name, default)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ParamError(name, f"expected an integer{'' if lo is None else f' >= {lo}'}{'' if hi is None else f' and <= {hi}'}, got {v!r}")
    return v


def _num(body, name, default, lo, hi):
    v = _pop(body, name, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
        raise ParamError(name, f"expected a number in [{lo}, {hi}], got {v!r}")
    return float(v)


def _bool(body, name, default):
    v = _pop(body, name, default)
    if not isinstance(v, bool):
        raise ParamError(name, f"expected true or false, got {v!r}")
    return v


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
