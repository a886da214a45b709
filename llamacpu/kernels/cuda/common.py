"""What every CUDA kernel shares: the launch geometry, block reductions, and 16-bit floats from their bits.

Every kernel loops over its work items with a stride of the whole grid (`for item in range(first, n,
stride)`), so any grid is correct and only speed depends on it. A real GPU gets one block (or thread)
per item; Numba's CUDA simulator, which runs each simulated thread as a Python thread, gets one block
of one thread that loops over everything (thousands of threads would take minutes there).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import config, cuda

SIMULATOR = bool(config.ENABLE_CUDASIM)  # NUMBA_ENABLE_CUDASIM=1: kernels run as Python on the CPU

MAX_THREADS = 256  # threads per block of any kernel here (sizes the shared reduction buffers)


@dataclass(frozen=True)
class Geometry:
    """How many threads work on what. `lanes` and `threads` are powers of two (tree reductions); any
    other positive values are correct, and only speed depends on them."""

    lanes: int = 32  # matvec: threads sharing one matrix row (a warp)
    rows: int = 4  # matvec: matrix rows per block (block = lanes x rows threads)
    tile: int = 16  # matmul: tile x tile threads per block, matmul.MICRO^2 outputs each; <= matmul.TILE
    threads: int = 128  # every other kernel: threads per block
    max_blocks: int = 1 << 30  # cap on blocks per launch (the kernels loop over the rest)

    def __post_init__(self):
        pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
        if not (pow2(self.lanes) and pow2(self.threads) and self.rows > 0 and self.tile > 0 and self.max_blocks > 0):
            raise ValueError(f"bad CUDA launch geometry {self}")
        if self.lanes * self.rows > MAX_THREADS or self.threads > MAX_THREADS:
            raise ValueError(f"{self}: at most {MAX_THREADS} threads per block")

    def blocks(self, items: int, per_block: int = 1) -> int:
        """Blocks for `items` work items of which one block takes `per_block` at a time."""
        return max(1, min(self.max_blocks, -(-items // per_block)))


GPU = Geometry()
SIMULATED = Geometry(lanes=1, rows=1, tile=1, threads=1, max_blocks=1)
DEFAULT = SIMULATED if SIMULATOR else GPU


def device(fn):
    """`cuda.jit(device=True)` for helpers that use no `cuda.*` API (weight decoding, dot products).
    In the simulator they stay plain Python functions: the simulator's set-up of each device-function
    call costs more than these bodies, and they are called once per weight."""
    return fn if SIMULATOR else cuda.jit(device=True)(fn)


# ---- barriers and reductions over the threads of a block ---------------------------------------------
# These helpers are shared by several kernel modules. On the GPU `block_api` is numba.cuda itself. In the
# simulator it stands for the simulated cuda module of the running kernel: the simulator hands a device
# function that module by swapping it into the function's module globals for the duration of each call,
# and numba 0.68's built-in simulator swaps it back while other threads of the block are still inside
# (they then see the real numba.cuda and fail). Plain functions that look the module up do not race.
# A block of one thread (the simulator's geometry) skips the barriers: each costs a hand-over of Python's
# GIL there. On a GPU the test is the same for the whole block, so it never diverges.

if SIMULATOR:
    from numba.cuda.simulator.kernel import _get_kernel_context

    class _RunningKernel:
        def __getattr__(self, name):
            return getattr(_get_kernel_context(), name)

    block_api = _RunningKernel()
    block_helper = device  # (a plain function in the simulator)
else:
    block_api = cuda
    block_helper = cuda.jit(device=True)


@block_helper
def barrier():
    """cuda.syncthreads(), except in a block of one thread."""
    if block_api.blockDim.x * block_api.blockDim.y > 1:
        block_api.syncthreads()


@block_helper
def row_sum(value, buf):
    """Sum of `value` over the blockDim.x threads of this thread's row (threadIdx.y) of the block,
    returned to each of them: a tree in shared memory `buf` (float32 [>= block size]). Every thread of
    the block must call it (it synchronises the block)."""
    lanes = block_api.blockDim.x
    if lanes == 1:
        return value
    lane = block_api.threadIdx.x
    base = block_api.threadIdx.y * lanes
    buf[base + lane] = value
    block_api.syncthreads()
    step = lanes // 2
    while step > 0:
        if lane < step:
            buf[base + lane] += buf[base + lane + step]
        block_api.syncthreads()
        step //= 2
    total = buf[base]
    block_api.syncthreads()  # everyone has read it before `buf` is reused
    return total


@block_helper
def row_max(value, buf):
    """Like `row_sum`, with max."""
    lanes = block_api.blockDim.x
    if lanes == 1:
        return value
    lane = block_api.threadIdx.x
    base = block_api.threadIdx.y * lanes
    buf[base + lane] = value
    block_api.syncthreads()
    step = lanes // 2
    while step > 0:
        # (an `if`, not the builtin max: numba 0.68's built-in numba.cuda fails to compile max(f32, f32))
        if lane < step and buf[base + lane + step] > buf[base + lane]:
            buf[base + lane] = buf[base + lane + step]
        block_api.syncthreads()
        step //= 2
    total = buf[base]
    block_api.syncthreads()
    return total


# ---- 16-bit floats from their bits ------------------------------------------------------------------
# Weights keep the host's storage: float16 / bfloat16 as uint16 bits, fp16 scales as two bytes inside
# quantized blocks. On the GPU the widening is one instruction (libdevice); the simulator has no
# libdevice, so there the same functions are written with NumPy scalar views.

if SIMULATOR:
    def f16_to_f32(bits):
        """IEEE half bits (an integer 0..65535) -> float32, exactly."""
        return np.float32(np.uint16(bits).view(np.float16))

    def bf16_to_f32(bits):
        """bfloat16 bits (an integer 0..65535) -> float32: the top half of an fp32."""
        return np.uint32(np.uint32(bits) << np.uint32(16)).view(np.float32)
else:
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def f16_to_f32(bits):
        """IEEE half bits (an integer 0..65535) -> float32, exactly (cvt.f32.f16)."""
        return libdevice.half2float(np.int16(bits))

    @cuda.jit(device=True)
    def bf16_to_f32(bits):
        """bfloat16 bits (an integer 0..65535) -> float32: the top half of an fp32."""
        return libdevice.int_as_float(np.int32(np.int32(bits) << 16))


@device
def f16_at(w, r, o):
    """The little-endian fp16 at byte o of row r of uint8 blocks w, as float32."""
    return f16_to_f32(np.int32(w[r, o]) | (np.int32(w[r, o + 1]) << 8))
