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
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import numpy as np

from ..config import LlamaConfig
from ..errors import InputError
from ..backends import CPUBackend
from ..backends.cpu import SERIAL_WORK
from ..runtime import KERNEL_LOCK
from .cache import KVCache
from .names import LAYER, PROJECTIONS
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


# LayerWeights holds exactly the per-layer tensors of the name table (llamacpu.model.names)
assert {f.name for f in fields(LayerWeights)} == {t.field for t in LAYER}, "LayerWeights != names.LAYER"


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
        for w in [self.embed, self.lm_head, self.score] + [getattr(l, n) for l in self.layers for n in PROJECTIONS]:
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
    (by the backend, on its device) and reused as views of the first n rows. Grows only when a
    longer chunk arrives."""

    def __init__(self, config: LlamaConfig, capacity: int, backend):
        D, I = config.hidden_size, config.intermediate_size
        Q, KV = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
        z = backend.zeros
        self.capacity = capacity
        self.x = z((capacity, D))  # residual stream [tokens, hidden]
        self.h = z((capacity, D))  # normed input of a sub-layer
        self.q = z((capacity, Q))  # [tokens, n_heads * head_dim]
        self.k = z((capacity, KV))  # [tokens, n_kv_heads * head_dim]
        self.v = z((capacity, KV))
        self.att = z((capacity, Q))  # attention output per head, concatenated
        self.gate = z((capacity, I))  # [tokens, intermediate]
        self.up = z((capacity, I))
        self.proj = z((capacity, D))  # output of wo / w_down before the residual add


class LlamaCore:
    """The decoder stack over a KV cache. Subclasses add heads (`LlamaForCausalLM`, ...)."""

    prefill_chunk = 256  # tokens per row per forward chunk: bounds the workspace for long prompts

    def __init__(self, config: LlamaConfig, weights: LlamaWeights, max_context: int | None = None, backend=None):
        self.config = config
        self.backend = backend or CPUBackend()
        self.weights = self.backend.prepare_weights(weights)  # e.g. copied to the GPU once
        self.tracer = None  # set by `trace()`: records every intermediate; None costs one test per op
        self.max_context = int(max_context or config.default_max_context())
        if self.max_context <= 0:
            raise InputError(f"max_context must be positive, got {max_context}")
        self.scale = np.float32(1.0 / math.sqrt(config.head_dim))
        self._workspace: Workspace | None = None
        self._cache: KVCache | None = None
        # Buffers lent to concurrent callers (threads): each forward chunk and each generate call gets
        # its own, so no caller reads what another one writes. One caller always gets the same ones back.
        self._lend_lock = threading.Lock()
        self._free_workspaces: list[Workspace] = []
        self._free_caches: list[KVCache] = []
        self._decode_step = False  # not built yet (see decode_step)

    # ---- the two allocation sites -------------------------------------------------------------------
    def workspace(self, n_tokens: int) -> Workspace:
        if self._workspace is None or self._workspace.capacity < n_tokens:
            self._workspace = Workspace(self.config, n_tokens, self.backend)
        return self._workspace

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        """A fresh preallocated KV cache (pass it as `past_key_values` to continue a sequence)."""
        from ..validation import int_arg

        batch = int_arg(batch, "new_cache: batch", 1, 1 << 20)
        max_len = None if max_len is None else int_arg(max_len, "new_cache: max_len", 1, 1 << 40)
        return KVCache(self.config, batch, max_len or self.max_context, self.backend)

    @contextmanager
    def lend_workspace(self, n_tokens: int):
        """A workspace no other thread is using, for one forward chunk of `n_tokens` rows."""
        with self._lend_lock:
            ws = self._free_workspaces.pop() if self._free_workspaces else None
        if ws is None or ws.capacity < n_tokens:
            ws = Workspace(self.config, n_tokens, self.backend)
        try:
            yield ws
        finally:
            with self._lend_lock:
                self._free_workspaces.append(ws)

    max_free_caches = 4  # caches kept for reuse after concurrent calls end (the rest are freed)

    def take_cache(self, batch: int) -> KVCache:
        """An empty cache for one call (generate), reused from earlier calls when one fits: a single
        caller always gets the same one back, so reuse costs nothing; concurrent callers get their own.
        Give it back with `give_back_cache`."""
        with self._lend_lock:
            for i, c in enumerate(self._free_caches):
                if c.batch == batch:
                    cache = self._free_caches.pop(i)
                    break
            else:
                cache = None
        if cache is None:
            return self.new_cache(batch)
        cache.reset()
        return cache

    def give_back_cache(self, cache: KVCache) -> None:
        with self._lend_lock:
            self._free_caches.insert(0, cache)
            del self._free_caches[self.max_free_caches:]

    def static_cache(self, batch: int) -> KVCache:
        """The model's own cache, reused across calls while the batch size stays the same. Not safe to
        share between threads: the library itself uses `take_cache` / `new_cache`."""
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
            # the chunk's result lives in the lent workspace: copy it out before lending it again
            with self.lend_workspace(batch * (c1 - c0)) as ws:
                with KERNEL_LOCK:  # one thread at a time in the kernels (see llamacpu.runtime)
                    h = self.forward_chunk(input_ids[:, c0:c1], attention_mask[:, c0:c1], cache, ws)  # [B, Tc, D]
                if out_rows == "all":
                    result[:, c0:c1] = h
                elif c1 == n_new:
                    result[:] = h[:, -1]
        return result

    def forward_chunk(self, ids: np.ndarray, mask: np.ndarray, cache: KVCache, ws: Workspace | None = None) -> np.ndarray:
        """The whole forward pass over one chunk of tokens ids [B, T] (mask [B, T]), appended to `cache`:
        the equations of the module docstring, one kernel call each (named in `llamacpu.backends.Backend`).
        Returns the final-normed hidden states float32 [B, T, hidden]. The `if trace:` lines record the
        intermediates for llamacpu.inspect (one test of a local when not tracing)."""
        cfg, ops, trace = self.config, self.backend, self.tracer
        B, T = ids.shape
        N = B * T
        H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        ws = ws or self.workspace(N)
        start = cache.length

        # RoPE positions count real tokens only, so a left-padded row starts at 0 (as generate does).
        positions = cache.seen[:, None] + np.cumsum(mask, axis=1, dtype=np.int64) - 1  # [B, T]
        positions = np.maximum(positions, 0).reshape(N)
        inv_freq = cache.rope.for_positions(int(positions.max()))
        cache.append(mask)
        pos, inv_freq = ops.upload(positions), ops.upload(inv_freq)

        x = ws.x[:N]
        h, q, k, v, att, proj = ws.h[:N], ws.q[:N], ws.k[:N], ws.v[:N], ws.att[:N], ws.proj[:N]
        gate, up = ws.gate[:N], ws.up[:N]
        ops.embed(self.weights.embed, ids.reshape(N), x)
        if trace: trace.begin(ids, mask, positions, inv_freq, start, cache, embed=x)
        step = self.decode_step() if T == 1 and not trace else None
        if step is not None and step.accepts(N):  # the loop below as one compiled call (compiled_decode.py)
            step(ws, N, cache, start, pos, inv_freq, SERIAL_WORK)
            return ops.to_host(h).reshape(B, T, cfg.hidden_size)
        for layer, lw in enumerate(self.weights.layers):
            # --- attention block -----------------------------------------------------------------
            ops.rmsnorm(x, lw.attn_norm, cfg.rms_norm_eps, h)
            ops.linears((lw.wq, lw.wk, lw.wv), h, (q, k, v), (lw.bq, lw.bk, lw.bv))  # one call where fusable
            if trace: trace.record(layer, attn_norm=h, q=q, k=k, v=v)
            ops.rope(q.reshape(N, H, hd), pos, inv_freq)
            ops.rope(k.reshape(N, KV, hd), pos, inv_freq)
            ops.store_kv(cache.k[layer], cache.v[layer], k.reshape(B, T, KV, hd), v.reshape(B, T, KV, hd), start)
            ops.attention(q.reshape(B, T, H, hd), cache.k[layer], cache.v[layer], cache.valid_dev, start,
                          self.scale, att.reshape(B, T, H, hd), cache.scores)
            if trace: trace.record(layer, q_rope=q, k_rope=k, attn_probs=(q, self.scale), attn_out=att)
            ops.add(x, ops.linear(lw.wo, att, proj, lw.bo))
            if trace: trace.record(layer, o_proj=proj, resid_attn=x)
            # --- MLP block (SwiGLU) ------------------------------------------------------------
            ops.rmsnorm(x, lw.mlp_norm, cfg.rms_norm_eps, h)
            ops.linears((lw.w_gate, lw.w_up), h, (gate, up), (lw.b_gate, lw.b_up))
            if trace: trace.record(layer, mlp_norm=h, gate=gate, up=up)
            ops.swiglu(gate, up, gate)
            ops.add(x, ops.linear(lw.w_down, gate, proj, lw.b_down))
            if trace: trace.record(layer, act=gate, down=proj, resid_mlp=x)
        ops.rmsnorm(x, self.weights.norm, cfg.rms_norm_eps, h)
        if trace: trace.record(None, final_norm=h)
        return ops.to_host(h).reshape(B, T, cfg.hidden_size)

    compiled_decode = True  # decode steps as one compiled call where the model allows (see decode_step)

    def decode_step(self):
        """The compiled decode step of this model (llamacpu.model.compiled_decode), or None where it
        cannot run (then every step takes the loop of forward_chunk). Built on first use."""
        if not self.compiled_decode:
            return None
        if self._decode_step is False:
            from .compiled_decode import CompiledDecode
            self._decode_step = CompiledDecode.build(self)
        return self._decode_step

    def head(self, w: Weight, hidden: np.ndarray) -> np.ndarray:
        """Project hidden states [..., hidden] through a head matrix -> float32 [..., rows]."""
        ops = self.backend
        flat = ops.upload(np.ascontiguousarray(hidden.reshape(-1, hidden.shape[-1])))
        out = ops.zeros((flat.shape[0], w.shape[0]))
        with KERNEL_LOCK:
            ops.linear(w, flat, out)
        out = ops.to_host(out).reshape(hidden.shape[:-1] + (w.shape[0],))
        if self.tracer: self.tracer.record(None, logits=out)
        return out
