"""Memory bandwidth of this machine, measured the way a decode step uses it: one pass reading a large
array that does not fit any cache. Decode speed is compared against this number (tok/s x bytes read
per token / measured GB/s), so that "at the ceiling" means the ceiling of this machine, today.

    .venv/bin/python bench/bandwidth.py [--gb 1.0] [--threads 2] [--reps 11] [--json]

Three readers over the same float32 array, each reported as the best of `reps` passes (on a shared
machine the slower passes measure the neighbours):
  numba_read   Numba prange reduction, one contiguous chunk per thread   (the decode kernels' pattern)
  numpy_sum    np.sum, one thread
  numpy_copy   np.copyto into a second array, one thread (read + write bytes counted)
`read_gbps` (what run.py compares with) is the best of numba_read and numpy_sum.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def _numba_reader():
    from numba import njit, prange

    @njit(parallel=True, fastmath=True, cache=False)
    def chunked_sum(a, n_chunks):
        """Sum of a float32 array: n_chunks contiguous pieces, one per prange task (vectorized inside)."""
        n = a.size
        step = (n + n_chunks - 1) // n_chunks
        partial = np.zeros(n_chunks, np.float32)
        for c in prange(n_chunks):
            lo = c * step
            hi = min(n, lo + step)
            piece = a[lo:hi]
            s = np.float32(0.0)
            for i in range(piece.size):  # indexed from 0: no negative-index wraparound check
                s += piece[i]
            partial[c] = s
        return partial.sum()

    return chunked_sum


def pass_seconds(fn, reps: int) -> list[float]:
    fn()  # first touch / compile
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)


def measure(gb: float = 1.0, threads: int | None = None, reps: int = 11) -> dict:
    """{"numba_read": GB/s, "numpy_sum": GB/s, "numpy_copy": GB/s, "read_gbps": best read, ...}."""
    import numba

    if threads:
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    n = int(gb * 1e9) // 4
    a = np.random.default_rng(0).random(n, dtype=np.float32)  # touched: every page is resident
    nbytes = a.nbytes
    chunked_sum = _numba_reader()
    n_chunks = numba.get_num_threads()
    out = {"array_gb": nbytes / 1e9, "threads": numba.get_num_threads(), "reps": reps}
    numba_t = pass_seconds(lambda: chunked_sum(a, n_chunks), reps)
    out["numba_read"] = nbytes / numba_t[0] / 1e9
    out["numba_read_median"] = nbytes / numba_t[len(numba_t) // 2] / 1e9
    out["numpy_sum"] = nbytes / pass_seconds(lambda: a.sum(), reps)[0] / 1e9
    half = a[: n // 2]
    dst = np.empty_like(half)
    out["numpy_copy"] = 2 * half.nbytes / pass_seconds(lambda: np.copyto(dst, half), reps)[0] / 1e9
    out["read_gbps"] = max(out["numba_read"], out["numpy_sum"])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0, help="array size in GB (well above the L3)")
    p.add_argument("--threads", type=int, default=None, help="Numba threads (default: all)")
    p.add_argument("--reps", type=int, default=11)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    r = measure(args.gb, args.threads, args.reps)
    if args.json:
        print(json.dumps(r))
    else:
        print(f"{r['array_gb']:.2f} GB array, best of {r['reps']}; cpus {os.cpu_count()}")
        print(f"  numba prange read ({r['threads']} threads): {r['numba_read']:6.1f} GB/s "
              f"(median pass {r['numba_read_median']:.1f})")
        print(f"  numpy sum (1 thread):          {r['numpy_sum']:6.1f} GB/s")
        print(f"  numpy copy (1 thread, r+w):    {r['numpy_copy']:6.1f} GB/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
