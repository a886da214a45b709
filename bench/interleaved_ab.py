"""A/B of two versions of the interleaved kernels (quant/interleaved.py) in one process, calls alternating, so
the machine's drift (this VM's speed changes by 30% from minute to minute) hits both alike.

    cp llamacpu/quant/interleaved.py llamacpu/quant/_b.py      # then edit _b.py
    .venv/bin/python bench/interleaved_ab.py llamacpu.quant.interleaved llamacpu.quant._b q6_k,q3_k [--tokens 1]

For each format and shape (by default TinyLlama's, in L3: the kernels' compute speed; --shapes for others,
e.g. 140704x5632: a Q2_K matrix of 260 MB streamed from DRAM by each call): G weights/s of A and B (medians of
--calls alternating calls each), the median of the per-pair speed ratios B/A, and whether B's outputs equal
A's bit for bit. Each module must define pack(blocks, out, cols, fmt) and KERNELS. Asserts nothing.
"""
from __future__ import annotations

import argparse
import importlib
import time

import numpy as np

from kernels import random_blocks  # bench/kernels.py: random blocks with finite scales
from llamacpu.quant.vnni import NO_OUT, NO_ROWS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("formats")
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--calls", type=int, default=100)
    p.add_argument("--shapes", default="2048x5632,5632x2048",
                   help="R x C matrices; e.g. 140704x5632 for a Q2_K matrix of 260 MB, streamed from DRAM by each call")
    args = p.parse_args(argv)
    mods = [importlib.import_module(m) for m in (args.a, args.b)]
    rng = np.random.default_rng(0)
    n = args.tokens
    for fmt in args.formats.split(","):
        line = [fmt]
        for R, C in (tuple(int(v) for v in shape.split("x")) for shape in args.shapes.split(",")):
            w = random_blocks(fmt, R, C, rng)
            runs = []
            for mod in mods:
                packed = np.empty_like(w)
                mod.pack(w, packed, C, fmt)
                packed.flags.writeable = False
                runs.append((mod.KERNELS[fmt], packed, np.empty((n, R), np.float32)))
            X = rng.standard_normal((n, C)).astype(np.float32)
            for k, packed, out in runs:
                k(packed, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, False)
            same = np.array_equal(runs[0][2], runs[1][2])
            ts = [[], []]
            for it in range(args.calls):
                for i in ((0, 1) if it % 2 else (1, 0)):
                    k, packed, out = runs[i]
                    t = time.perf_counter()
                    k(packed, NO_ROWS, NO_ROWS, X, out, NO_OUT, NO_OUT, False)
                    ts[i].append(time.perf_counter() - t)
            ta, tb = np.array(ts[0]), np.array(ts[1])
            line.append(f"{R}x{C}: A {R * C * n / np.median(ta) / 1e9:5.1f} B {R * C * n / np.median(tb) / 1e9:5.1f} "
                        f"G w/s, B/A {np.median(ta / tb):.3f}, same bits {same}")
        print(*line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
