"""The forward pass again, in plain NumPy, from a Trace and the model's weights.

Each step is the NumPy reference of the kernel the engine runs (rmsnorm_ref, rope_ref, a masked
softmax, swiglu_ref, x @ W.T), so comparing `recompute(model, tr)` with `tr` checks the trace
(every tensor is what its name says) and the kernels (they compute what the references compute).

chain=False: each step reads the *traced* tensors it depends on, so a mismatch points at the one
step that computes differently instead of everything after it.
chain=True: each step reads the recomputed ones: a whole forward pass from the token ids alone.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import InputError
from ..kernels.rmsnorm import rmsnorm_ref
from ..kernels.rope import rope_ref
from ..kernels.swiglu import swiglu_ref
from ..model.rope_scaling import RopeFrequencies
from .trace import Trace, masked_scores


def softmax_masked(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; -inf entries get 0, and a row with nothing visible is all 0
    (as the attention kernel writes for a padding query)."""
    m = scores.max(axis=-1, keepdims=True)
    e = np.exp(scores - np.where(np.isfinite(m), m, 0))  # exp(-inf) = 0
    total = e.sum(axis=-1, keepdims=True)
    return (e / np.where(total > 0, total, 1)).astype(np.float32)


def recompute(model, trace: Trace, chain: bool = False) -> dict:
    """name -> float32 array for every tensor of `trace` (a fresh forward pass: trace.start == 0)."""
    if trace.start != 0:
        raise InputError("recompute needs a trace of a fresh forward pass (start 0), as trace() records")
    cfg, w, host = model.config, model.weights, model.backend.to_host
    ids, mask = trace.input_ids, trace.attention_mask
    B, T = ids.shape
    H, KV, hd, eps = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
    scale = np.float32(1.0 / math.sqrt(hd))
    out: dict[str, np.ndarray] = {}
    src = out if chain else trace  # where each step reads its inputs

    def linear(x, weight, bias):  # y = x W^T (+ b); W is [out_features, in_features]
        y = x @ weight.dequantize().T
        return y if bias is None else y + np.asarray(host(bias))

    def norm_weight(g):
        return np.asarray(host(g), np.float32)

    # RoPE positions count real tokens only, so a left-padded row starts at 0.
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).reshape(B * T)
    inv_freq = RopeFrequencies(cfg).for_positions(int(positions.max()))

    out["embed"] = w.embed.dequantize()[ids]  # [B, T, hidden]
    for i, lw in enumerate(w.layers):
        p = f"layers.{i}."
        x = src["embed"] if i == 0 else src[f"layers.{i - 1}.resid_mlp"]
        out[p + "attn_norm"] = rmsnorm_ref(x, norm_weight(lw.attn_norm), eps)
        h = src[p + "attn_norm"]
        out[p + "q"] = linear(h, lw.wq, lw.bq).reshape(B, T, H, hd)
        out[p + "k"] = linear(h, lw.wk, lw.bk).reshape(B, T, KV, hd)
        out[p + "v"] = linear(h, lw.wv, lw.bv).reshape(B, T, KV, hd)
        for name in ("q", "k"):
            a = src[p + name]
            out[p + name + "_rope"] = rope_ref(a.reshape(B * T, -1, hd), positions, inv_freq).reshape(a.shape)
        k_cache = src[p + "k_rope"].transpose(0, 2, 1, 3)  # [B, KV, S=T, hd]: this pass fills slots 0..T-1
        out[p + "attn_scores"] = masked_scores(src[p + "q_rope"], k_cache, mask, 0, scale)
        out[p + "attn_probs"] = softmax_masked(src[p + "attn_scores"])
        v = np.where(mask[:, :, None, None] != 0, src[p + "v"], 0)  # padding slots are never read
        v = np.repeat(v.transpose(0, 2, 1, 3), H // KV, axis=1)  # [B, H, S, hd]
        out[p + "attn_out"] = np.einsum("bhts,bhsd->bthd", src[p + "attn_probs"], v)
        out[p + "o_proj"] = linear(src[p + "attn_out"].reshape(B, T, H * hd), lw.wo, lw.bo)
        out[p + "resid_attn"] = x + src[p + "o_proj"]
        out[p + "mlp_norm"] = rmsnorm_ref(src[p + "resid_attn"], norm_weight(lw.mlp_norm), eps)
        h = src[p + "mlp_norm"]
        out[p + "gate"] = linear(h, lw.w_gate, lw.b_gate)
        out[p + "up"] = linear(h, lw.w_up, lw.b_up)
        out[p + "act"] = swiglu_ref(src[p + "gate"], src[p + "up"])
        out[p + "down"] = linear(src[p + "act"], lw.w_down, lw.b_down)
        out[p + "resid_mlp"] = src[p + "resid_attn"] + src[p + "down"]
    out["final_norm"] = rmsnorm_ref(src[f"layers.{len(w.layers) - 1}.resid_mlp"], norm_weight(w.norm), eps)
    if getattr(w, "lm_head", None) is not None:
        out["logits"] = linear(src["final_norm"], w.lm_head, None)
    return {n: np.asarray(a, np.float32) for n, a in out.items()}


def relative_error(ours: np.ndarray, ref: np.ndarray) -> float:
    """max |ours - ref| / max |ref| over the finite entries; inf if the -inf (masked) entries differ."""
    finite = np.isfinite(ref)
    if ours.shape != ref.shape or not np.array_equal(finite, np.isfinite(ours)):
        return float("inf")
    if not finite.any():
        return 0.0
    scale = max(float(np.abs(ref[finite]).max()), 1e-30)
    return float(np.abs(ours[finite] - ref[finite]).max()) / scale


def recompute_errors(model, trace: Trace, chain: bool = False) -> dict:
    """name -> relative error of the recomputation against the traced tensor, over the real tokens
    (what a padding position computes is undefined, as in transformers)."""
    again = recompute(model, trace, chain=chain)
    keep = trace.attention_mask.astype(bool)  # [B, T]

    def real(name, a):  # -> [real tokens, ...]
        return a.transpose(0, 2, 1, 3)[keep] if name.endswith(("attn_scores", "attn_probs")) else a[keep]

    return {name: relative_error(real(name, again[name]), real(name, trace[name])) for name in trace if name in again}
