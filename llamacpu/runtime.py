"""Process-wide execution settings for the Numba kernels: the threading layer and its lock.

Numba runs `prange` loops on one of three threading layers (numba.readthedocs.io, "The Threading
Layers"): TBB (thread- and fork-safe, but its pip build does not load with numba 0.68 here), OpenMP
(GNU libgomp: a process that forks after using it is killed in the child on its next parallel
kernel), and workqueue (fork-safe, but it aborts the process if two threads launch kernels at once).
We choose workqueue, which survives `os.fork`, and make it thread-safe by serializing kernel
launches: every forward chunk holds `KERNEL_LOCK`. Several Python threads can then generate at
once (their steps interleave token by token), two models can live in one process, and a forked
child keeps working. Set NUMBA_THREADING_LAYER yourself to override (then you own its caveats).
"""
import os
import threading

import numba

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

KERNEL_LOCK = threading.RLock()
