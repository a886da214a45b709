"""Decode kernels against the memory bandwidth: portable vs fast matvec per weight format.

    .venv/bin/python bench/kernels.py                  # every format, 1 and 2 threads
    .venv/bin/python bench/kernels.py --formats q4_0,q8_0 --threads 2 --reps 9
    .venv/bin/python bench/kernels.py --formats q4_1,q8_0 --threads 2 --shapes smollm2 --no-dram --tokens 0

For each format: G weights/s and GB/s (stored bytes) of the portable kernel (`quant.kernels.matvec`) and the
fast one (the format's `matvec_vnni`), on the TinyLlama shapes 2048x5632 and 5632x2048 (a few MB: they stay in
the 32 MB L3 between calls, so this is the kernels' compute speed) and on one matrix over 256 MB (every
call streams it from DRAM: what a decode step sees). F16 and BF16 as well: "portable" is their row-by-row
matvec on the stored rows, "fast" the kernel over the 16-row interleaved copy a model runs
(InterleavedDenseWeight; LLAMACPU_REPACK=0: none). Next to them,
the plain-read bandwidth of the same run: a Numba prange sum over a 1 GB float32 array. For the formats
the CPU backend interleaves at load (interleaved.FORMATS on AVX512-VNNI CPUs) "fast" is the interleaved
kernel (quant/interleaved.py), what a model runs; the others' is their row-by-row VNNI kernel.

Then prefill: matmul of n = 128 tokens, portable vs fast vs BLAS sgemm (OpenBLAS uses its own threads).

Each number is the median of --reps calls (the best in brackets). The machine is shared: the load
average is printed before and after; compare numbers of one run only. Reports, asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numba
import numpy as np
from numba import njit, prange

from llamacpu.kernels import dense, simd
from llamacpu.quant import FORMATS, interleaved, registry
from llamacpu.quant.vnni import NO_OUT, NO_ROWS
from llamacpu.model.weights import DenseWeight, InterleavedDenseWeight

# byte offsets of the fp16 fields of each block: random bytes there could be inf/NaN
F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q4_k": (0, 2), "q6_k": (208,), "int4_g128": (0, 2),
              "q5_0": (0,), "q5_1": (0, 2), "q5_k": (0, 2), "q2_k": (80, 82), "q3_k": (108,), "iq4_nl": (0,),
              "iq4_xs": (0,)}


SMOLLM2_SHAPES = "960x576,576x576,3072x576,576x1536,49152x576"


@njit(parallel=True, fastmath=True, cache=True)
def read_sum(a):
    """Sum of a float32 array: a plain streaming read, split across the threads."""
    s = np.float32(0.0)
    for i in prange(a.shape[0]):
        s += a[i]
    return s


def random_blocks(name, rows, cols, rng):
    """Random quants with finite fp16 scales of about 0.01 (speed does not depend on the values)."""
    fmt = FORMATS[name]
    nb = cols // fmt.block_size
    b = rng.integers(0, 256, size=(rows, nb, fmt.type_size), dtype=np.uint8)
    for o in F16_FIELDS[name]:
        b[..., o:o + 2] = (rng.uniform(-1, 1, (rows, nb)) * 0.01).astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    b = b.reshape(rows, nb * fmt.type_size)
    b.flags.writeable = False  # as QuantizedWeight passes them: one compiled signature
    return b


def interleaved_kernel(name, w, cols):
    """What a model runs for format `name` where the CPU backend interleaves it at load (interleaved.FORMATS
    on VNNI CPUs): a function (w, X [n, C], out [n, R]) over the packed copy of w; None for other formats."""
    if not (simd.HAS_AVX512_VNNI and interleaved.eligible(name, w.shape[:1] + (cols,))) or \
            os.environ.get("LLAMACPU_REPACK", "1") == "0":  # as the CPU backend: the stored layout's kernel (A/B)
        return None
    packed = np.empty_like(w)
    interleaved.pack(w, packed, cols, name)
    packed.flags.writeable = False
    kernel = interleaved.KERNELS[name]
    return lambda _w, X, out: kernel(packed, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, False)


def timings(fn, reps):
    fn()  # compile / warm
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(np.min(ts))


def bandwidth(threads, reps, nbytes=1 << 30):
    a = np.ones(nbytes // 4, np.float32)
    res = {}
    for nt in threads:
        numba.set_num_threads(nt)
        med, best = timings(lambda: read_sum(a), reps)
        res[nt] = (nbytes / med / 1e9, nbytes / best / 1e9)
    del a
    return res


def fmt_rate(nweights, nbytes, med, best):
    return f"{nweights / med / 1e9:6.1f} ({nweights / best / 1e9:5.1f}) {nbytes / med / 1e9:5.1f}"


def prefill(args, threads, rng):
    """GFLOP/s of matmul (prefill of n tokens) on 2048x2048 and 5632x2048: portable, fast, and BLAS
    sgemm on the fp32 matrix for scale (the fp32 FMA peak of 2 Zen 4 cores is about 230 GFLOP/s)."""
    n = args.tokens
    print(f"\nprefill: out[n, R] = X[n, C] @ W.T, n = {n}; GFLOP/s median (best)")
    print(f"{'format':9} {'shape':>10} {'thr':>3} | {'portable':>15} | {'fast':>15} | {'BLAS sgemm fp32':>15}")
    for name in [f for f in args.formats.split(",") if f in FORMATS]:
        for rows, cols in [(2048, 2048), (5632, 2048)]:
            w = random_blocks(name, rows, cols, rng)
            X = rng.standard_normal((n, cols)).astype(np.float32)
            out = np.empty((n, rows), np.float32)
            wf = rng.standard_normal((rows, cols)).astype(np.float32)
            flop = 2.0 * n * rows * cols
            for nt in threads:
                numba.set_num_threads(nt)
                cells = []
                fast = interleaved_kernel(name, w, cols) or registry.FAST_MATMUL.get(name)
                fns = [registry.PORTABLE[name].matmul, fast, lambda w, X, out: np.matmul(X, wf.T, out=out)]
                for fn in fns:
                    if fn is None:
                        cells.append(f"{'-':>15}")
                        continue
                    reps = 3 if fn is registry.PORTABLE[name].matmul else max(3, args.reps // 2)
                    med, best = timings(lambda: fn(w, X, out), reps)
                    cells.append(f"{flop / med / 1e9:6.1f} ({flop / best / 1e9:6.1f})")
                print(f"{name:9} {f'{rows}x{cols}':>10} {nt:3d} | " + " | ".join(cells), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default=",".join(list(FORMATS) + ["f16", "bf16"]))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--reps", type=int, default=9)
    p.add_argument("--dram-mb", type=float, default=300.0, help="size of the DRAM-bound matrix")
    p.add_argument("--no-dram", action="store_true", help="skip the DRAM-bound matrix")
    p.add_argument("--tokens", type=int, default=128, help="n for the prefill (matmul) table; 0 skips it")
    p.add_argument("--shapes", default="2048x5632,5632x2048",
                   help="RxC list for the matvec table, or 'smollm2': the decode calls of SmolLM2-135M (fused q/k/v "
                        "960x576, o 576x576, fused gate/up 3072x576, down 576x1536, LM head 49152x576)")
    args = p.parse_args(argv)
    if args.shapes == "smollm2":
        args.shapes = SMOLLM2_SHAPES
    threads = [int(t) for t in args.threads.split(",")]
    rng = np.random.default_rng(0)

    load0 = os.getloadavg()
    print(f"llamacpu kernels benchmark: {numba.config.NUMBA_NUM_THREADS} CPUs for Numba, features {simd.features()}")
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    bw = bandwidth(threads, args.reps)
    for nt in threads:
        print(f"plain read (prange sum over 1 GB float32), {nt} thread(s): {bw[nt][0]:.1f} GB/s (best {bw[nt][1]:.1f})")
    print("columns: G weights/s median (best) and GB/s of stored bytes; % = GB/s over the plain read; for the formats\n"
          "interleaved at load, 'fast' is the interleaved kernel and 'stored layout' the row-by-row VNNI kernel of the\n"
          "stored blocks (LLAMACPU_REPACK=0), measured just before it")

    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    header = (f"{'format':9} {'shape':>12} {'MB':>6} {'thr':>3} | {'portable Gw/s (best)  GB/s':>26} | "
              f"{'fast Gw/s (best)  GB/s':>26} {'% bw':>5} | {'stored layout Gw/s (best) GB/s':>30} {'% bw':>5}")
    print(header)
    print("-" * len(header))
    for name in args.formats.split(","):
        cases = list(shapes)
        if not args.no_dram:
            cols = 5632
            bpr = cols * 2 if name in ("f16", "bf16") else FORMATS[name].bytes_per_row(cols)
            cases.append((int(np.ceil(args.dram_mb * 1e6 / bpr / 16)) * 16, cols))
        for rows, cols in cases:
            x = rng.standard_normal(cols).astype(np.float32)
            out = np.empty(rows, np.float32)
            stored_fn = None
            if name in ("f16", "bf16"):
                w = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint16)
                if name == "f16":
                    w = (rng.standard_normal((rows, cols)) * 0.02).astype(np.float16).view(np.uint16)
                else:
                    w &= np.uint16(0xBFFF)  # finite bf16 values
                portable = dense.matvec_f16 if name == "f16" else dense.matvec_bf16
                fast_fn = None
                if os.environ.get("LLAMACPU_REPACK", "1") != "0" and rows % 16 == 0:
                    il = InterleavedDenseWeight(DenseWeight(w, name))  # the copy a model runs
                    fast_fn = lambda w, x, out, il=il: il.matvec(x, out)  # noqa: E731
            else:
                w = random_blocks(name, rows, cols, rng)
                portable = registry.PORTABLE[name].matvec
                fast_fn = registry.FAST_MATVEC.get(name)
                mm = interleaved_kernel(name, w, cols)
                if mm is not None:  # the interleaved kernel a model runs: one token
                    stored_fn = fast_fn
                    fast_fn = lambda w, x, out, mm=mm: mm(w, x.reshape(1, -1), out.reshape(1, -1))  # noqa: E731
            nbytes = w.nbytes
            for nt in threads:
                numba.set_num_threads(nt)
                reps = args.reps if nbytes < 100e6 else max(3, args.reps // 2)
                pm, pb = timings(lambda: portable(w, x, out), reps)
                line = (f"{name:9} {f'{rows}x{cols}':>12} {nbytes / 1e6:6.1f} {nt:3d} | "
                        f"{fmt_rate(rows * cols, nbytes, pm, pb):>26} | ")
                stored = ""
                if stored_fn is not None:
                    sm, sb = timings(lambda: stored_fn(w, x, out), args.reps)
                    stored = f" | {fmt_rate(rows * cols, nbytes, sm, sb):>30} {100 * nbytes / sm / 1e9 / bw[nt][0]:4.0f}%"
                if fast_fn is not None:
                    fm, fb = timings(lambda: fast_fn(w, x, out), args.reps)
                    line += f"{fmt_rate(rows * cols, nbytes, fm, fb):>26} {100 * nbytes / fm / 1e9 / bw[nt][0]:4.0f}%"
                else:
                    line += f"{'-':>26}"
                line += stored
                print(line, flush=True)
            del w
    if args.tokens:
        prefill(args, threads, rng)
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}  "
          f"(uptime: {os.popen('uptime').read().strip()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
