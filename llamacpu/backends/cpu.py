"""The CPU backend: NumPy arrays and the Numba kernels of `llamacpu.kernels`."""
from __future__ import annotations

import numpy as np

from ..kernels.attention import attention
from ..kernels.rmsnorm import rmsnorm
from ..kernels.rope import rope
from ..kernels.swiglu import swiglu


class CPUBackend:
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

    rmsnorm = staticmethod(rmsnorm)  # (x [N, D], weight [D], eps, out [N, D])
    rope = staticmethod(rope)  # (x [N, heads, hd] in place, positions [N], inv_freq [hd/2])
    swiglu = staticmethod(swiglu)  # (gate [N, I], up [N, I], out [N, I])

    def linear(self, w, x, out, bias=None):
        """out [N, R] = x [N, C] @ W.T (+ bias): decode kernel for one token, prefill kernel for several."""
        if x.shape[0] == 1:
            w.matvec(x[0], out[0])
        else:
            w.matmul(x, out)
        if bias is not None:
            out += bias
        return out

    def store_kv(self, k_cache, v_cache, k, v, start: int) -> None:
        """k, v [B, T, KV, hd] -> cache [B, KV, S, hd] at slots start .. start+T."""
        T = k.shape[1]
        k_cache[:, :, start:start + T] = k.transpose(0, 2, 1, 3)
        v_cache[:, :, start:start + T] = v.transpose(0, 2, 1, 3)

    def attention(self, q, k_cache, v_cache, valid, start, scale, out, scratch) -> None:
        attention(q, k_cache, v_cache, valid, start, scale, out, scratch)

    def add(self, x, y) -> None:
        x += y
