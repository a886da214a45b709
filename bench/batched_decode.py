"""Batched decode: B sequences decoding together against one alone, in one process, A B B A.

    .venv/bin/python bench/batched_decode.py [--model PATH | --shape tinyllama-1.1b --layers 4]
        [--quantization q4_0] [--batch 8] [--new-tokens 64] [--rounds 2] [--kernels]

Each measurement: a fresh cache, a 16-token prompt per sequence (not timed), then `--new-tokens` greedy
steps through `next_token_logits` (the same path `generate` takes), timed. Aggregate tok/s of the batch
= batch * steps / time, against one sequence alone, with B tokens per step going to the decode kernel
(each row read once, then multiplied by every token from L1: llamacpu.quant.vnni.decode_rows) and to
the prefill kernel (rows repacked per call, then all tokens: the same kernel with prefill=True); both read each
weight once per step. Rounds alternate the order and the median of each is kept, so drift of a shared
machine hits every configuration alike.
`--shape` builds random weights in that shape (fewer layers with --layers: every matrix keeps its real
shape, the model is only shorter); a benchmark reports, it asserts nothing.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

from llamacpu import LlamaForCausalLM
from llamacpu.checkpoint.synthetic import SHAPES, write_synthetic


def decode_rate(model, batch: int, steps: int, prompt_len: int = 16, seed: int = 0) -> float:
    """Aggregate tokens/s of `batch` sequences decoding `steps` greedy tokens together."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, model.config.vocab_size, size=(batch, prompt_len))
    cache = model.new_cache(batch, prompt_len + steps + 1)
    logits = model.next_token_logits(ids, None, cache)
    t0 = time.perf_counter()
    for _ in range(steps):
        nxt = logits.argmax(axis=-1)[:, None]
        logits = model.next_token_logits(nxt, None, cache)
    return batch * steps / (time.perf_counter() - t0)


def kernel_ratios(fmt_name: str = "q4_0", shape=(5632, 2048), tokens=(1, 2, 4, 8, 12, 16), mats: int = 8,
                  rounds: int = 3):
    """Time of one call of the decode kernel (each row read once for all n tokens) and of the prefill
    kernel on n tokens, relative to the decode kernel on one token, over `mats` matrices (more than
    the caches hold), interleaved: ({(kernel, n): ratio (median of rounds)}, GB/s of decode at n = 1)."""
    from llamacpu.quant import FORMATS, kernels
    from llamacpu.quant.vnni import NO_OUT, NO_ROWS

    fmt = FORMATS[fmt_name]
    module = next(m for m in kernels.MODULES if m.NAME == fmt_name)
    rng = np.random.default_rng(0)
    R, C = shape
    ws = [fmt.quantize(rng.standard_normal((R, C)).astype(np.float32)) for _ in range(mats)]
    for w in ws:
        w.flags.writeable = False
    X = rng.standard_normal((max(tokens), C)).astype(np.float32)
    out = np.empty((max(tokens), R), np.float32)

    def decode(w, n):
        module.matmul_vnni(w, NO_ROWS, NO_ROWS, X[:n], out[:n], NO_OUT, NO_OUT, False)

    def prefill(w, n):
        module.matmul_vnni(w, NO_ROWS, NO_ROWS, X[:n], out[:n], NO_OUT, NO_OUT, True)

    runs = [("decode", decode, n) for n in tokens] + [("prefill", prefill, n) for n in tokens if n >= 4]
    for _, f, n in runs:
        f(ws[0], n)  # compiled and warm
    times = {(k, n): [] for k, _, n in runs}
    for r in range(rounds):
        for k, f, n in (runs if r % 2 == 0 else runs[::-1]):
            t0 = time.perf_counter()
            for w in ws:
                f(w, n)
            times[(k, n)].append(time.perf_counter() - t0)
    base = statistics.median(times[("decode", 1)])
    gbs = sum(w.nbytes for w in ws) / base / 1e9
    return {key: statistics.median(v) / base for key, v in times.items()}, gbs


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="a checkpoint folder or .gguf file")
    p.add_argument("--shape", default="tinyllama-1.1b", help="random weights in this shape when no --model")
    p.add_argument("--layers", type=int, default=4, help="layers of the random-weight model")
    p.add_argument("--quantization", default=None, help="quantize at load (q4_0, q8_0, ...)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--kernels", action="store_true", help="first time the kernels alone (decode vs prefill by n)")
    args = p.parse_args(argv)
    if args.kernels:
        for fmt in ("q4_0", "q8_0", "q4_k"):
            ratios, gbs = kernel_ratios(fmt)
            print(f"{fmt} 5632x2048 x 8 matrices, time / decode kernel at n=1 ({gbs:.1f} GB/s at n=1): " +
                  ", ".join(f"{k}@{n} {v:.2f}" for (k, n), v in ratios.items()), flush=True)
    from llamacpu.quant import kernels

    default_max = kernels.DECODE_MAX_TOKENS
    # (label, sequences, largest token count for the decode kernel: more go to the prefill kernel)
    configs = [("1 sequence", 1, default_max),
               (f"{args.batch} together, decode kernel", args.batch, max(default_max, args.batch)),
               (f"{args.batch} together, prefill kernel", args.batch, min(default_max, args.batch - 1))]
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model or write_synthetic(f"{tmp}/m", dict(SHAPES[args.shape], num_hidden_layers=args.layers))
        model = LlamaForCausalLM.from_pretrained(path, quantization=args.quantization)
        rates = {label: [] for label, _, _ in configs}
        try:
            for r in range(args.rounds + 1):  # round 0: first calls out of the way, not kept
                for label, batch, dmax in (configs if r % 2 == 0 else configs[::-1]):
                    kernels.DECODE_MAX_TOKENS = dmax
                    rate = decode_rate(model, batch, args.new_tokens if r else 2)
                    if r:
                        rates[label].append(rate)
        finally:
            kernels.DECODE_MAX_TOKENS = default_max
    w = model.weights.layers[0].wq
    name = args.model or f"{args.shape} ({args.layers} layers, random weights)"
    print(f"{name}, {w.dtype} weights, {args.new_tokens} greedy steps, {args.rounds} rounds A B C C B A, medians")
    one = statistics.median(rates[configs[0][0]])
    for label, batch, _ in configs:
        v = statistics.median(rates[label])
        print(f"  {label}: {v:.1f} tok/s in all = {v / one:.2f}x one sequence  (samples {[round(x, 1) for x in rates[label]]})")


if __name__ == "__main__":
    main()
