"""RMSNorm [arXiv:1910.07467, eq. (4)]: y = x / sqrt(mean(x^2) + eps) * g."""
import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _row(x, weight, eps, out, i):
    d = x.shape[1]
    ss = np.float32(0.0)
    for j in range(d):
        ss += x[i, j] * x[i, j]
    inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
    for j in range(d):
        out[i, j] = weight[j] * (x[i, j] * inv)


@njit(parallel=True, cache=True, fastmath=True)
def rmsnorm(x, weight, eps, out):
    """x: float32 [N, D], weight: float32 [D] -> out: float32 [N, D] (out may be x). Rows in parallel."""
    for i in prange(x.shape[0]):
        _row(x, weight, eps, out, i)


@njit(cache=True, fastmath=True)
def rmsnorm_serial(x, weight, eps, out):
    """The same on the calling thread: for one decode token a thread launch costs more than the work."""
    for i in range(x.shape[0]):
        _row(x, weight, eps, out, i)


def rmsnorm_ref(x, weight, eps):
    x = x.astype(np.float32)
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)))
