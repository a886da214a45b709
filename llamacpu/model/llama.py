"""The Llama transformer [arXiv:2302.13971, arXiv:2307.09288], read top to bottom:

    x = embed(tokens)
    for each layer:
        h = RMSNorm(x);  q, k, v = h Wq, h Wk, h Wv;  q, k = RoPE(q, k)
        x = x + Attention(q, K_cache, V_cache) Wo               (grouped-query heads)
        h = RMSNorm(x);  x = x + (silu(h Wgate) * h Wup) Wdown   (SwiGLU)
    logits = RMSNorm(x) W_lm_head

Weights are `Weight` objects (any storage format); the kernels are in `llamacpu.kernels`; every
buffer a forward pass writes is allocated in `Workspace`, the KV cache in `KVCache`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..config import LlamaConfig
from ..errors import InputError
from ..kernels.attention import attention
from ..kernels.rmsnorm import rmsnorm
from ..kernels.rope import rope
from ..kernels.swiglu import swiglu
from .cache import KVCache
from .weights import Weight


@dataclass
class LayerWeights:
    attn_norm: np.ndarray  # float32 [hidden]
    wq: Weight  # [n_heads * head_dim, hidden]
    wk: Weight  # [n_kv_heads * head_dim, hidden]
    wv: Weight  # [n_kv_heads * head_dim, hidden]
    wo: Weight  # [hidden, n_heads * head_dim]
    mlp_norm: np.ndarray  # float32 [hidden]
    w_gate: Weight  # [intermediate, hidden]
    w_up: Weight  # [intermediate, hidden]
    w_down: Weight  # [hidden, intermediate]
    # optional biases (attention_bias / mlp_bias), float32, shaped like the matching output
    bq: np.ndarray | None = None
    bk: np.ndarray | None = None
    bv: np.ndarray | None = None
    bo: np.ndarray | None = None
    b_gate: np.ndarray | None = None
    b_up: np.ndarray | None = None
    b_down: np.ndarray | None = None


@dataclass
class LlamaWeights:
    embed: Weight  # [vocab, hidden]
    layers: list[LayerWeights]
    norm: np.ndarray  # float32 [hidden]
    lm_head: Weight | None = None  # [vocab, hidden]; the embedding itself when tied
    score: Weight | None = None  # [num_labels, hidden] (sequence classification)

    def matrices(self):
        """Every distinct weight matrix, each once (tied embeddings count once)."""
        seen, out = set(), []
        for w in [self.embed, self.lm_head, self.score] + [getattr(l, n) for l in self.layers
                                                           for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")]:
            if w is not None and id(w) not in seen:
                seen.add(id(w))
                out.append(w)
        return out

    @property
    def nbytes(self) -> int:
        small = self.norm.nbytes + sum(l.attn_norm.nbytes + l.mlp_norm.nbytes for l in self.layers)
        return sum(w.nbytes for w in self.matrices()) + small


class Workspace:
    """All activation buffers of a forward pass over up to `capacity` tokens, allocated here once
    and reused (views of the first n rows). Grows only when a longer chunk arrives."""

    def __init__(self, config: LlamaConfig, capacity: int):
        D, I = config.hidden_size, config.intermediate_size
        Q, KV = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        self.capacity = capacity
        self.x = np.zeros((capacity, D), np.float32)  # residual stream [tokens, hidden]
        self.h = np.zeros((capacity, D), np.float32)  # normed input of a sub-layer
        self.q = np.zeros((capacity, Q), np.float32)  # [tokens, n_heads * head_dim]
        self.k = np.zeros((capacity, KV), np.float32)  # [tokens, n_kv_heads * head_dim]
        self.v = np.zeros((capacity, KV), np.float32)
        self.att = np.zeros((capacity, Q), np.float32)  # attention output per head, concatenated
        self.gate = np.zeros((capacity, I), np.float32)  # [tokens, intermediate]
        self.up = np.zeros((capacity, I), np.float32)
        self.proj = np.zeros((capacity, D), np.float32)  # output of wo / w_down before the residual add


def linear(w: Weight, x: np.ndarray, out: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """out = x @ W.T (+ bias). One token: the decode matrix-vector kernel; several: matrix-matrix."""
    if x.shape[0] == 1:
        w.matvec(x[0], out[0])
    else:
        w.matmul(x, out)
    if bias is not None:
        out += bias
    return out


class LlamaCore:
    """The decoder stack over a KV cache. Subclasses add heads (`LlamaForCausalLM`, ...)."""

    prefill_chunk = 256  # tokens per row per forward chunk: bounds the workspace for long prompts

    def __init__(self, config: LlamaConfig, weights: LlamaWeights, max_context: int | None = None):
        self.config = config
        self.weights = weights
        self.max_context = int(max_context or config.default_max_context())
        if self.max_context <= 0:
            raise InputError(f"max_context must be positive, got {max_context}")
        self.scale = np.float32(1.0 / math.sqrt(config.head_dim))
        self._workspace: Workspace | None = None
        self._cache: KVCache | None = None

    # ---- the two allocation sites -------------------------------------------------------------------
    def workspace(self, n_tokens: int) -> Workspace:
        if self._workspace is None or self._workspace.capacity < n_tokens:
            self._workspace = Workspace(self.config, n_tokens)
        return self._workspace

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """A fresh preallocated KV cache (pass it as `past_key_values` to continue a sequence)."""
        return KVCache(self.config, batch, max_len or self.max_context)

    def static_cache(self, batch: int) -> KVCache:
        """The model's own cache, reused across calls while the batch size stays the same."""
        if self._cache is None or self._cache.batch != batch:
            self._cache = None  # free the old one before allocating
            self._cache = self.new_cache(batch)
        self._cache.reset()
        return self._cache

    # ---- the forward pass -------------------------------------------------------------------------------
    def decoder(self, input_ids: np.ndarray, attention_mask: np.ndarray, cache: KVCache,
                out_rows: str = "all") -> np.ndarray:
        """Run the stack over new tokens [B, T], appending them to `cache`. Returns the final-normed
        hidden states, float32 [B, T, hidden] (out_rows="all") or [B, hidden] for the last column."""
        batch, n_new = input_ids.shape
        cache.check_room(n_new)
        D = self.config.hidden_size
        result = np.empty((batch, n_new, D) if out_rows == "all" else (batch, D), np.float32)
        step = max(1, self.prefill_chunk)
        for c0 in range(0, n_new, step):
            c1 = min(n_new, c0 + step)
            h = self._chunk(input_ids[:, c0:c1], attention_mask[:, c0:c1], cache)  # [B, Tc, D]
            if out_rows == "all":
                result[:, c0:c1] = h
            elif c1 == n_new:
                result[:] = h[:, -1]
        return result

    def _chunk(self, ids: np.ndarray, mask: np.ndarray, cache: KVCache) -> np.ndarray:
        cfg = self.config
        B, T = ids.shape
        N = B * T
        H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        ws = self.workspace(N)
        start = cache.length

        # RoPE positions count real tokens only, so a left-padded row starts at 0 (as generate does).
        positions = cache.seen[:, None] + np.cumsum(mask, axis=1, dtype=np.int64) - 1  # [B, T]
        positions = np.maximum(positions, 0).reshape(N)
        cache.valid[:, start:start + T] = mask
        cache.seen += mask.sum(axis=1, dtype=np.int64)
        cache.length += T
        inv_freq = cache.rope.for_positions(int(positions.max()))

        x = ws.x[:N]
        x[:] = self.weights.embed.rows(ids.reshape(N))
        h, q, k, v, att, proj = ws.h[:N], ws.q[:N], ws.k[:N], ws.v[:N], ws.att[:N], ws.proj[:N]
        gate, up = ws.gate[:N], ws.up[:N]
        for layer, lw in enumerate(self.weights.layers):
            # --- attention block -----------------------------------------------------------------
            rmsnorm(x, lw.attn_norm, cfg.rms_norm_eps, h)
            linear(lw.wq, h, q, lw.bq)
            linear(lw.wk, h, k, lw.bk)
            linear(lw.wv, h, v, lw.bv)
            rope(q.reshape(N, H, hd), positions, inv_freq)
            rope(k.reshape(N, KV, hd), positions, inv_freq)
            # append to the cache: [B, T, KV, hd] -> [B, KV, T, hd] at slots start..start+T
            cache.k[layer, :, :, start:start + T] = k.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
            cache.v[layer, :, :, start:start + T] = v.reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
            attention(q.reshape(B, T, H, hd), cache.k[layer], cache.v[layer], cache.valid, start,
                      self.scale, att.reshape(B, T, H, hd), cache.scores)
            x += linear(lw.wo, att, proj, lw.bo)
            # --- MLP block (SwiGLU) ------------------------------------------------------------
            rmsnorm(x, lw.mlp_norm, cfg.rms_norm_eps, h)
            linear(lw.w_gate, h, gate, lw.b_gate)
            linear(lw.w_up, h, up, lw.b_up)
            swiglu(gate, up, gate)
            x += linear(lw.w_down, gate, proj, lw.b_down)
        rmsnorm(x, self.weights.norm, cfg.rms_norm_eps, h)
        return h.reshape(B, T, cfg.hidden_size)

    def head(self, w: Weight, hidden: np.ndarray) -> np.ndarray:
        """Project hidden states [..., hidden] through a head matrix -> float32 [..., rows]."""
        flat = np.ascontiguousarray(hidden.reshape(-1, hidden.shape[-1]))
        out = np.empty((flat.shape[0], w.shape[0]), np.float32)
        linear(w, flat, out)
        return out.reshape(hidden.shape[:-1] + (w.shape[0],))
