"""A Llama forward pass, one line of NumPy per equation, on a real (tiny) model: stories260K.

stories260K is a Llama trained on children's stories: hidden size 64, 5 layers, 8 query heads sharing
4 key/value heads, a 512-token vocabulary. Everything below runs on its real weights, printing what
each layer does to the prompt, and at the end checks that the logits equal the engine's.

    .venv/bin/python examples/walkthrough_stories260k.py ["your prompt" [MODEL]]

Without ../shared/models/stories260K beside the repo (a fresh clone) it walks through the embedded
SmolLM2-135M-Instruct instead: the same equations, 30 layers.

Each step names the engine function that computes the same thing (see docs/ARCHITECTURE.md).
Shapes: T = prompt tokens, D = hidden size, H = query heads, KV = key/value heads, hd = head size.
"""
import sys
from pathlib import Path

import numpy as np

import llamacpu
from llamacpu import LlamaForCausalLM
from llamacpu.tokenizer.auto import AutoTokenizer

# stories260K from ../shared/models beside the repo when it is there (or a model given as the second
# argument); in a fresh clone, the embedded SmolLM2-135M-Instruct (30 layers, 4-bit blocks) instead.
STORIES = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "stories260K"
MODEL = sys.argv[2] if len(sys.argv) > 2 else STORIES if STORIES.is_dir() else llamacpu.default_model()
print(f"model: {MODEL}")

model = LlamaForCausalLM.from_pretrained(MODEL)
tok = AutoTokenizer.from_pretrained(MODEL)
cfg, W = model.config, model.weights
D, H, KV, hd, eps = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.rms_norm_eps
print(f"D={D}, {cfg.num_hidden_layers} layers, H={H} query heads, KV={KV} key/value heads, "
      f"hd={hd}, vocab {cfg.vocab_size}")

# ---- 0. Text to token ids ------------------------------------------------------------------------------
# SentencePiece splits the text into pieces from a fixed vocabulary; BOS (<s>, id 1) starts every text.
prompt = sys.argv[1] if len(sys.argv) > 1 else "Once upon a time"
ids = np.array(tok.encode(prompt))  # [T]
T = len(ids)
print("tokens:", tok.convert_ids_to_tokens(ids.tolist()), "ids:", ids.tolist())


def rmsnorm(x, g):
    # RMSNorm [arXiv:1910.07467, eq. (4)]: divide each token's vector by its root mean square, then
    # scale each dimension by a learned gain g. Unlike LayerNorm there is no mean subtraction and no
    # bias: cheaper, and it works as well. Engine: kernels/rmsnorm.py:rmsnorm.
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope(x, pos):
    # RoPE [arXiv:2104.09864, eq. (34)]: rotate pairs of dimensions by an angle proportional to the
    # token's position, so that q.k depends on the distance between the two tokens. Hugging Face
    # checkpoints pair dimension i with i + hd/2 ("rotate half"), not 2i with 2i+1 as the paper
    # writes it; the weights were permuted to match. Engine: kernels/rope.py:rope.
    inv_freq = 1.0 / cfg.rope_theta ** (np.arange(0, hd, 2) / hd)  # [hd/2]: fast to slow rotations
    angle = (pos[:, None] * inv_freq[None, :]).astype(np.float32)  # [T, hd/2]
    cos, sin = np.cos(angle)[:, None, :], np.sin(angle)[:, None, :]  # broadcast over heads
    a, b = x[..., : hd // 2], x[..., hd // 2:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def softmax(z):
    z = z - z.max(axis=-1, keepdims=True)  # subtracting the max changes nothing but avoids overflow
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


LM_HEAD = W.lm_head.dequantize()  # [vocab, D], unpacked once (it is read after every layer)


def lens(x):
    # The logit lens: what the model would predict if it stopped here (final norm + LM head).
    logits = rmsnorm(x[-1], W.norm) @ LM_HEAD.T
    return tok.convert_ids_to_tokens(int(logits.argmax()))


# ---- 1. Embedding --------------------------------------------------------------------------------------
# Each id picks one row of a [vocab, D] table. This vector starts the *residual stream* x: every
# layer reads it and adds its own update, it is never overwritten. Engine: backends/cpu.py:embed.
x = W.embed.dequantize()[ids]  # [T, D]
positions = np.arange(T)  # token t sits at position t (no padding here)
print(f"embedding: |x| at the last token {np.linalg.norm(x[-1]):.2f}, lens -> {lens(x)!r}")

# A token may look at itself and earlier tokens only (causal): -inf above the diagonal.
causal = np.triu(np.full((T, T), -np.inf, np.float32), k=1)  # [T, T]

for i, lw in enumerate(W.layers):
    # ---- 2. Attention block: x = x + Attention(RMSNorm(x)) Wo --------------------------------------
    h = rmsnorm(x, lw.attn_norm)  # [T, D]
    # Project to queries, keys and values; y = h @ W.T because weights are [out, in]. Engine: linear.
    q = (h @ lw.wq.dequantize().T).reshape(T, H, hd)  # what each token is looking for
    k = (h @ lw.wk.dequantize().T).reshape(T, KV, hd)  # what each token offers to be found by
    v = (h @ lw.wv.dequantize().T).reshape(T, KV, hd)  # what it passes on when found
    q, k = rope(q, positions), rope(k, positions)  # positions enter here, and only here
    # Grouped-query attention [arXiv:2305.13245]: 8 query heads share 4 key/value heads, head h
    # reading kv head h // 2. This halves the KV cache. Engine: kernels/attention.py:attention.
    k_h = np.repeat(k, H // KV, axis=1)  # [T, H, hd]
    v_h = np.repeat(v, H // KV, axis=1)
    # Scaled dot-product attention [arXiv:1706.03762, eq. (1)]: softmax(q k^T / sqrt(hd)) v.
    # The 1/sqrt(hd) keeps the dot products' spread independent of the head size.
    scores = np.einsum("thd,shd->hts", q, k_h) / np.sqrt(hd) + causal  # [H, T, T]
    probs = softmax(scores)  # each row sums to 1: how much token t takes from each token s
    att = np.einsum("hts,shd->thd", probs, v_h).reshape(T, H * hd)  # heads side by side
    x = x + att @ lw.wo.dequantize().T  # Wo mixes the heads back into the stream; add, do not replace

    # ---- 3. MLP block (SwiGLU): x = x + (silu(h Wgate) * h Wup) Wdown -------------------------------
    # SwiGLU [arXiv:2002.05202, eq. (5)]: a gated MLP; silu(g) = g * sigmoid(g). The gate decides,
    # per hidden unit, how much of the "up" projection passes. Engine: kernels/swiglu.py:swiglu.
    h = rmsnorm(x, lw.mlp_norm)
    gate, up = h @ lw.w_gate.dequantize().T, h @ lw.w_up.dequantize().T  # [T, intermediate]
    x = x + (gate / (1 + np.exp(-gate)) * up) @ lw.w_down.dequantize().T

    entropy = -(probs[:, -1] * np.log2(np.where(probs[:, -1] > 0, probs[:, -1], 1))).sum(-1)  # [H]
    print(f"layer {i}: |x| {np.linalg.norm(x[-1]):6.2f}, last token's attention entropy per head "
          f"{np.round(entropy, 2).tolist()} bits, lens -> {lens(x)!r}")

# ---- 4. Output: logits = RMSNorm(x) W_lm_head ----------------------------------------------------------
# stories260K ties the LM head to the embedding table (the same matrix reads tokens in and out).
logits = rmsnorm(x, W.norm) @ LM_HEAD.T  # [T, vocab]: a score per next token, per position
p = softmax(logits[-1])
best = int(p.argmax())
print(f"next token after {prompt!r}: {tok.convert_ids_to_tokens(best)!r} (p = {p[best]:.2f})")

# ---- 5. Check: the engine computes the same thing ------------------------------------------------------
engine = model(ids[None]).logits[0]
err = np.abs(logits - engine).max() / np.abs(engine).max()
print(f"max |ours - engine| / max |engine| = {err:.1e}")
# Float weights: the same sums in another order (1e-4). Block-quantized weights: the engine multiplies
# the 4/8-bit blocks with activations rounded to 8 bits, as llama.cpp does, where this page uses the
# dequantized matrices in float32: about 1e-3 apart.
quantized = any(str(m.dtype) not in ("f32", "f16", "bf16") for m in W.matrices())
assert err < (5e-3 if quantized else 1e-4), "the walk-through and the engine disagree"
