"""Output objects with transformers' names and behaviour: attribute access, `o["logits"]`, `o[0]`,
`o.keys()`, `o.to_tuple()`. As in transformers, fields that are None are not keys and are skipped
by integer indexing and to_tuple(), so `model(ids, labels=y)[0]` is the loss and `model(ids)[0]` the
logits. Arrays are NumPy (float32) where transformers has torch tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np


class ModelOutput:
    """Base class: an ordered mapping of the fields that are not None."""

    @property
    def past_key_values(self):
        """transformers 4.x's name of `cache`."""
        return getattr(self, "cache", None)

    _extra: tuple = ()  # attributes kept for llamacpu's own callers but not keys (transformers has none)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if f.name not in self._extra and getattr(self, f.name) is not None]

    def values(self) -> list:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def get(self, key, default=None):
        return getattr(self, key) if key in self.keys() else default


@dataclass
class BaseModelOutputWithPast(ModelOutput):
    last_hidden_state: np.ndarray | None = None  # float32 [B, T, hidden]
    cache: Any = None  # the KVCache (transformers 5's name; past_key_values is an alias)
    hidden_states: tuple | None = None  # (L + 1) x float32 [B, T, hidden]: embeddings, layers, final norm
    attentions: tuple | None = None  # L x float32 [B, H, T, S]


@dataclass
class CausalLMOutputWithPast(ModelOutput):
    loss: float | None = None
    logits: np.ndarray | None = None  # float32 [B, T, vocab]
    cache: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    last_hidden_state: np.ndarray | None = None  # llamacpu extra (final-normed states), not a key
    _extra = ("last_hidden_state",)


@dataclass
class SequenceClassifierOutputWithPast(ModelOutput):
    loss: float | None = None
    logits: np.ndarray | None = None  # float32 [B, num_labels]
    cache: Any = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    last_hidden_state: np.ndarray | None = None
    _extra = ("last_hidden_state",)


@dataclass
class GenerateDecoderOnlyOutput(ModelOutput):
    """generate(..., return_dict_in_generate=True) for greedy search and sampling."""

    sequences: np.ndarray | None = None  # int64 [B * num_return_sequences, T + new]
    scores: tuple | None = None  # per step float32 [B', vocab], after the logits processors
    logits: tuple | None = None  # per step float32 [B', vocab], raw
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: Any = None  # transformers 5's name (4.x: past_key_values, an alias)


@dataclass
class GenerateBeamDecoderOnlyOutput(ModelOutput):
    """generate(..., num_beams=N, return_dict_in_generate=True)."""

    sequences: np.ndarray | None = None  # int64 [B * num_return_sequences, T + new]
    sequences_scores: np.ndarray | None = None  # float32 [B * num_return_sequences] (length-penalised)
    scores: tuple | None = None  # per step float32 [B * num_beams, vocab]: processed log-probabilities
    logits: tuple | None = None
    beam_indices: np.ndarray | None = None  # int64 [B * num_return_sequences, new]
    attentions: tuple | None = None
    hidden_states: tuple | None = None
    cache: Any = None  # transformers 5's name (4.x: past_key_values, an alias)
