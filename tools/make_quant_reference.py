"""Make tests/fixtures/smollm2_reference.npz: the fp32 reference for the SmolLM2 GGUF agreement test.

Independent of llamacpu's model code on purpose: the file is read with the `gguf` package's own
GGUFReader, every tensor is dequantized with `gguf.quants.dequantize` (ggml's reference), and the
forward pass is plain NumPy in float32 on the tensors as GGUF stores them, with llama.cpp's
interleaved ("normal") RoPE on its permuted Q/K rows, so it also checks our un-permutation.
Stored: the token ids of a few varied texts and the reference top-1 next token at every position.

    .venv/bin/python tools/make_quant_reference.py [path/to/SmolLM2.gguf]
"""
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TEXTS = [
    "Once upon a time, in a small village by the sea, there lived an old fisherman who told stories "
    "to the children every evening. One night he told them about a silver whale that could sing.",
    "The mitochondria is the powerhouse of the cell. It produces adenosine triphosphate through "
    "oxidative phosphorylation, a process that depends on a gradient of protons across a membrane.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "print([fibonacci(i) for i in range(10)])\n",
    "<|im_start|>user\nCan you recommend three books about the history of mathematics?<|im_end|>\n"
    "<|im_start|>assistant\nSure! Here are three books you might enjoy: 1. \"Journey through Genius\" by "
    "William Dunham, 2. \"The Man Who Knew Infinity\" by Robert Kanigel, 3. \"Fermat's Enigma\" by Simon Singh.",
    "Paris, Berlin, Madrid and Rome are capitals of European countries. In 1969, Apollo 11 landed on the "
    "Moon; the mission lasted 8 days, 3 hours and 18 minutes. Water boils at 100 degrees Celsius.",
    "Dear Maria, thank you for your letter. The weather here has been cold and rainy, but the garden is "
    "full of tulips. I hope to visit you in the spring, when the trains are running again. Love, Tom.",
    "Le petit prince est un livre écrit par Antoine de Saint-Exupéry. Il raconte l'histoire d'un enfant "
    "venu d'une autre planète. Ciao! ¿Qué tal? Größe, naïve café, 東京は日本の首都です。",
]


def load(path):
    r = GGUFReader(path)
    meta = {f.name: f for f in r.fields.values()}

    def scalar(key):
        f = meta[key]
        return f.parts[f.data[0]][0].item()

    hp = dict(n_layer=scalar("llama.block_count"), n_head=scalar("llama.attention.head_count"),
              n_kv=scalar("llama.attention.head_count_kv"), eps=scalar("llama.attention.layer_norm_rms_epsilon"),
              theta=scalar("llama.rope.freq_base"))
    w = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape))  # GGUF dims are fastest-first
        w[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    return hp, w


def rmsnorm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g


def rope_interleaved(x, theta):
    """llama.cpp's normal RoPE: pairs (2i, 2i+1) of each head. x [T, heads, hd]."""
    T, _, hd = x.shape
    inv = (1.0 / theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)).astype(np.float32)
    ang = np.arange(T, dtype=np.float32)[:, None] * inv[None]
    c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def forward(hp, w, ids):
    T = len(ids)
    x = w["token_embd.weight"][ids]
    H, KV = hp["n_head"], hp["n_kv"]
    hd = x.shape[1] // H
    causal = np.triu(np.full((T, T), -np.inf, np.float32), 1)
    for i in range(hp["n_layer"]):
        p = f"blk.{i}."
        h = rmsnorm(x, w[p + "attn_norm.weight"], hp["eps"])
        q = rope_interleaved((h @ w[p + "attn_q.weight"].T).reshape(T, H, hd), hp["theta"])
        k = rope_interleaved((h @ w[p + "attn_k.weight"].T).reshape(T, KV, hd), hp["theta"])
        v = (h @ w[p + "attn_v.weight"].T).reshape(T, KV, hd)
        k, v = np.repeat(k, H // KV, axis=1), np.repeat(v, H // KV, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + causal
        p_att = np.exp(s - s.max(-1, keepdims=True))
        p_att /= p_att.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", p_att, v).reshape(T, H * hd)
        x = x + att @ w[p + "attn_output.weight"].T
        h = rmsnorm(x, w[p + "ffn_norm.weight"], hp["eps"])
        g, u = h @ w[p + "ffn_gate.weight"].T, h @ w[p + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ w[p + "ffn_down.weight"].T
    x = rmsnorm(x, w["output_norm.weight"], hp["eps"])
    head = w.get("output.weight", w["token_embd.weight"])
    return x @ head.T


def main():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from llamacpu.hub import default_model
    from llamacpu.tokenizer.auto import AutoTokenizer

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default_model()
    tok = AutoTokenizer.from_pretrained(path)
    hp, w = load(path)
    all_ids, top1, offsets, lengths = [], [], [], []
    for text in TEXTS:
        ids = np.array(tok.encode(text, add_special_tokens=False), np.int64)
        logits = forward(hp, w, ids)
        offsets.append(len(all_ids))
        lengths.append(len(ids))
        all_ids.extend(ids.tolist())
        top1.extend(logits.argmax(-1).tolist())
        print(f"{len(ids)} tokens: {text[:40]!r}")
    out = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "smollm2_reference.npz"
    np.savez_compressed(out, ids=np.array(all_ids), top1=np.array(top1), offsets=np.array(offsets),
                        lengths=np.array(lengths))
    print(f"wrote {out}: {len(all_ids)} positions")


if __name__ == "__main__":
    main()
