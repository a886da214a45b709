"""The CUDA backend on a real NVIDIA GPU, in one run: is it right (against the CPU path), and how fast
is it (prefill and decode of a TinyLlama-1.1B-shaped model in F16, Q8_0 and Q4_0)? One table.

    pip install -e '.[cuda]'              # numba-cuda with the CUDA compiler it needs
    python bench/gpu_check.py             # TinyLlama-1.1B shape: a 2.2 GB F16 checkpoint in a temp dir
    python bench/gpu_check.py --tiny      # the 'tiny' shape, a smoke test of the script itself;
    NUMBA_ENABLE_CUDASIM=1 python bench/gpu_check.py --tiny      # ... even without a GPU (simulator)
    python bench/gpu_check.py --ptx       # no GPU needed: compile every kernel to PTX (sm_80), which
                                          # type-checks them as the GPU will (the simulator does not)

For each format, the weights are loaded (and quantized) once on the host and shared by a CPU model and
a GPU model (the GPU model copies them to the device once):
  check     logits of a short prompt (--check-tokens, a few: the CPU is slow at this size) on both
            devices: max |gpu - cpu| / max |cpu| must stay under 1e-3, and the greedy next token agree;
  first     the GPU's first prefill, which compiles the kernels (numba.cuda compiles at first call);
  prefill   --prefill random tokens into an empty KV cache, to the logits of the last one; best of 2;
  decode    --decode greedy steps after that prompt; tok/s = steps / their total time, and GB/s =
            bytes of the weights x tok/s (each decode step reads every weight once).
The weights are random (synthetic), so the tokens are noise: only shapes, agreement and speed are real.
The whole run takes well under 5 minutes on an H100-class machine, compilation included. Exit status
1 if a check fails. Benchmarks report; this one also says FAIL when the GPU disagrees with the CPU.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from llamacpu.backends import CPUBackend, get_backend  # noqa: E402
from llamacpu.checkpoint.load import load  # noqa: E402
from llamacpu.checkpoint.synthetic import write_synthetic  # noqa: E402
from llamacpu.errors import DeviceError  # noqa: E402
from llamacpu.model.causal_lm import LlamaForCausalLM  # noqa: E402

FORMATS = {"F16": None, "Q8_0": "q8_0", "Q4_0": "q4_0"}  # table name -> quantization at load
TOLERANCE = 1e-3


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def check(cpu, gpu, ids) -> tuple[float, bool]:
    """(max relative logit error over the prompt, greedy next token equal)."""
    want = cpu(ids).logits[0]
    got = gpu(ids).logits[0]
    err = float(np.abs(got - want).max() / np.abs(want).max())
    return err, int(np.argmax(got[-1])) == int(np.argmax(want[-1]))


def prefill(model, ids):
    cache = model.new_cache(1)
    logits = model.next_token_logits(ids, None, cache)
    return cache, logits


def decode(model, cache, logits, steps: int):
    for _ in range(steps):
        token = int(np.argmax(logits[0]))
        logits = model.next_token_logits(np.array([[token]]), None, cache)


def run_format(name, quantization, path, args, gpu_backend) -> dict:
    (config, weights, _), load_s = timed(lambda: load(path, quantization=quantization))
    context = args.prefill + args.decode + 8
    cpu = LlamaForCausalLM(config, weights, max_context=context, backend=CPUBackend())
    gpu, upload_s = timed(lambda: LlamaForCausalLM(config, weights, max_context=context, backend=gpu_backend))
    rng = np.random.default_rng(0)
    short = rng.integers(1, config.vocab_size, (1, args.check_tokens))
    long = rng.integers(1, config.vocab_size, (1, args.prefill))

    _, first_s = timed(lambda: (prefill(gpu, long), gpu(short)))  # compiles the GPU kernels
    (err, same), check_s = timed(lambda: check(cpu, gpu, short))
    prefill_s = min(timed(lambda: prefill(gpu, long))[1] for _ in range(2))
    cache, logits = prefill(gpu, long)
    _, decode_s = timed(lambda: decode(gpu, cache, logits, args.decode))
    nbytes = gpu.weights.nbytes
    row = dict(format=name, mb=nbytes / 1e6, err=err, same=same, ok=err <= TOLERANCE and same,
               load_s=load_s, upload_s=upload_s, first_s=first_s, check_s=check_s,
               prefill_tps=args.prefill / prefill_s, decode_tps=args.decode / decode_s,
               gbps=nbytes * args.decode / decode_s / 1e9)
    del cpu, gpu, cache, weights
    gc.collect()
    return row


def compile_ptx(cc=(8, 0)) -> int:
    """Compile every kernel of llamacpu.kernels.cuda to PTX for compute capability `cc`, with the argument
    types the backend passes, without a GPU: needs the NVVM compiler (numba-cuda[cu12], or a CUDA
    toolkit that numba finds). Exit status 0 if all compile, 1 if one fails, 3 without NVVM or with the
    simulator on."""
    import types as pytypes

    from numba import config

    if config.ENABLE_CUDASIM:
        print("gpu_check --ptx: the simulator is on (NUMBA_ENABLE_CUDASIM=1); it compiles nothing", file=sys.stderr)
        return 3
    from numba import cuda
    from numba.core import types
    from numba.cuda import dispatcher
    from numba.cuda.cudadrv import nvvm

    try:
        nvvm.NVVM()
    except Exception as e:
        print(f"gpu_check --ptx: no NVVM compiler ({' '.join(str(e).split())})", file=sys.stderr)
        return 3
    # Device functions ask the current GPU for its compute capability; there is none here, so answer
    # for it (numba internals: this is the one place that needs a device to compile).
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    from llamacpu.kernels.cuda import add, attention, embedding, matmul, matvec, rmsnorm, rope, swiglu

    def arr(dtype, ndim):
        return types.Array(dtype, ndim, "C")

    f32 = types.float32
    storage = {"f32": arr(f32, 2), "f16": arr(types.uint16, 2), "bf16": arr(types.uint16, 2)}
    jobs = []
    for fmt in matvec.MATVEC:
        w = storage.get(fmt, arr(types.uint8, 2))
        jobs += [(f"matvec_{fmt}", matvec.MATVEC[fmt], (w, arr(f32, 1), arr(f32, 1))),
                 (f"matmul_{fmt}", matmul.MATMUL[fmt], (w, arr(f32, 2), arr(f32, 2))),
                 (f"embed_{fmt}", embedding.EMBED[fmt], (w, arr(types.int64, 1), arr(f32, 2)))]
    jobs += [("rmsnorm", rmsnorm.rmsnorm, (arr(f32, 2), arr(f32, 1), types.float64, arr(f32, 2))),
             ("rope", rope.rope, (arr(f32, 3), arr(types.int64, 1), arr(f32, 1))),
             ("swiglu", swiglu.swiglu, (arr(f32, 2), arr(f32, 2), arr(f32, 2))),
             ("add", add.add, (arr(f32, 2), arr(f32, 2))),
             ("add_bias", add.add_bias, (arr(f32, 2), arr(f32, 1))),
             ("store_kv", attention.store_kv, (arr(f32, 4),) * 4 + (types.int64,)),
             ("attention", attention.attention,
              (arr(f32, 4),) * 3 + (arr(types.uint8, 2), types.int64, f32, arr(f32, 4)))]
    failed = 0
    for name, kernel, signature in jobs:
        try:
            _, seconds = timed(lambda: cuda.compile_ptx(kernel.py_func, signature, cc=cc))
            print(f"ok    {name:<18} {seconds:5.2f} s")
        except Exception as e:
            failed += 1
            print(f"FAIL  {name}: {type(e).__name__}: {e}")
    print(f"{len(jobs) - failed} of {len(jobs)} kernels compile to PTX for sm_{cc[0]}{cc[1]}")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="the 'tiny' shape instead of TinyLlama-1.1B")
    p.add_argument("--prefill", type=int, help="prompt tokens timed (default 128; 8 with --tiny)")
    p.add_argument("--decode", type=int, help="greedy decode steps timed (default 64; 4 with --tiny)")
    p.add_argument("--check-tokens", type=int, default=4, help="prompt tokens of the CPU check (default 4)")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma-separated subset of " + ",".join(FORMATS))
    p.add_argument("--ptx", action="store_true", help="only compile every kernel to PTX (no GPU needed)")
    args = p.parse_args(argv)
    if args.ptx:
        return compile_ptx()
    args.prefill = args.prefill or (8 if args.tiny else 128)
    args.decode = args.decode or (4 if args.tiny else 64)
    formats = [f.strip().upper() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        p.error(f"unknown format(s) {unknown}; choose from {list(FORMATS)}")

    t0 = time.perf_counter()
    try:
        gpu_backend = get_backend("cuda")
    except DeviceError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    if gpu_backend.simulator:
        sys.setswitchinterval(1e-4)  # the simulator's block manager busy-waits on the GIL
    shape = "tiny" if args.tiny else "tinyllama-1.1b"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path, write_s = timed(lambda: write_synthetic(Path(tmp) / shape, shape, dtype="F16"))
        print(f"wrote a synthetic {shape} F16 checkpoint in {write_s:.1f} s", flush=True)
        for name in formats:
            rows.append(run_format(name, FORMATS[name], path, args, gpu_backend))
            r = rows[-1]
            print(f"{name}: load {r['load_s']:.1f} s, to GPU {r['upload_s']:.1f} s, first prefill (compiles) "
                  f"{r['first_s']:.1f} s, CPU check {r['check_s']:.1f} s", flush=True)

    from numba import cuda

    print()
    print(f"llamacpu gpu_check  {gpu_backend.device_name}  {datetime.datetime.now().isoformat(timespec='minutes')}  "
          f"numba.cuda: {getattr(cuda, 'implementation', '?')}  shape: {shape} (synthetic weights)")
    head = (f"{'format':<7}{'weights MB':>11}{'rel err':>10}{'next tok':>9}{'check':>7}"
            f"{f'prefill@{args.prefill} tok/s':>22}{f'decode@{args.decode} tok/s':>20}{'decode GB/s':>13}"
            f"{'first call s':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['format']:<7}{r['mb']:>11.1f}{r['err']:>10.1e}{'same' if r['same'] else 'DIFF':>9}"
              f"{'ok' if r['ok'] else 'FAIL':>7}{r['prefill_tps']:>22.1f}{r['decode_tps']:>20.1f}{r['gbps']:>13.1f}"
              f"{r['first_s']:>14.1f}")
    print(f"total {time.perf_counter() - t0:.0f} s (check: max |gpu - cpu| / max |cpu| <= {TOLERANCE:g} over "
          f"{args.check_tokens} prompt tokens, and the same greedy next token)")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
