"""The CPU backend: NumPy arrays and the Numba kernels of `llamacpu.kernels`."""
from __future__ import annotations

import numpy as np

from ..kernels.attention import attention, attention_serial
from ..kernels.rmsnorm import rmsnorm, rmsnorm_serial
from ..kernels.rope import rope, rope_serial
from ..kernels.swiglu import swiglu, swiglu_serial
from .base import Backend

# Below this much work (multiply-adds) a kernel runs on the calling thread: a parallel launch costs
# tens of microseconds with the workqueue layer, more than a decode token's norm, RoPE or SwiGLU.
SERIAL_WORK = 1 << 16


class CPUBackend(Backend):
    name = "cpu"

    # ---- memory --------------------------------------------------------------------------------------
    def zeros(self, shape, dtype=np.float32):
        return np.zeros(shape, dtype)

    def upload(self, host: np.ndarray):
        """Host array -> backend array (here: the same array)."""
        return host

    def to_host(self, a) -> np.ndarray:
        return a

    def prepare_weights(self, weights):
        """LlamaWeights as loaded -> the weights this backend computes with (here: unchanged)."""
        return weights

    # ---- the kernels the forward pass calls ---------------------------------------------------------------
    def embed(self, weight, ids: np.ndarray, out) -> None:
        out[:] = weight.rows(ids)

    def rmsnorm(self, x, weight, eps, out):  # x [N, D], weight [D] -> out [N, D]
        (rmsnorm_serial if x.size < SERIAL_WORK else rmsnorm)(x, weight, eps, out)

    def rope(self, x, positions, inv_freq):  # x [N, heads, hd] in place, positions [N], inv_freq [hd/2]
        (rope_serial if x.size < SERIAL_WORK else rope)(x, positions, inv_freq)

    def swiglu(self, gate, up, out):  # gate, up [N, I] -> out [N, I]
        (swiglu_serial if gate.size < SERIAL_WORK else swiglu)(gate, up, out)

    def store_kv(self, k_cache, v_cache, k, v, start: int) -> None:
        """k, v [B, T, KV, hd] -> cache [B, KV, S, hd] at slots start .. start+T."""
        T = k.shape[1]
        k_cache[:, :, start:start + T] = k.transpose(0, 2, 1, 3)
        v_cache[:, :, start:start + T] = v.transpose(0, 2, 1, 3)

    def attention(self, q, k_cache, v_cache, valid, start, scale, out, scratch) -> None:
        work = q.size * (start + q.shape[1])  # query elements x slots seen (at most)
        (attention_serial if work < SERIAL_WORK else attention)(q, k_cache, v_cache, valid, start, scale, out, scratch)

    def add(self, x, y) -> None:
        x += y

    def add_bias(self, out, bias) -> None:
        out += bias
