"""`llamacpu bench MODEL`: how fast this machine runs one model (the llamacpu side of bench/run.py).

    llamacpu bench MODEL [--prompt-tokens 128] [--new-tokens 64] [-t THREADS] [-q q4_0] [--json]

Steps, each timed: load (memory-mapped; quantizing first if -q asks), a first token from a 4-token
prompt (start-up: the Numba kernels are compiled on the first run and read from their disk cache after),
prefill of `--prompt-tokens` random in-vocabulary ids into an empty KV cache up to the first new token
(time to first token), then `--new-tokens` greedy decode steps. Reports tokens/s, the memory traffic of
decoding (bytes read per step x steps/s, as gpt-fast prints it) and the peak resident memory. Random
ids, because speed does not depend on the text, and a checkpoint without a tokenizer can be measured.
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from ..errors import InputError
from ..runtime import threading_layer
from .common import add_model_args, first_run_note, progress_wanted

WARMUP_PROMPT = [1, 2, 3, 4]


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="prefill and decode speed of one model")
    add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=bench_main)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return time.time() - (btime + start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, StopIteration, IndexError):
        return None


def peak_rss_bytes() -> int:
    """The process's high-water resident set (VmHWM; memory-mapped weights count once touched)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def decode_bytes(weights) -> int:
    """Bytes one decode step reads: every matrix once, but a single row of an untied embedding table."""
    embed = weights.embed
    skipped = 0 if weights.lm_head is embed else embed.nbytes - embed.nbytes // embed.shape[0]
    return int(weights.nbytes - skipped)


def load_model(args, say):
    """The model of the CLI's model arguments (as `llamacpu.cli.common.load`, without the tokenizer: bench
    feeds token ids, and synthetic benchmark checkpoints have none)."""
    from ..hub import resolve_model
    from ..model.causal_lm import LlamaForCausalLM, set_num_threads

    if args.threads:
        set_num_threads(args.threads)
    path = resolve_model(args.model or getattr(args, "model_pos", None), args.revision, args.hf_file)
    say(f"loading {path}")
    first_run_note(say)
    max_context = args.ctx_size or (args.prompt_tokens + args.new_tokens + len(WARMUP_PROMPT))
    model = LlamaForCausalLM.from_pretrained(path, dtype=args.dtype, max_context=max_context,
                                             quantization=args.quantization, device=args.device,
                                             progress=progress_wanted() and not args.json)
    return model, path


def run_bench(model, prompt_tokens: int, new_tokens: int, seed: int = 0) -> dict:
    """Time start-up token, prefill and decode on `model` (see the module docstring)."""
    vocab = model.config.vocab_size
    cache = model.new_cache(1)
    cache.check_room(max(prompt_tokens + new_tokens, len(WARMUP_PROMPT) + 1))

    def prefill(ids):
        cache.reset()
        logits = model.next_token_logits(np.asarray([ids], np.int64), None, cache)
        return int(np.argmax(logits[0]))

    def step(tok):
        return int(np.argmax(model.next_token_logits(np.asarray([[tok]], np.int64), None, cache)[0]))

    t = time.perf_counter()
    prefill([i % vocab for i in WARMUP_PROMPT])
    first_token_s = time.perf_counter() - t
    startup_s = process_age_s()  # process start -> this first token

    rng = np.random.default_rng(seed)
    low = 3 if vocab > 3 else 0
    ids = rng.integers(low, vocab, size=prompt_tokens).tolist()
    t = time.perf_counter()
    tok = prefill(ids)
    ttft = time.perf_counter() - t

    t = time.perf_counter()
    for _ in range(new_tokens):
        tok = step(tok)
    decode_s = time.perf_counter() - t
    return {"first_token_s": first_token_s, "startup_s": startup_s, "prompt_tokens": prompt_tokens, "prefill_s": ttft,
            "prefill_tok_s": prompt_tokens / ttft, "ttft_s": ttft, "new_tokens": new_tokens,
            "decode_s": decode_s, "decode_tok_s": new_tokens / decode_s}


def bench_main(args) -> int:
    """The `llamacpu bench` command. Prints a short report, or one JSON object with --json."""
    if args.prompt_tokens < 1 or args.new_tokens < 1:
        raise InputError(f"--prompt-tokens and --new-tokens must be at least 1, got {args.prompt_tokens} "
                         f"and {args.new_tokens}")
    if args.ctx_size and args.ctx_size < args.prompt_tokens + args.new_tokens:
        raise InputError(f"--ctx-size {args.ctx_size} is shorter than --prompt-tokens + --new-tokens "
                         f"({args.prompt_tokens + args.new_tokens})")
    import numba

    def say(msg):
        print(f"llamacpu: {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model, path = load_model(args, say)
    load_s = time.perf_counter() - t0
    r = run_bench(model, args.prompt_tokens, args.new_tokens)
    w = model.weights
    formats = sorted({str(getattr(m, "dtype", "?")) for m in w.matrices()})
    out = {
        "model": str(path),
        "formats": formats,
        "threads": numba.get_num_threads(),
        "threading_layer": threading_layer(),
        "weight_bytes": int(w.nbytes),
        "decode_bytes": decode_bytes(w),
        "load_s": load_s,
        **r,
        "decode_gbps": decode_bytes(w) * r["decode_tok_s"] / 1e9,
        "peak_rss_bytes": peak_rss_bytes(),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    mb = 1 << 20
    print(f"model        {out['model']} ({', '.join(formats)}, {_size(out['weight_bytes'])} of weights, "
          f"{out['threads']} threads, {out['threading_layer']} threading layer)")
    print(f"load         {load_s:.2f} s; first token {r['first_token_s']:.2f} s later"
          + (f" ({out['startup_s']:.2f} s from process start)" if out["startup_s"] is not None else ""))
    print(f"prefill      {r['prompt_tokens']} tokens at {r['prefill_tok_s']:.1f} tok/s "
          f"(time to first token {r['ttft_s']:.2f} s)")
    print(f"decode       {r['new_tokens']} tokens at {r['decode_tok_s']:.1f} tok/s, "
          f"{out['decode_gbps']:.1f} GB/s of weights read")
    print(f"peak memory  {out['peak_rss_bytes'] / mb:.0f} MiB resident")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"
