"""16-bit floats inside Numba kernels.

Numba's CPU target has no float16 or bfloat16 scalar type, so 16-bit weights are stored as uint16 and
widened here. Both helpers are one LLVM instruction each (`fpext half` is `vcvtph2ps` on x86 with F16C,
native on ARM; bf16 is the top half of an fp32), so LLVM can vectorize the loops that call them.
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic


@intrinsic
def f16_to_f32(typingctx, bits):
    """IEEE half stored in a uint16 -> float32 (exact)."""
    if bits != types.uint16:
        return None
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def bf16_to_f32(typingctx, bits):
    """bfloat16 stored in a uint16 -> float32 (exact): the bits are the top half of an fp32."""
    if bits != types.uint16:
        return None
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        wide = builder.shl(builder.zext(args[0], ir.IntType(32)), ir.Constant(ir.IntType(32), 16))
        return builder.bitcast(wide, ir.FloatType())

    return sig, codegen


@intrinsic
def f32_bits(typingctx, x):
    """The bits of a float32 as a uint32."""
    if x != types.float32:
        return None
    sig = types.uint32(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return sig, codegen


@njit(inline="always")
def f32_to_bf16(x):
    """float32 -> bfloat16 bits, round to nearest even; a NaN stays a (quiet) NaN."""
    b = f32_bits(x)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16((b >> np.uint32(16)) | np.uint32(0x40))
    return np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(parallel=True, cache=True)
def f16_to_bf16_rows(src, dst):
    """dst[r, c] = bf16 of the IEEE half src[r, c] (uint16 bits, [R, C]), rows split across threads: the
    F16 -> BF16 conversion at load (dtype="bfloat16") without a float32 copy of the matrix."""
    rows, cols = src.shape
    for r in prange(rows):
        for c in range(cols):
            dst[r, c] = f32_to_bf16(f16_to_f32(src[r, c]))
