"""Element-wise additions on the GPU: the residual stream (x += y) and a bias on every row.
References: `x + y` and `x + bias` in NumPy."""
from __future__ import annotations

from numba import cuda


def reference(x, y):
    return x + y


@cuda.jit
def add(x, y):
    """x += y, both float32 [N, D]."""
    n, d = x.shape
    for item in range(cuda.grid(1), n * d, cuda.gridsize(1)):
        x[item // d, item % d] += y[item // d, item % d]


@cuda.jit
def add_bias(x, bias):
    """x[i] += bias for every row i; x float32 [N, D], bias float32 [D]."""
    n, d = x.shape
    for item in range(cuda.grid(1), n * d, cuda.gridsize(1)):
        x[item // d, item % d] += bias[item % d]


def launch_add(geometry, x, y) -> None:
    add[geometry.blocks(x.shape[0] * x.shape[1], geometry.threads), geometry.threads](x, y)


def launch_add_bias(geometry, x, bias) -> None:
    add_bias[geometry.blocks(x.shape[0] * x.shape[1], geometry.threads), geometry.threads](x, bias)
