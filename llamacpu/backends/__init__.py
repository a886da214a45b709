"""Backends supply the named kernels the model calls (rmsnorm, rope, attention, swiglu, linear, ...)
and own the memory they run on, so `llamacpu.model.llama` is written once for every device."""
from ..errors import DeviceError
from .base import Backend
from .cpu import CPUBackend


def get_backend(device: str = "cpu"):
    if device == "cpu":
        return CPUBackend()
    if device == "cuda":
        from .cuda import CUDABackend  # raises DeviceError naming what is missing

        return CUDABackend()
    raise DeviceError(f"unknown device {device!r} (expected 'cpu' or 'cuda')")

__all__ = ["Backend", "CPUBackend", "get_backend"]
