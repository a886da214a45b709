"""SwiGLU [arXiv:2002.05202, eq. (5)]: FFN(x) = W_down (silu(W_gate x) * W_up x); this is the middle."""
import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def swiglu(gate, up, out):
    """gate, up: float32 [N, I] -> out = silu(gate) * up (out may alias gate)."""
    n, m = gate.shape
    for i in prange(n):
        for j in range(m):
            g = gate[i, j]
            out[i, j] = g / (np.float32(1.0) + np.exp(-g)) * up[i, j]


def swiglu_ref(gate, up):
    return gate / (1.0 + np.exp(-gate)) * up
