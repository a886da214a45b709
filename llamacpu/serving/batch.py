"""The engine's KV cache and its forward pass over a ragged batch.

`SlotCache` preallocates the keys/values of `n_slots` sequences of up to `context` tokens each (zero
pages: memory is used as slots fill). A sequence owns one slot while it runs; when it ends, the slot
keeps its tokens so that a later request with the same prefix (system prompt, chat history) reuses
them (`common_prefix`), until another sequence overwrites it.

`forward_slots` is the model's forward pass (model/llama.py:LlamaCore.forward_chunk) for the new tokens of
several sequences at once, concatenated into one [N, hidden] matrix: every projection reads each
weight once for all N tokens, RoPE takes each token's own position, and attention reads each token's
own slot (kernels/slot_attention.py). It is a separate function, not a mode of `forward_chunk`, because the
latter's cache is a rectangular [batch, slot] array with one shared length.

Batch invariance: a token's numbers depend on the token and its slot only, never on the other rows of
the step, so a seeded sample is the same alone or among 15 others, chunked or not, with its prompt
prefix reused or not. The projections pick their kernel by the role of the rows (Backend.linear's
`role`), not by their count: the decoding sequences' new tokens (the first rows) through the decode
kernel, prompt tokens through the prefill kernel, each a kernel whose result for a row does not
depend on the other rows (tests/test_engine.py). SwiGLU too: its serial and parallel kernels differ in
the last bit of 0.2% of the elements, so decode rows take the serial one, prompt rows the parallel one.
Norms, RoPE and attention give the same bits either way.
A slot reuses for a later prompt only the tokens that entered it as prompt rows (`prompt_length`): the
keys of generated tokens came from the decode kernel, which rounds differently from the prefill.
"""
from __future__ import annotations

import numba
import numpy as np

from ..backends.cpu import CPUBackend
from ..errors import InputError, UnsupportedError
from ..kernels.slot_attention import slot_attention, slot_attention_serial
from ..kernels.swiglu import swiglu, swiglu_serial
from ..limits import check_allocation
from ..model.rope_scaling import inv_freq
from ..runtime import KERNEL_LOCK

SERIAL_WORK = 1 << 16  # as backends/cpu.py: below this many multiply-adds a thread launch costs more


class SlotCache:
    def __init__(self, config, n_slots: int, context: int, reuse_generated: bool = False):
        L, KV, hd = config.num_hidden_layers, config.num_key_value_heads, config.head_dim
        if n_slots < 1 or context < 2:
            raise InputError(f"slots: need at least 1 slot of 2 tokens, got {n_slots} x {context}")
        need = 2 * L * n_slots * KV * context * hd * 4
        check_allocation(need, f"a KV cache of {n_slots} slots x {context} tokens", InputError,
                         "use fewer slots or a smaller context", lazy=True)  # zero pages, filled as used
        zeros = CPUBackend().zeros  # 4 KiB pages: a slot costs memory only as it fills
        # [slot, layer, kv_head, position, head_dim]: a slot's layers contiguous, so that its view
        # [layer, 1, kv_head, position, head_dim] is a one-sequence cache for the compiled decode step
        self.k = zeros((n_slots, L, KV, context, hd))
        self.v = zeros((n_slots, L, KV, context, hd))
        self.valid = np.ones((1, context), np.uint8)  # that step's mask: every position up to its own
        self.scores = np.zeros((numba.config.NUMBA_NUM_THREADS, context), np.float32)  # attention scratch
        self.tokens: list[list[int]] = [[] for _ in range(n_slots)]  # the ids each slot holds, in order
        self.prompt_length = [0] * n_slots  # how many of them entered as prompt rows (reusable as a prefix)
        self.n_slots, self.context = n_slots, context
        self.reuse_generated = reuse_generated  # also reuse generated tokens as a prefix (not batch-invariant)

    def length(self, slot: int) -> int:
        return len(self.tokens[slot])

    def truncate(self, slot: int, length: int) -> None:
        """Forget the slot's tokens after `length` (their keys/values are simply overwritten later)."""
        del self.tokens[slot][length:]
        self.prompt_length[slot] = min(self.prompt_length[slot], length)

    def common_prefix(self, slot: int, ids) -> int:
        """How many leading ids of `ids` the slot holds as prompt rows (see the module docstring)."""
        n = 0
        held = self.tokens[slot] if self.reuse_generated else self.tokens[slot][:self.prompt_length[slot]]
        for a, b in zip(held, ids):
            if a != b:
                break
            n += 1
        return n

    def one_sequence(self, slot: int):
        """The slot as the cache the compiled decode step reads (k, v [L, 1, KV, S, hd], valid_dev, scores)."""
        return _OneSequence(self.k[slot][:, None], self.v[slot][:, None], self.valid, self.scores)

    @property
    def nbytes(self) -> int:
        return self.k.nbytes + self.v.nbytes


class _OneSequence:
    def __init__(self, k, v, valid, scores):
        self.k, self.v, self.valid_dev, self.scores = k, v, valid, scores


def check_model(model) -> None:
    if not isinstance(model.backend, CPUBackend):
        raise UnsupportedError("the generation engine runs on the CPU backend only")
    if model.config.rope_type == "dynamic":
        raise UnsupportedError("the generation engine does not support dynamic RoPE scaling (frequencies per sequence)")


def forward_slots(model, cache: SlotCache, segments: list[tuple[int, np.ndarray]], n_decode: int = 0,
                  invariant: bool = True) -> np.ndarray:
    """Append each segment's ids (int64 [T_i], T_i >= 1) to its slot and run them through the stack.
    The first `n_decode` segments are decoding sequences (one new token each: decode kernel), the rest
    prompt chunks (prefill kernel); see the module docstring. invariant=False: the kernels chosen by the
    row count instead, as `generate` does (faster where the prefill kernel beats the decode kernel at
    many rows; a token's last bits then depend on its batch mates).
    Returns the final-normed hidden state of each segment's last token, float32 [n_segments, hidden]."""
    cfg, ops = model.config, model.backend
    if any(len(t) != 1 for _, t in segments[:n_decode]):
        raise InputError("forward_slots: a decode segment holds one token")  # engine bug guard
    H, KV, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    ids = np.concatenate([s[1] for s in segments]).astype(np.int64)  # [N]
    N = len(ids)
    slots = np.concatenate([np.full(len(t), s, np.int64) for s, t in segments])  # [N] slot of each token
    pos = np.concatenate([cache.length(s) + np.arange(len(t), dtype=np.int64) for s, t in segments])  # [N]
    if pos.max() >= cache.context or ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise InputError("forward_slots: a segment runs past its slot or holds an id out of range")  # engine bug guard
    last_rows = np.cumsum([len(t) for _, t in segments]) - 1
    freqs = inv_freq(cfg)
    if invariant and n_decode == N == 1 and cfg.intermediate_size < SERIAL_WORK:
        step = model.decode_step()  # one decode row: the compiled step, as generate runs it (None if unavailable)
        if step is not None:
            return _compiled_step(model, step, cache, segments[0][0], ids, pos, freqs)
    attention = slot_attention_serial if N * H * hd * (int(pos.max()) + 1) < SERIAL_WORK else slot_attention
    d = n_decode  # rows [:d] decode, [d:] prompt
    parts = ((slice(0, d), "decode"), (slice(d, N), "prompt")) if invariant else ((slice(0, N), None),)

    def linears(weights, x, outs, biases):  # each part of the rows through the kernel of its role
        for rows, role in parts:
            if rows.stop > rows.start:
                ops.linears(weights, x[rows], tuple(o[rows] for o in outs), biases, role)
        return outs[0]

    with model.lend_workspace(N) as ws, KERNEL_LOCK:
        x, h, q, k, v, att, proj = ws.x[:N], ws.h[:N], ws.q[:N], ws.k[:N], ws.v[:N], ws.att[:N], ws.proj[:N]
        gate, up = ws.gate[:N], ws.up[:N]
        ops.embed(model.weights.embed, ids, x)
        for layer, lw in enumerate(model.weights.layers):
            # --- attention block ---------------------------------------------------------------
            ops.rmsnorm(x, lw.attn_norm, cfg.rms_norm_eps, h)
            linears((lw.wq, lw.wk, lw.wv), h, (q, k, v), (lw.bq, lw.bk, lw.bv))
            ops.rope(q.reshape(N, H, hd), pos, freqs)
            ops.rope(k.reshape(N, KV, hd), pos, freqs)
            cache.k[slots, layer, :, pos] = k.reshape(N, KV, hd)  # each token into its own slot
            cache.v[slots, layer, :, pos] = v.reshape(N, KV, hd)
            attention(q.reshape(N, H, hd), cache.k, cache.v, layer, slots, pos, model.scale,
                      att.reshape(N, H, hd), cache.scores)
            ops.add(x, linears((lw.wo,), att, (proj,), (lw.bo,)))
            # --- MLP block (SwiGLU) -------------------------------------------------------------
            ops.rmsnorm(x, lw.mlp_norm, cfg.rms_norm_eps, h)
            linears((lw.w_gate, lw.w_up), h, (gate, up), (lw.b_gate, lw.b_up))
            if invariant:  # by role too: the serial and parallel kernels' exp differ in the last bit
                swiglu_serial(gate[:d], up[:d], gate[:d])
                swiglu(gate[d:], up[d:], gate[d:])
            else:
                ops.swiglu(gate, up, gate)
            ops.add(x, linears((lw.w_down,), gate, (proj,), (lw.b_down,)))
        ops.rmsnorm(x[last_rows], model.weights.norm, cfg.rms_norm_eps, h[:len(last_rows)])
        hidden = h[:len(last_rows)].copy()  # out of the lent workspace before it is lent again
    for j, (s, t) in enumerate(segments):
        if j >= n_decode and cache.prompt_length[s] == len(cache.tokens[s]):  # prompt rows extend the reusable prefix
            cache.prompt_length[s] += len(t)
        cache.tokens[s].extend(int(i) for i in t)
    return hidden


def _compiled_step(model, step, cache: SlotCache, slot: int, ids, pos, freqs) -> np.ndarray:
    """forward_slots for one decode row through the compiled decode step (model/compiled_decode.py): one
    call for the whole stack instead of ~10 Python-level kernel calls per layer. The same kernels as the
    loop's decode rows (the decode kernel, serial SwiGLU below SERIAL_WORK elements, attention whose
    bits equal slot_attention's), so a token's bits do not depend on which path ran it (tested)."""
    with model.lend_workspace(1) as ws, KERNEL_LOCK:
        model.backend.embed(model.weights.embed, ids, ws.x[:1])
        step(ws, 1, cache.one_sequence(slot), int(pos[0]), pos, freqs, SERIAL_WORK)
        hidden = ws.h[:1].copy()
    cache.tokens[slot].append(int(ids[0]))
    return hidden
