"""Multi-turn chat that reuses the KV cache.

Each turn renders the whole conversation with the chat template, finds how many leading tokens the
cache already holds (the shared prefix: system prompt, earlier turns), drops the rest, and feeds only
the new tokens. So turn n costs its own tokens, not the whole history again.
"""
from __future__ import annotations

from .stream import TextGeneration


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
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def send(self, text: str):
        """Add a user message and stream the reply's pieces; the reply joins the history (also when
        the caller stops early, e.g. on Ctrl-C: what was said so far is kept)."""
        self.messages.append({"role": "user", "content": text})
        ids = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
        keep = _common_prefix(self.cached_ids, ids)
        keep = min(keep, len(ids) - 1)  # the last prompt token is always fed: its logits start the reply
        self.cache.truncate(keep)
        self.cached_ids = self.cached_ids[:keep]
        self.reused_tokens, self.prefilled_tokens = keep, len(ids) - keep
        reply = []
        complete = False
        try:
            for piece in self.runner.stream(ids[keep:], cache=self.cache, history=[ids[:keep]], context_ids=ids,
                                            **self.generation_kwargs):
                reply.append(piece)
                yield piece
            complete = True
        finally:
            self.messages.append({"role": "assistant", "content": "".join(reply)})
            if complete:
                # the cache now holds the prompt and every reply token but the last (never fed back)
                self.cached_ids = list(ids) + self.runner.token_ids[:-1]
            else:  # interrupted mid-step: trust only what was cached before this turn
                self.cache.truncate(keep)

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
