"""How fast each block format's quantizer runs (the NumPy references of llamacpu/quant, which `llamacpu quantize`
and `from_pretrained(..., quantization=...)` use): M weights/s on a TinyLlama-shaped matrix (2048 x 5632) with
1 thread and with every Numba thread (quant/common.py quantize_rows runs a thread per core over L2-sized row
pieces; NumPy releases the GIL inside its array operations), and whether both give the same bytes.

    .venv/bin/python bench/quantize_speed.py [--formats q4_k,iq4_xs] [--reps 2] [--shape 2048x5632]

Reports, asserts nothing (byte equality with ggml's quantizers and the error bounds are tested in
tests/test_quant.py).
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from llamacpu.quant import kernels


def main(argv=None) -> int:
    modules = {m.NAME: m for m in kernels.MODULES}
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default=",".join(modules))
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--shape", default="2048x5632")
    args = p.parse_args(argv)
    R, C = (int(v) for v in args.shape.split("x"))
    w = (np.random.default_rng(0).standard_normal((R, C)) * 0.02).astype(np.float32)
    threads = numba.get_num_threads()
    print(f"format    1 thread M w/s   {threads} threads M w/s   ratio   same bytes   [{R}x{C}]")
    for fmt in args.formats.split(","):
        rate, out = {}, {}
        for n in (1, threads):
            numba.set_num_threads(n)
            best = float("inf")
            for _ in range(args.reps):
                t = time.perf_counter()
                out[n] = modules[fmt].quantize(w)
                best = min(best, time.perf_counter() - t)
            rate[n] = w.size / best / 1e6
        numba.set_num_threads(threads)
        print(f"{fmt:9s} {rate[1]:14.1f}   {rate[threads]:15.1f}   {rate[threads] / rate[1]:5.2f}x   "
              f"{np.array_equal(out[1], out[threads])}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
