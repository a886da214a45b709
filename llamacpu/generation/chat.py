"""Multi-turn chat that reuses the KV cache.

Each turn renders the whole conversation with the chat template, finds how many leading tokens the
cache already holds (the shared prefix: system prompt, earlier turns), drops the rest, and feeds only
the new tokens. So turn n costs its own tokens, not the whole history again.

When the conversation no longer fits the cache (the prompt plus room for a reply), the oldest turns
are dropped, the system prompt kept: llama.cpp's context shift, done per turn so that the template is
never cut mid-message. `dropped_turns` says how many went for the last message.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..errors import InputError
from .stream import TextGeneration

ROLES = ("system", "user", "assistant")
MAX_SAVED_BYTES = 16 << 20  # a saved conversation larger than this is not one we wrote


class ChatSession:
    def __init__(self, model, tokenizer, system: str | None = None, **generation_kwargs):
        self.model, self.tokenizer = model, tokenizer
        self.system = system
        self.generation_kwargs = generation_kwargs
        self.cache = model.new_cache(1)
        self.cached_ids: list[int] = []  # the tokens whose keys/values the cache holds, in order
        self.messages: list[dict] = []
        self.runner = TextGeneration(model, tokenizer)
        self.reused_tokens = 0  # of the last turn's prompt, how many came from the cache
        self.prefilled_tokens = 0  # ... and how many were computed
        self.dropped_turns = 0  # turns the last message pushed out of the context
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str):
        """Add a user message and stream the reply's pieces. The turn joins the history when the reply
        completes, or when the caller stops it after some of it was said (Ctrl-C: what was said so far
        is kept); an interrupt or error before the first piece leaves the history as it was. Each
        state change is one assignment, and what the cache holds is only trusted up to `cached_ids`,
        so an interrupt at any point leaves a session whose next turn works."""
        if not isinstance(text, str):
            raise InputError(f"chat message: expected a string, got {type(text).__name__}")
        messages, ids, max_new, self.dropped_turns = self._fit_context(
            self.messages + [{"role": "user", "content": text}])
        # the cache may hold more than cached_ids says (an interrupted step), never less
        keep = min(_common_prefix(self.cached_ids, ids), self.cache.length)
        keep = min(keep, len(ids) - 1)  # the last prompt token is always fed: its logits start the reply
        self.cached_ids = self.cached_ids[:keep]
        self.cache.truncate(keep)
        self.reused_tokens, self.prefilled_tokens = keep, len(ids) - keep
        reply = []
        complete = False
        try:
            for piece in self.runner.stream(ids[keep:], cache=self.cache, history=[ids[:keep]], context_ids=ids,
                                            **{**self.generation_kwargs, "max_new_tokens": max_new}):
                reply.append(piece)
                yield piece
            complete = True
        finally:
            if complete:
                # the cache now holds the prompt and every reply token but the last (never fed back)
                self.cached_ids = list(ids) + self.runner.token_ids[:-1]
            if reply or complete:
                self.messages = messages + [{"role": "assistant", "content": "".join(reply)}]

    def _fit_context(self, messages: list[dict]) -> tuple[list[dict], list[int], int, int]:
        """Render the conversation, dropping the oldest user/assistant turns until the prompt leaves
        room for a reply: max_new_tokens, or a quarter of the cache when that is larger. -> (the messages
        kept, their ids, the reply's token budget, turns dropped). Refuses when even the last message does
        not fit. Works on a copy: the session's history changes only when the turn joins it."""
        messages = list(messages)
        room = self.cache.max_len
        want = self.generation_kwargs.get("max_new_tokens") or 20
        reserve = max(1, min(want, room // 4))
        first = 1 if messages and messages[0]["role"] == "system" else 0
        dropped = 0
        while True:
            ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
            if len(ids) + reserve <= room:
                return messages, ids, min(want, room - len(ids)), dropped
            if len(messages) - first <= 1:  # only the new message is left
                raise InputError(f"this message needs {len(ids)} tokens{' with the system prompt' if first else ''} "
                                 f"and a reply {reserve} more, but the context holds {room}: use a longer context "
                                 f"(max_context, or -c on the command line) or a shorter message")
            # a turn: a user message and what answered it (an interrupted turn may lack the answer)
            end = first + 1
            while end < len(messages) - 1 and messages[end]["role"] != "user":
                end += 1
            del messages[first:end]
            dropped += 1

    def save(self, path) -> Path:
        """Write the conversation as JSON (to a temporary name, then renamed: a failure leaves any
        earlier file as it was)."""
        path = Path(path).expanduser()
        data = json.dumps({"format": "llamacpu-chat", "version": 1, "messages": self.messages},
                          ensure_ascii=False, indent=1)
        fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data + "\n")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
        return path

    def load(self, path) -> int:
        """Replace the conversation with one written by `save`; -> the number of messages. A system
        message in the file becomes the session's system prompt (none there: none kept)."""
        from ..limits import read_json

        path = Path(path).expanduser()
        data = read_json(path, InputError, "saved conversation", expect=None, max_bytes=MAX_SAVED_BYTES)
        messages = data.get("messages") if isinstance(data, dict) else None
        if (not isinstance(messages, list)
                or not all(isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
                           for m in messages)
                or any(m["role"] == "system" for m in messages[1:])):
            raise InputError(f"{path}: not a saved conversation (expected {{\"messages\": [{{\"role\": "
                             f"\"user\", \"content\": \"...\"}}, ...]}})")
        self.messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        self.system = self.messages[0]["content"] if self.messages and self.messages[0]["role"] == "system" else None
        return len(self.messages)

    @property
    def finish_reason(self) -> str | None:
        """Why the last reply ended: "stop", "length" (the token limit), None (interrupted)."""
        return self.runner.finish_reason

    @property
    def stats(self):
        return self.runner.stats


def _common_prefix(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
