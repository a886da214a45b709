"""Stop strings: a row ends once its generated text contains one of them.

Text, not token ids, is what users mean by a stop string (it may span several tokens or end inside
one), so each row's new tokens are decoded incrementally and searched; only the tail that could
hold a new match is searched each step.
"""
from __future__ import annotations

import numpy as np

from ..tokenizer.streaming import IncrementalDecoder


class StopStrings:
    def __init__(self, stop_strings: list[str], tokenizer, batch: int):
        self.stops = list(stop_strings)
        self.longest = max(len(s) for s in self.stops)
        self.decoders = [IncrementalDecoder(tokenizer, skip_special_tokens=False) for _ in range(batch)]
        self.text = [""] * batch

    def update(self, tokens: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Feed one token per row; -> bool [B], rows whose text now contains a stop string."""
        hit = np.zeros(len(tokens), bool)
        for b, tok in enumerate(tokens):
            if done[b]:
                continue
            piece = self.decoders[b].push(int(tok))
            if piece:
                window = self.text[b][-(self.longest - 1):] if self.longest > 1 else ""
                self.text[b] += piece
                hit[b] = any(s in window + piece for s in self.stops)
        return hit


def find_stop(text: str, stop_strings) -> int | None:
    """End index of the first stop string in text (the earliest to end), or None."""
    best = None
    for s in stop_strings or []:
        i = text.find(s)
        if i >= 0 and (best is None or i + len(s) < best):
            best = i + len(s)
    return best


def cut_at_stop(text: str, stop_strings) -> str:
    """The text up to and including the first stop string."""
    end = find_stop(text, stop_strings)
    return text if end is None else text[:end]
