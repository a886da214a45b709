"""The KV cache: preallocated once per (batch, max_context), reused across calls (transformers'
"static" cache). Slot j of row b holds the key/value of the j-th column fed for that row; `valid`
marks which slots hold real tokens (left padding leaves zeros), and `seen` counts the real tokens of
each row, which is the RoPE position of its next token.
"""
from __future__ import annotations

import numba
import numpy as np

from ..config import LlamaConfig
from ..errors import InputError
from .rope_scaling import RopeFrequencies


class KVCache:
    def __init__(self, config: LlamaConfig, batch: int, max_len: int):
        L, KV, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        # np.zeros maps untouched pages lazily: a long context costs memory only as it fills
        self.k = np.zeros((L, batch, KV, max_len, hd), np.float32)  # [layer, batch, kv_head, slot, head_dim]
        self.v = np.zeros((L, batch, KV, max_len, hd), np.float32)
        self.valid = np.zeros((batch, max_len), np.uint8)  # [batch, slot]: 1 = a real token
        self.seen = np.zeros(batch, np.int64)  # [batch]: real tokens so far = next RoPE position
        self.scores = np.zeros((numba.config.NUMBA_NUM_THREADS, max_len), np.float32)  # attention scratch
        self.rope = RopeFrequencies(config)
        self.batch, self.max_len = batch, max_len
        self.length = 0  # slots used (the same for every row)

    def reset(self):
        self.valid[:] = 0
        self.seen[:] = 0
        self.length = 0
        self.rope.reset()

    def truncate(self, length: int):
        """Forget everything after `length` slots (used to reuse a shared prefix, e.g. in chat)."""
        if not 0 <= length <= self.length:
            raise InputError(f"cannot truncate a cache of {self.length} slots to {length}")
        self.valid[:, length:] = 0
        self.seen[:] = self.valid[:, :length].sum(axis=1)
        self.length = length

    def check_room(self, n_new: int):
        if self.length + n_new > self.max_len:
            raise InputError(f"sequence of {self.length + n_new} tokens exceeds the context of {self.max_len} "
                             f"(from_pretrained(..., max_context=N) sets it)")

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
