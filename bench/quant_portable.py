"""Decode and prefill speed of the quantized kernels: `python bench/quant_portable.py` (reports, asserts nothing).

For each format: matvec on one rows x cols matrix (4-bit ones fit in the 32 MB L3 of the reference
machine, so this is the kernels' compute speed) and on a rotation through enough distinct matrices to
exceed the L3 (what a decode step sees: every weight read once from DRAM), plus matmul for n tokens.
Weights are random blocks with sane scales (speed does not depend on the values). Prints G weights/s,
GB/s of stored bytes, and GFLOP/s for matmul; each the best of several calls. Close other programs: 2 cores are easily disturbed.
"""
import argparse
import time

import numba
import numpy as np

from llamacpu.quant import FORMATS
from llamacpu.quant import QuantizedWeight

F16_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q4_k": (0, 2), "q6_k": (208,), "int4_g128": (0, 2)}


def random_weight(name, rows, cols, rng):
    fmt = FORMATS[name]
    nb = cols // fmt.block_size
    b = rng.integers(0, 256, size=(rows, nb, fmt.type_size), dtype=np.uint8)
    for o in F16_FIELDS[name]:
        b[..., o:o + 2] = (rng.uniform(-1, 1, (rows, nb)) * 0.01).astype("<f2").view(np.uint8).reshape(rows, nb, 2)
    return QuantizedWeight.from_blocks(name, b.reshape(rows, -1), (rows, cols))


def best_time(fn, reps):
    """The fastest of `reps` calls: on a shared 2-core machine the others measure the neighbours."""
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.min(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--cols", type=int, default=5632)
    p.add_argument("--tokens", type=int, default=64, help="n for matmul")
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--dram-bytes", type=float, default=256e6, help="total size of the rotation")
    p.add_argument("--formats", default=",".join(FORMATS))
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    R, C = args.rows, args.cols
    x = rng.standard_normal(C).astype(np.float32)
    out = np.empty(R, np.float32)
    X = rng.standard_normal((args.tokens, C)).astype(np.float32)
    outm = np.empty((args.tokens, R), np.float32)
    print(f"{R}x{C}, {numba.get_num_threads()} threads; matmul n={args.tokens}")
    print(f"{'format':10} {'MB':>6} | {'cached Gw/s':>11} {'GB/s':>6} | {'DRAM Gw/s':>9} {'GB/s':>6} | {'matmul GFLOP/s':>14}")
    for name in args.formats.split(","):
        w = random_weight(name, R, C, rng)
        t1 = best_time(lambda: w.matvec(x, out), args.reps)
        k = max(2, int(np.ceil(args.dram_bytes / w.nbytes)))
        ws = [w] + [random_weight(name, R, C, rng) for _ in range(k - 1)]
        it = iter(range(10 ** 9))
        td = best_time(lambda: ws[next(it) % k].matvec(x, out), max(args.reps, 2 * k))
        tm = best_time(lambda: w.matmul(X, outm), 3)
        print(f"{name:10} {w.nbytes / 1e6:6.1f} | {R * C / t1 / 1e9:11.1f} {w.nbytes / t1 / 1e9:6.1f} | "
              f"{R * C / td / 1e9:9.1f} {w.nbytes / td / 1e9:6.1f} | {2 * args.tokens * R * C / tm / 1e9:14.1f}")
        del ws


if __name__ == "__main__":
    main()
