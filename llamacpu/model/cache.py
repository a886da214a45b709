"""The KV cache: preallocated once per (batch, max_context), reused across calls (transformers'
"static" cache). Slot j of row b holds the key/value of the j-th column fed for that row; `valid`
marks which slots hold real tokens (left padding leaves zeros), and `seen` counts the real tokens of
each row, which is the RoPE position of its next token.
"""
from __future__ import annotations

import numba
import numpy as np

from ..backends import CPUBackend
from ..config import LlamaConfig
from ..errors import InputError
from ..limits import check_allocation
from .rope_scaling import RopeFrequencies


class KVCache:
    def __init__(self, config: LlamaConfig, batch: int, max_len: int, backend=None):
        backend = backend or CPUBackend()
        L, KV, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        need = 2 * L * batch * KV * max_len * hd * 4 + numba.config.NUMBA_NUM_THREADS * max_len * 4
        # zero pages are mapped lazily, but RLIMIT_AS counts them all at once: check before allocating
        check_allocation(need, f"a KV cache for {batch} x {max_len} tokens", InputError,
                         "pass a smaller max_context", lazy=True)
        # zero pages are mapped lazily on the CPU: a long context costs memory only as it fills
        self.k = backend.zeros((L, batch, KV, max_len, hd))  # [layer, batch, kv_head, slot, head_dim]
        self.v = backend.zeros((L, batch, KV, max_len, hd))
        self.valid = np.zeros((batch, max_len), np.uint8)  # [batch, slot]: 1 = a real token (host)
        self.valid_dev = backend.upload(self.valid)  # the same on the backend's device
        self.seen = np.zeros(batch, np.int64)  # [batch]: real tokens so far = next RoPE position
        self.scores = backend.zeros((numba.config.NUMBA_NUM_THREADS, max_len))  # attention scratch
        self.backend = backend
        self.rope = RopeFrequencies(config)
        self.batch, self.max_len = batch, max_len
        self.length = 0  # slots used (the same for every row)

    def append(self, mask: np.ndarray) -> None:
        """Claim the next T slots for a [B, T] chunk whose real tokens `mask` marks."""
        T = mask.shape[1]
        self.check_room(T)
        self.valid[:, self.length:self.length + T] = mask
        self.seen += mask.sum(axis=1, dtype=np.int64)
        self.length += T
        self._sync()

    def _sync(self):
        if self.valid_dev is not self.valid:
            self.valid_dev = self.backend.upload(self.valid)

    def reset(self):
        self.valid[:] = 0
        self._sync()
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
        self._sync()

    def check_room(self, n_new: int):
        if self.length + n_new > self.max_len:
            raise InputError(f"sequence of {self.length + n_new} tokens exceeds the context of {self.max_len} "
                             f"(from_pretrained(..., max_context=N) sets it)")

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes
