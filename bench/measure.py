"""One measurement in one fresh process: load one model in one engine, time it, write a JSON file.

run.py starts this script once per (engine, format, shape), with .venv's python for llamacpu and with
the peers' python (--peer-python) for llama.cpp and transformers, so that torch and llama_cpp never
enter llamacpu's environment. It imports only the standard library and NumPy at the top; the engine
is imported inside its own class.

    python bench/measure.py --engine llamacpu|llamacpp|transformers --model PATH --out result.json
        [--dtype float32|bfloat16|auto] [--threads 2] [--ctx 1024]
        [--prompt-tokens 128,512] [--new-tokens 64,256] [--reps 2] [--startup-only] [--logits FILE.npy]

What it measures, the same way for every engine:
  startup     from the moment run.py launched the process (BENCH_T0 in the environment, wall clock) to
              the first token of an 8-token prompt: interpreter, imports, load, kernel compile or cache
              load, one prefill. `import_s`, `load_s` and `first_token_s` split it. Then two decode
              steps (`warmup_steps_s`: the decode kernels' first calls) before anything is timed.
  prefill@P   P random in-vocabulary tokens into an empty KV cache, up to the logits of the last one and
              its greedy token (= the time to first token for a P-token prompt); best of `reps`. A size
              whose projected time (from the warm 8-token prefill rate) exceeds --budget-s is skipped.
  decode@N    after a 16-token prompt (not timed), N greedy steps: each feeds the last token and takes
              the argmax of the new logits. tok/s = N / total time of the N steps (fewer steps, marked
              "truncated", when the budget runs out first).
  peak RSS    VmHWM of this process at the end (weights that were touched through the memory map count).
The last-position logits of the 8-token prompt are saved with --logits for run.py's cross-engine check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

T_LAUNCH = float(os.environ.get("BENCH_T0", "0")) or time.time()
T_IMPORT0 = time.time()
# bench/ itself is sys.path[0]: its modules (kernels.py, report.py, ...) must not shadow the engines'
# own imports (transformers looks for an optional package named `kernels`)
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402

STARTUP_PROMPT = [1, 450, 4996, 17354, 1701, 432, 17204, 975]  # BOS + 7 fixed ids (< 32000, and < vocab of --quick)
DECODE_PROMPT_LEN = 16
WARMUP_STEPS = 2


def prompt_ids(n: int, vocab: int, seed: int = 0) -> list[int]:
    """n reproducible token ids in [3, vocab) after BOS (the same in every engine and process)."""
    rng = np.random.default_rng([seed, n])
    return [1] + [int(t) for t in rng.integers(3, vocab, size=n - 1)]


def peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- engines: each has load(), vocab, prefill(ids) -> next token, step(tok) -> next token ----------

class LlamacpuEngine:
    name = "llamacpu"

    def __init__(self, path, threads, ctx, dtype=None):
        from llamacpu import LlamaForCausalLM

        self.version = _version("llamacpu")
        t = time.time()
        self.model = LlamaForCausalLM.from_pretrained(path, max_context=ctx, num_threads=threads, dtype=dtype or "auto")
        self.load_s = time.time() - t
        self.cache = self.model.new_cache(1, max_len=ctx)
        self.vocab = self.model.config.vocab_size
        w = self.model.weights
        self.weight_bytes = int(w.nbytes)
        # a decode step reads every matrix once, but only one row of the embedding table
        embed_rows = 0 if w.lm_head is w.embed else w.embed.nbytes - w.embed.nbytes // w.embed.shape[0]
        self.decode_bytes = int(w.nbytes - embed_rows)
        self.kv_bytes = int(self.cache.nbytes)
        self.formats = sorted({getattr(m, "dtype", "?") for m in w.matrices()})

    def prefill(self, ids):
        self.cache.reset()
        self.last = self.model.next_token_logits(np.asarray([ids], np.int64), None, self.cache)[0]
        return int(np.argmax(self.last))

    def step(self, tok):
        self.last = self.model.next_token_logits(np.asarray([[tok]], np.int64), None, self.cache)[0]
        return int(np.argmax(self.last))


class LlamacppEngine:
    name = "llama.cpp"

    def __init__(self, path, threads, ctx, dtype=None):
        from llama_cpp import Llama

        import llama_cpp

        self.version = "llama-cpp-python " + llama_cpp.__version__
        t = time.time()
        self.llm = Llama(model_path=str(path), n_threads=threads, n_threads_batch=threads, n_ctx=ctx,
                         n_batch=512, n_ubatch=512, logits_all=False, use_mmap=True, verbose=False)
        self.load_s = time.time() - t
        self.vocab = self.llm.n_vocab()

    def _logits(self):
        # llama-cpp-python keeps no logits unless logits_all: read the last output row from the context
        ptr = self.llm._ctx.get_logits()
        return np.ctypeslib.as_array(ptr, shape=(self.vocab,))

    def prefill(self, ids):
        self.llm.reset()
        self.llm.eval(ids)
        self.last = self._logits()
        return int(np.argmax(self.last))

    def step(self, tok):
        self.llm.eval([tok])
        self.last = self._logits()
        return int(np.argmax(self.last))


class TransformersEngine:
    name = "transformers"

    def __init__(self, path, threads, ctx, dtype=None):
        import inspect

        import torch
        import transformers
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(threads)
        self.torch = torch
        self.version = f"transformers {transformers.__version__}, torch {torch.__version__}"
        t = time.time()
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype or "float32"))
        self.model.eval()
        self.load_s = time.time() - t
        self.vocab = self.model.config.vocab_size
        self.past = None
        # transformers 5.2x renamed past_key_values to cache (the old name warns)
        self.cache_kw = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"

    def _run(self, ids):
        with self.torch.inference_mode():
            out = self.model(input_ids=self.torch.tensor([ids]), use_cache=True, logits_to_keep=1,
                             **{self.cache_kw: self.past})
        self.past = getattr(out, self.cache_kw)
        self.last = out.logits[0, -1].float().numpy()
        return int(np.argmax(self.last))

    def prefill(self, ids):
        self.past = None
        return self._run(ids)

    def step(self, tok):
        return self._run([tok])


ENGINES = {"llamacpu": LlamacpuEngine, "llamacpp": LlamacppEngine, "transformers": TransformersEngine}


def _version(module: str) -> str:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return "?"


def timed_prefill(engine, ids) -> tuple[float, int]:
    t = time.perf_counter()
    tok = engine.prefill(ids)
    return time.perf_counter() - t, tok


def timed_decode(engine, n: int, budget_s: float) -> dict:
    """n greedy steps; stops early (truncated, rate from the steps done) once budget_s is spent."""
    tok = engine.prefill(prompt_ids(DECODE_PROMPT_LEN, engine.vocab))
    steps = []
    t_all = time.perf_counter()
    for _ in range(n):
        t = time.perf_counter()
        tok = engine.step(tok)
        steps.append(time.perf_counter() - t)
        if t - t_all + steps[-1] > budget_s and len(steps) >= 4:
            break
    total = time.perf_counter() - t_all
    done = len(steps)
    steps.sort()
    out = {"tokens": done, "seconds": total, "tok_s": done / total, "median_step_ms": 1e3 * steps[done // 2]}
    if done < n:
        out["truncated"] = f"stopped after {done} of {n} steps (budget {budget_s:.0f} s)"
    return out


def measure_prefills(engine, sizes, reps: int, budget_s: float, rate: float) -> dict:
    """prefill@P for each P, best of `reps`. `rate` (tok/s, from the startup prompt) projects the cost:
    a size projected past budget_s is skipped, and repetitions stop once half the budget is spent."""
    out = {}
    for n in sizes:
        projected = n / rate if rate > 0 else 0.0
        if projected > budget_s:
            out[str(n)] = {"tokens": n, "skipped": f"projected {projected:.0f} s at {rate:.2f} tok/s "
                                                   f"> budget {budget_s:.0f} s"}
            continue
        ids = prompt_ids(n, engine.vocab)
        times = []
        for _ in range(max(1, reps)):
            times.append(timed_prefill(engine, ids)[0])
            if sum(times) > budget_s / 2:
                break
        rate = n / min(times)
        out[str(n)] = {"tokens": n, "seconds": times, "tok_s": rate, "ttft_s": times[0]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", required=True, choices=sorted(ENGINES))
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument("--dtype", default=None, help="llamacpu and transformers: the dtype to load in (llamacpu: "
                   "bfloat16 = bf16 weights and bf16 prefill compute; default: as stored; transformers: float32)")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ctx", type=int, default=1024)
    p.add_argument("--prompt-tokens", default="128,512")
    p.add_argument("--new-tokens", default="64,256")
    p.add_argument("--reps", type=int, default=2, help="prefill repetitions (best is kept)")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="seconds one prefill size or one decode run may take (skipped / cut short past it)")
    p.add_argument("--startup-only", action="store_true", help="stop after the first token")
    p.add_argument("--logits", help="save the startup prompt's last logits here (.npy)")
    args = p.parse_args(argv)

    res = {"engine": args.engine, "model": args.model, "threads": args.threads, "ctx": args.ctx, "pid": os.getpid()}
    cls = ENGINES[args.engine]
    try:
        engine = cls(args.model, args.threads, args.ctx, args.dtype)
    except ImportError as e:
        res["error"] = f"not importable: {e}"
        _write(args.out, res)
        return 3
    t_loaded = time.time()
    res.update(version=engine.version, import_s=t_loaded - T_IMPORT0 - engine.load_s, load_s=engine.load_s)
    for key in ("weight_bytes", "decode_bytes", "kv_bytes", "formats"):
        if hasattr(engine, key):
            res[key] = getattr(engine, key)
    tok = engine.prefill(STARTUP_PROMPT)
    now = time.time()
    res["first_token_s"] = now - t_loaded
    res["startup_s"] = now - T_LAUNCH  # launch -> first token
    if args.logits:
        np.save(args.logits, np.array(engine.last, np.float32))
    t = time.time()
    for _ in range(WARMUP_STEPS):  # the decode path's first calls (llamacpu: its kernels load or compile)
        tok = engine.step(tok)
    res["warmup_steps_s"] = time.time() - t
    if not args.startup_only:
        t, _ = timed_prefill(engine, STARTUP_PROMPT)  # warm now: the rate that projects prefill costs
        res["prefill_8_tok_s"] = len(STARTUP_PROMPT) / t
        sizes = [int(v) for v in args.prompt_tokens.split(",") if v]
        res["prefill"] = measure_prefills(engine, sizes, args.reps, args.budget_s, res["prefill_8_tok_s"])
        res["decode"] = {}
        for n in [int(v) for v in args.new_tokens.split(",") if v]:
            res["decode"][str(n)] = timed_decode(engine, n, args.budget_s)
    res["peak_rss_mb"] = peak_rss_mb()
    _write(args.out, res)
    return 0


def _write(path, res) -> None:
    with open(path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
