"""The CUDA backend: numba.cuda device arrays and the kernels of `llamacpu.kernels.cuda`.

Weights are copied to the GPU once (`prepare_weights`), in the format they were loaded in; the
activations, the workspace and the KV cache live there too. The host sees only token ids, positions
and RoPE frequencies going in, and the final hidden states and logits coming out (sampling stays on
the host). Without numba.cuda, a GPU or its driver, constructing the backend raises DeviceError naming
what is missing: there is no fall-back to the CPU.

Under Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1) the same kernels run as Python on the CPU; the
tests compare them there with the CPU backend.
"""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np

from ..errors import DeviceError, InputError, UnsupportedError
from ..model.weights import DenseWeight, Weight
from .base import Backend

INSTALL_HINT = "install the [cuda] extra: pip install 'llamacpu[cuda]'"


def _import_cuda():
    """numba.cuda, checked usable: DeviceError naming what is missing otherwise."""
    try:
        from numba import cuda
    except Exception as e:  # ImportError, or a broken CUDA package failing at import
        raise DeviceError(f"device='cuda' needs numba.cuda, which cannot be imported ({type(e).__name__}: "
                          f"{e}); {INSTALL_HINT}") from None
    from numba import config

    if config.ENABLE_CUDASIM:
        return cuda
    if not cuda.is_available():
        raise DeviceError(f"device='cuda' needs an NVIDIA GPU and its driver, and numba.cuda found no usable "
                          f"GPU: {_unavailable_reason(cuda)} (check with `nvidia-smi`; device='cpu' runs on the CPU)")
    try:  # the GPU is there; kernels also need the NVVM compiler, which numba-cuda[cu12] brings
        from numba.cuda.cudadrv import nvvm
        from numba.cuda.cudadrv.error import NvvmSupportError
    except ImportError:
        return cuda
    try:
        nvvm.NVVM()
    except NvvmSupportError as e:
        raise DeviceError(f"device='cuda': a GPU is present but the CUDA compiler library (libNVVM) was not "
                          f"found ({_one_line(e)}); {INSTALL_HINT}, or install a CUDA toolkit") from None
    return cuda


def _unavailable_reason(cuda) -> str:
    try:
        cuda.current_context()  # raises CudaSupportError with the driver's own reason
    except Exception as e:
        return _one_line(e)
    return "no CUDA device found"


def _one_line(e) -> str:
    return " ".join(str(e).split()).rstrip(": ") or type(e).__name__


class CUDABackend(Backend):
    name = "cuda"

    def __init__(self, geometry=None):
        self.cuda = _import_cuda()
        from ..kernels.cuda import add, attention, common, embedding, matmul, matvec, rmsnorm, rope, swiglu

        self.kernels = SimpleNamespace(add=add, attention=attention, embedding=embedding, matmul=matmul,
                                       matvec=matvec, rmsnorm=rmsnorm, rope=rope, swiglu=swiglu)  # the modules
        self.geometry = geometry or common.DEFAULT  # threads per block etc. (see kernels.cuda.common)
        self.simulator = common.SIMULATOR
        _quiet_occupancy_warnings()

    @property
    def device_name(self) -> str:
        if self.simulator:
            return "CUDA simulator"
        name = self.cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)

    # ---- memory --------------------------------------------------------------------------------------
    def zeros(self, shape, dtype=np.float32):
        return self.cuda.to_device(np.zeros(shape, dtype))

    def upload(self, host: np.ndarray):
        """Host array -> a device copy."""
        return self.cuda.to_device(np.ascontiguousarray(host))

    def to_host(self, a) -> np.ndarray:
        return a.copy_to_host()

    def prepare_weights(self, weights):
        """LlamaWeights on the host -> the same on the GPU: every matrix a CUDAWeight in its own format
        (copied once; a tied embedding stays one matrix), every norm and bias vector a device array."""
        done: dict[int, CUDAWeight] = {}

        def move(value):
            if value is None or isinstance(value, CUDAWeight):
                return value
            if isinstance(value, Weight):
                if id(value) not in done:
                    done[id(value)] = CUDAWeight(value, self)
                return done[id(value)]
            if isinstance(value, np.ndarray):
                return self.upload(np.asarray(value, np.float32))
            if isinstance(value, list):
                return [move(v) for v in value]
            if dataclasses.is_dataclass(value):
                return dataclasses.replace(value, **{f.name: move(getattr(value, f.name))
                                                     for f in dataclasses.fields(value)})
            return value

        return move(weights)

    # ---- the kernels the forward pass calls ---------------------------------------------------------------
    def embed(self, weight, ids: np.ndarray, out) -> None:
        weight.rows(ids, out=out)

    def rmsnorm(self, x, weight, eps, out) -> None:
        self.kernels.rmsnorm.launch(self.geometry, x, weight, float(eps), out)

    def rope(self, x, positions, inv_freq) -> None:
        self.kernels.rope.launch(self.geometry, x, positions, inv_freq)

    def swiglu(self, gate, up, out) -> None:
        self.kernels.swiglu.launch(self.geometry, gate, up, out)

    def store_kv(self, k_cache, v_cache, k, v, start: int) -> None:
        """k, v [B, T, KV, hd] -> cache [B, KV, S, hd] at slots start .. start+T."""
        self.kernels.attention.launch_store_kv(self.geometry, k_cache, v_cache, k, v, int(start))

    def attention(self, q, k_cache, v_cache, valid, start, scale, out, scratch=None) -> None:
        self.kernels.attention.launch(self.geometry, q, k_cache, v_cache, valid, int(start), scale, out)

    def add(self, x, y) -> None:
        self.kernels.add.launch_add(self.geometry, x, y)

    def add_bias(self, out, bias) -> None:
        self.kernels.add.launch_add_bias(self.geometry, out, bias)


def _quiet_occupancy_warnings():
    """A decode step launches small grids by nature (one token); numba warns about each one."""
    try:
        from numba import config

        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0
    except Exception:  # pragma: no cover - config layout differs between numba versions
        pass


class CUDAWeight(Weight):
    """A weight matrix [out_features, in_features] on the GPU, stored as on the host (float32, float16 or
    bfloat16 bits, or quantized blocks) and decoded inside the kernels, never as a whole.

    Implements the `Weight` protocol on device arrays: matvec(x [C], out [R]), matmul(x [n, C],
    out [n, R]), rows(ids) -> [len(ids), C]."""

    def __init__(self, host: Weight, backend: CUDABackend):
        from ..kernels.cuda.formats import FORMATS

        if isinstance(host, DenseWeight):
            data = host.data
        elif hasattr(host, "blocks") and hasattr(host, "format"):  # llamacpu.quant.QuantizedWeight
            data = host.blocks
        else:
            raise UnsupportedError(f"device='cuda' cannot run a {type(host).__name__} ({host.dtype})")
        if host.dtype not in FORMATS:
            raise UnsupportedError(f"device='cuda' has no kernels for weight format {host.dtype!r}; "
                                   f"supported: {', '.join(FORMATS)}")
        self.backend = backend
        self.shape = tuple(host.shape)
        self.dtype = host.dtype
        self.data = backend.upload(data)  # the stored representation, on the GPU

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def _check(self, name, a, shape):
        if tuple(a.shape) != shape or a.dtype != np.float32:
            raise InputError(f"{name} must be float32 {list(shape)}, got {a.dtype} {tuple(a.shape)}")

    def matvec(self, x, out) -> None:
        rows, cols = self.shape
        self._check("x", x, (cols,))
        self._check("out", out, (rows,))
        self.backend.kernels.matvec.launch(self.dtype, self.backend.geometry, self.data, x, out)

    def matmul(self, x, out) -> None:
        rows, cols = self.shape
        n = x.shape[0]
        self._check("x", x, (n, cols))
        self._check("out", out, (n, rows))
        if n == 1:
            self.matvec(x[0], out[0])
        elif n:
            self.backend.kernels.matmul.launch(self.dtype, self.backend.geometry, self.data, x, out)

    def rows(self, ids, out=None):
        """float32 [len(ids), in_features] on the device: the selected rows, decoded."""
        if isinstance(ids, np.ndarray) or isinstance(ids, (list, tuple)):
            ids = np.asarray(ids)
            if ids.ndim != 1 or (ids.size and (ids.min() < 0 or ids.max() >= self.shape[0])):
                raise InputError(f"row ids must be a 1-D array of values in [0, {self.shape[0]})")
            ids = self.backend.upload(ids.astype(np.int64))
        if out is None:
            out = self.backend.zeros((ids.shape[0], self.shape[1]))
        if ids.shape[0]:
            self.backend.kernels.embedding.launch(self.dtype, self.backend.geometry, self.data, ids, out)
        return out

    def dequantize(self) -> np.ndarray:
        """float32 [out_features, in_features] on the host (tests, conversion; never decode)."""
        from ..kernels.cuda.formats import reference_dequantize

        return reference_dequantize(self.dtype, self.backend.to_host(self.data), self.shape[1])
