"""llamacpu: Llama inference on the CPU with NumPy and Numba."""
