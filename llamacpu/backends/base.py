"""`Backend`: the kernels the forward pass calls, by what they compute, with their shapes. The model
(`llamacpu.model.llama`) is written once against this; `CPUBackend` (NumPy + Numba) and `CUDABackend`
(numba.cuda) implement it on their device's arrays. N = tokens in the chunk (B * T), D = hidden size,
I = intermediate size, H / KV = query / key-value heads, hd = head dim, S = cache slots.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Backend(Protocol):
    name: str  # "cpu", "cuda"

    # ---- memory: every buffer of a forward pass is allocated through `zeros` -----------------------
    def zeros(self, shape, dtype=np.float32):
        """A zeroed array on the device."""
        raise NotImplementedError

    def upload(self, host: np.ndarray):
        """Host array -> device array (the CPU returns it unchanged)."""
        raise NotImplementedError

    def to_host(self, a) -> np.ndarray:
        """Device array -> host NumPy array."""
        raise NotImplementedError

    def prepare_weights(self, weights):
        """LlamaWeights as loaded -> the weights this backend computes with (e.g. copied to the GPU once)."""
        raise NotImplementedError

    # ---- the kernels ------------------------------------------------------------------------------
    def embed(self, weight, ids: np.ndarray, out) -> None:
        """out [N, D] = rows `ids` [N] of the embedding matrix [vocab, D]."""
        raise NotImplementedError

    def rmsnorm(self, x, weight, eps: float, out) -> None:
        """out [N, D] = x / sqrt(mean(x^2) + eps) * weight [D], row by row (x [N, D])."""
        raise NotImplementedError

    def rope(self, x, positions, inv_freq) -> None:
        """x [N, heads, hd] rotated in place (rotate-half RoPE) by positions [N] * inv_freq [hd/2]."""
        raise NotImplementedError

    def swiglu(self, gate, up, out) -> None:
        """out [N, I] = silu(gate) * up (gate, up [N, I]; out may be gate)."""
        raise NotImplementedError

    def store_kv(self, k_cache, v_cache, k, v, start: int) -> None:
        """k, v [B, T, KV, hd] -> k_cache, v_cache [B, KV, S, hd] at slots start .. start + T."""
        raise NotImplementedError

    def attention(self, q, k_cache, v_cache, valid, start: int, scale, out, scratch) -> None:
        """out [B, T, H, hd] = softmax(q k^T * scale, causal, masked by valid [B, S]) v for q [B, T, H, hd]
        against the cache's first start + T slots (grouped-query: H / KV query heads per kv head)."""
        raise NotImplementedError

    def add(self, x, y) -> None:
        """x += y (same shapes)."""
        raise NotImplementedError

    def add_bias(self, out, bias) -> None:
        """out [N, R] += bias [R]."""
        raise NotImplementedError

    # ---- written once for every backend ----------------------------------------------------------
    def linear(self, w, x, out, bias=None, role=None):
        """out [N, R] = x [N, C] @ W.T (+ bias [R]), W a `Weight` [R, C] on this device: its decode kernel
        (matvec) for one token, its prefill kernel (matmul) for several. With a `role` the kernel follows
        what the rows are, not how many share the call, so each row's bits do not depend on the others
        (the serving engine): "decode" (one new token per sequence, or logits) through the decode kernel,
        "prompt" through the prefill kernel (Weight.matmul_decode / matmul_prompt). Returns out."""
        if role == "decode":
            w.matmul_decode(x, out)
        elif role == "prompt":
            w.matmul_prompt(x, out)
        elif x.shape[0] == 1:
            w.matvec(x[0], out[0])
        else:
            w.matmul(x, out)
        if bias is not None:
            self.add_bias(out, bias)
        return out

    def linears(self, weights, x, outs, biases, role=None):
        """outs[i] [N, R_i] = x [N, C] @ weights[i].T (+ biases[i]) for matrices that share their input
        (q/k/v, gate/up): ONE kernel call where the weights' class offers `matmul_shared` and accepts them
        (same quantized format, decode-sized N or role "decode": the activations prepared once, one
        launch), else one `linear` each (mixed formats, prefill, dense weights). Returns outs."""
        shared = getattr(type(weights[0]), "matmul_shared", None)
        if (shared is None or role == "prompt"
                or not (shared(weights, x, outs, any_rows=True) if role == "decode" else shared(weights, x, outs))):
            for w, out, bias in zip(weights, outs, biases):
                self.linear(w, x, out, bias, role)
            return outs
        for out, bias in zip(outs, biases):
            if bias is not None:
                self.add_bias(out, bias)
        return outs
