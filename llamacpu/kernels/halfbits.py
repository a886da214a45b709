"""16-bit floats inside Numba kernels.

Numba's CPU target has no float16 or bfloat16 scalar type, so 16-bit weights are stored as uint16 and
widened here. Both helpers are one LLVM instruction each (`fpext half` is `vcvtph2ps` on x86 with F16C,
native on ARM; bf16 is the top half of an fp32), so LLVM can vectorize the loops that call them.
"""
from llvmlite import ir
from numba import types
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
