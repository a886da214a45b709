"""SwiGLU [arXiv:2002.05202, eq. (5)]: FFN(x) = W_down (silu(W_gate x) * W_up x); this is the middle."""
import numpy as np
from numba import njit, prange


@njit(cache=True, fastmath=True, inline="always")
def _row(gate, up, out, i):
    for j in range(gate.shape[1]):
        g = gate[i, j]
        out[i, j] = g / (np.float32(1.0) + np.exp(-g)) * up[i, j]


@njit(parallel=True, cache=True, fastmath=True)
def swiglu(gate, up, out):
    """gate, up: float32 [N, I] -> out = silu(gate) * up (out may alias gate). Rows in parallel."""
    for i in prange(gate.shape[0]):
        _row(gate, up, out, i)


@njit(cache=True, fastmath=True)
def swiglu_serial(gate, up, out):
    """The same on the calling thread (one decode token)."""
    for i in range(gate.shape[0]):
        _row(gate, up, out, i)


def swiglu_ref(gate, up):
    return gate / (1.0 + np.exp(-gate)) * up
