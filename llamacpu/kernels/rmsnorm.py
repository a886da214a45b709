"""RMSNorm [arXiv:1910.07467, eq. (4)]: y = x / sqrt(mean(x^2) + eps) * g."""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def rmsnorm(x, weight, eps, out):
    """x: float32 [N, D], weight: float32 [D] -> out: float32 [N, D] (out may be x)."""
    n, d = x.shape
    for i in prange(n):
        ss = np.float32(0.0)
        for j in range(d):
            ss += x[i, j] * x[i, j]
        inv = np.float32(1.0) / np.sqrt(ss / np.float32(d) + np.float32(eps))
        for j in range(d):
            out[i, j] = weight[j] * (x[i, j] * inv)


def rmsnorm_ref(x, weight, eps):
    x = x.astype(np.float32)
    return weight * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(eps)))
