"""numba.cuda kernels, one module per operation, each beside the NumPy reference it must match
(imported there as `reference`): rmsnorm, rope, attention (+ the KV-cache write), swiglu, add, and per
weight format (`formats`) embedding, matvec (decode) and matmul (prefill).

Importing this package imports numba.cuda: `llamacpu.backends.cuda` does so only after checking that
numba.cuda and a GPU (or the simulator, NUMBA_ENABLE_CUDASIM=1) are there.
"""
