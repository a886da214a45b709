"""Does tracing cost anything when it is off? Times decode steps with `model.tracer = None`
before llamacpu.inspect is imported, then after importing it and running a trace, and (for scale)
with a Recorder attached. A report, not a test: it prints and asserts nothing.

    .venv/bin/python bench/trace_overhead.py [MODEL] [--steps 200] [--rounds 5]
"""
import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "models" / "stories260K"
FALLBACK = ROOT / "tests" / "fixtures" / "parity" / "gqa_f16"


def decode_us(model, steps: int, rounds: int) -> float:
    """Best over rounds (the least disturbed by other processes) of the mean time of one decode step, µs."""
    per_round = []
    for _ in range(rounds):
        cache = model.new_cache(1, max_len=steps + 2)
        model.next_token_logits(np.array([[1]]), None, cache)  # the prompt: one token
        t0 = time.perf_counter()
        for i in range(steps):
            model.next_token_logits(np.array([[1 + i % 100]]), None, cache)
        per_round.append((time.perf_counter() - t0) / steps * 1e6)
    return float(min(per_round))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=str(DEFAULT if DEFAULT.is_dir() else FALLBACK))
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    from llamacpu import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(args.model, max_context=args.steps + 2)
    decode_us(model, args.steps, 2)  # warm up: load the compiled kernels, settle the caches
    assert "llamacpu.inspect" not in sys.modules
    before = decode_us(model, args.steps, args.rounds)

    from llamacpu.inspect import trace, tracing

    trace(model, np.array([[1, 2, 3, 4]]))
    assert model.tracer is None
    after = decode_us(model, args.steps, args.rounds)
    with tracing(model):
        on = decode_us(model, max(1, args.steps // 10), 1)

    print(f"model {args.model}, {args.steps} decode steps x {args.rounds} rounds (best round)")
    print(f"tracer None, before importing llamacpu.inspect: {before:9.1f} us/token ({1e6 / before:8.1f} tok/s)")
    print(f"tracer None, after a trace:                     {after:9.1f} us/token ({1e6 / after:8.1f} tok/s)"
          f"   ratio {after / before:.3f}")
    print(f"tracer on (for scale):                          {on:9.1f} us/token ({1e6 / on:8.1f} tok/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
