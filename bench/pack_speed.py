"""How fast the CPU backend interleaves each block format at load (quant/interleaved.py `pack`): GB/s of stored
bytes on a TinyLlama-shaped matrix (2048 x 5632, a few MB: the packer's own speed, not the first touch of
fresh memory or of the file's pages, which a real load adds). Checks the first groups against `pack_ref`.

    .venv/bin/python bench/pack_speed.py [--formats q4_0,q6_k] [--reps 15]

Reports, asserts nothing (the equality with the NumPy reference is tested in tests/test_interleaved.py).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from llamacpu.quant import interleaved, kernels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--formats", default=",".join(interleaved.FORMATS))
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--shape", default="2048x5632")
    args = p.parse_args(argv)
    R, C = (int(v) for v in args.shape.split("x"))
    modules = {m.NAME: m for m in kernels.MODULES}
    rng = np.random.default_rng(0)
    print(f"format   MB      best ms   GB/s   (median ms)   first groups == pack_ref   [{R}x{C}]")
    for fmt in args.formats.split(","):
        b = modules[fmt].quantize((rng.standard_normal((R, C)) * 0.1).astype(np.float32))
        b.flags.writeable = False  # as a model's mapped blocks: the signature `make warm` compiled
        out = np.empty_like(b)
        interleaved.pack(b, out, C, fmt)  # compile / load from the cache
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            interleaved.pack(b, out, C, fmt)
            ts.append(time.perf_counter() - t)
        ok = np.array_equal(out[:64], interleaved.pack_ref(b[:64], C, fmt))
        print(f"{fmt:7s} {b.nbytes / 1e6:6.1f}  {min(ts) * 1e3:8.2f}  {b.nbytes / min(ts) / 1e9:5.2f}   "
              f"({np.median(ts) * 1e3:6.2f})       {ok}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
