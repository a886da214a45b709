"""Numba kernels, one module per operation; each kernel has its NumPy reference beside it."""
