"""Explicit SIMD inside Numba kernels: a vector type and the few LLVM instructions the fast kernels need.

LLVM vectorizes plain Numba loops well for floats, but it never emits the integer dot-product instructions
(`vpdpbusd`, `vpdpwssd`) and it turns the block loops of quantized formats into gathers. So the fast
kernels (the `matmul_vnni` of each `llamacpu.quant` format, `llamacpu.quant.vnni`) hold vectors in ordinary local variables
and call one tiny intrinsic per instruction:

    Vec(dtype, n)            the Numba type of an LLVM <n x dtype> value: lives in a register
    load(a, i, n)            <n x a.dtype> from a[i : i + n] (1-D contiguous a, any alignment)
    load_splat(a, i, n)      <n x a.dtype>, every lane a[i] (a broadcast load)
    store(a, i, v)           a[i : i + n] = v
    view(a, i)               a 1-D array starting at element i of a (i may be negative), no refcount
    splat(s, n)              <n x typeof(s)>, every lane s
    a + b, a - b, a * b, a & b, a | b, a ^ b, a >> k, a << k      lane-wise (k an integer or a vector)
    sext(v, t), zext(v, t), trunc(v, t), sitofp(v), fp16_to_f32(v), bitcast(v, t)
    fma(a, b, c)             a * b + c (float lanes, one rounding)
    vmax(a, b), hmax(v)      lane-wise maximum; the largest lane of an integer vector
    round_i32(v)             float32 lanes rounded to nearest-even int32 lanes
    hsum(v), hsum_int(v)     the sum of the lanes (float: reassociated into one reduction tree)
    shuffle(mask), shuffle2(mask)   factories of constant shuffles: shuffle(m)(a), shuffle2(m)(a, b)
    bit_bytes(m, n)          <n x u8>: 0xFF where bit i of the integer m is set (AVX512-BW)
    pshufb(table, idx)       16-entry byte lookup per 16-byte lane (AVX2 / AVX512-BW)
    dpbusd(acc, u8, s8)      VNNI: acc[i] += sum_k u8[4i + k] * s8[4i + k]  (u8 unsigned, s8 signed bytes)
    dpwssd(acc, a16, b16)    VNNI: acc[i] += a16[2i] * b16[2i] + a16[2i + 1] * b16[2i + 1]  (signed words)
    dpbf16ps(acc, a, b)      AVX512-BF16: acc[i] += a[2i] * b[2i] + a[2i + 1] * b[2i + 1]  (bf16 bits as i16)
    prefetch(a, i)           hint: the cache line holding a[i] will be read soon (never faults)

`n` is always a literal integer (16, 32, 64): the vector width is part of the type. dpbusd / dpwssd /
dpbf16ps exist only on CPUs with the matching features: check `HAS_AVX512_VNNI` (and `HAS_AVX512_BF16`)
before calling a kernel that uses them; LLVM aborts the compilation on other CPUs.

The CPU features come from LLVM's view of the host (`llvmlite.binding.get_host_cpu_features()`), the same
view Numba compiles for. `LLAMACPU_PORTABLE=1` in the environment sets every flag to False, so the
portable kernels run on any machine (tests use it to check both paths).
"""
from __future__ import annotations

import operator
import os

import llvmlite.binding as llvm_binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, models, overload, register_model

# ---------------------------------------------------------------------------------------------
# CPU features
# ---------------------------------------------------------------------------------------------


def _host_features() -> dict:
    try:
        return {k: bool(v) for k, v in llvm_binding.get_host_cpu_features().items()}
    except Exception:  # non-x86 hosts may not report a feature map; the portable path covers them
        return {}


PORTABLE = os.environ.get("LLAMACPU_PORTABLE", "") not in ("", "0")
_F = {} if PORTABLE else _host_features()

# The fast quantized kernels: 512-bit vectors, byte/word permutes (avx512bw), vpdpbusd/vpdpwssd (vnni),
# vcvtph2ps (f16c). Zen 4, Ice Lake and later Intel server/client parts with AVX-512.
HAS_AVX512_VNNI = all(_F.get(f, False) for f in ("avx512f", "avx512bw", "avx512vl", "avx512vnni", "f16c"))
# vdpbf16ps (Zen 4, Cooper Lake, Sapphire Rapids). No kernel uses it yet: it needs x rounded to bf16,
# which costs as much precision as int8 activations.
HAS_AVX512_BF16 = HAS_AVX512_VNNI and _F.get("avx512bf16", False)


def features() -> dict:
    """The flags above, for reports and benchmarks."""
    return {"portable_forced": PORTABLE, "avx512_vnni": HAS_AVX512_VNNI, "avx512_bf16": HAS_AVX512_BF16,
            "cpu": llvm_binding.get_host_cpu_name()}


# ---------------------------------------------------------------------------------------------
# The vector type
# ---------------------------------------------------------------------------------------------


class VecType(types.Type):
    """<n x dtype> as one LLVM vector value (a register): dtype a Numba integer or float type."""

    def __init__(self, dtype, n: int):
        self.dtype = dtype
        self.n = int(n)
        super().__init__(name=f"Vec({dtype}, {n})")


def Vec(dtype, n: int) -> VecType:
    return VecType(dtype, n)


@register_model(VecType)
class _VecModel(models.PrimitiveModel):
    def __init__(self, dmm, fe_type):
        elem = dmm.lookup(fe_type.dtype).get_value_type()
        super().__init__(dmm, fe_type, ir.VectorType(elem, fe_type.n))


def _lit(t):
    """The value of a literal integer argument, else None (typing then fails with a clear signature)."""
    return t.literal_value if isinstance(t, types.IntegerLiteral) else None


def _llvm(dtype):
    if isinstance(dtype, types.Float):
        return ir.FloatType() if dtype.bitwidth == 32 else ir.DoubleType()
    return ir.IntType(dtype.bitwidth)


def _target_dtype(t):
    """A dtype argument: np.int16, types.int16 (NumberClass) or a literal."""
    if isinstance(t, types.NumberClass):
        return t.instance_type
    if isinstance(t, types.TypeRef):
        return t.instance_type
    return None


def _data_ptr(context, builder, arrty, arr, index, elem_llty):
    """Pointer to element `index` of a contiguous array (no bounds or wraparound checks)."""
    ary = context.make_array(arrty)(context, builder, arr)
    base = builder.bitcast(ary.data, elem_llty.as_pointer())
    return builder.gep(base, [index])


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


@intrinsic
def prefetch(typingctx, a, i):
    """Hint that the cache line holding a[i] will be read soon (llvm.prefetch: read, keep in all levels). A
    prefetch never faults, so i may point past the array's end."""
    if not isinstance(a, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
        p = _data_ptr(context, builder, a, args[0], args[1], ir.IntType(8))
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0")
        builder.call(fn, [builder.bitcast(p, i8p), i32(0), i32(3), i32(1)])  # read, locality 3, data
        return context.get_dummy_value()

    return types.void(a, i), codegen


@intrinsic
def load(typingctx, a, i, n):
    """<n x a.dtype> from a[i : i + n]; align 1, no bounds check."""
    width = _lit(n)
    if not isinstance(a, types.Array) or not isinstance(i, types.Integer) or width is None:
        return None
    vt = VecType(a.dtype, width)

    def codegen(context, builder, sig, args):
        elem = _llvm(a.dtype)
        p = _data_ptr(context, builder, a, args[0], args[1], elem)
        return builder.load(builder.bitcast(p, ir.VectorType(elem, width).as_pointer()), align=1)

    return vt(a, i, n), codegen


@intrinsic
def load_splat(typingctx, a, i, n):
    """<n x a.dtype>, every lane a[i]: one broadcast load (or an {1toN} operand); no bounds check."""
    width = _lit(n)
    if not isinstance(a, types.Array) or not isinstance(i, types.Integer) or width is None:
        return None
    vt = VecType(a.dtype, width)

    def codegen(context, builder, sig, args):
        p = _data_ptr(context, builder, a, args[0], args[1], _llvm(a.dtype))
        return _broadcast(builder, builder.load(p), width)

    return vt(a, i, n), codegen


@intrinsic
def store(typingctx, a, i, v):
    """a[i : i + n] = v; align 1, no bounds check."""
    if not isinstance(a, types.Array) or not isinstance(v, VecType) or v.dtype != a.dtype:
        return None

    def codegen(context, builder, sig, args):
        elem = _llvm(a.dtype)
        p = _data_ptr(context, builder, a, args[0], args[1], elem)
        builder.store(args[2], builder.bitcast(p, ir.VectorType(elem, v.n).as_pointer()), align=1)
        return context.get_dummy_value()

    return types.none(a, i, v), codegen


@intrinsic
def view(typingctx, a, i):
    """The 1-D contiguous array a[i:] (same length, so its end lies past a's by i elements), where i may be
    negative: pointer arithmetic only, no bounds or wraparound check. The view has no meminfo, so creating
    it costs no reference-count update (an atomic on the parent's counter: contended between threads inside
    a parallel loop); it must not outlive a."""
    if not isinstance(a, types.Array) or a.ndim != 1 or a.layout != "C" or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        src = context.make_array(a)(context, builder, args[0])
        out = context.make_array(a)(context, builder)
        start = context.cast(builder, args[1], sig.args[1], types.intp)
        context.populate_array(out, data=builder.gep(src.data, [start]), shape=src.shape, strides=src.strides,
                               itemsize=src.itemsize, meminfo=None)
        return out._getvalue()

    return a(a, i), codegen


# ---------------------------------------------------------------------------------------------
# Construction and conversion
# ---------------------------------------------------------------------------------------------


@intrinsic
def splat(typingctx, s, n):
    """<n x typeof(s)> with every lane s (insertelement + shufflevector: one vpbroadcast)."""
    width = _lit(n)
    if not isinstance(s, (types.Integer, types.Float)) or width is None:
        return None
    s = getattr(s, "literal_type", s)
    vt = VecType(s, width)

    def codegen(context, builder, sig, args):
        return _broadcast(builder, args[0], width)

    return vt(s, n), codegen


def _broadcast(builder, val, width):
    vty = ir.VectorType(val.type, width)
    one = builder.insert_element(ir.Constant(vty, ir.Undefined), val, ir.Constant(ir.IntType(32), 0))
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
    return builder.shuffle_vector(one, ir.Constant(vty, ir.Undefined), zeros)


def _cast_intrinsic(kind):
    """sext / zext / trunc / bitcast of a vector to another integer dtype (same lane count, or for
    bitcast the same total bits)."""

    @intrinsic
    def cast(typingctx, v, dtype):
        to = _target_dtype(dtype)
        if not isinstance(v, VecType) or to is None:
            return None
        n = v.n if kind != "bitcast" else v.n * v.dtype.bitwidth // to.bitwidth
        vt = VecType(to, n)

        def codegen(context, builder, sig, args):
            target = ir.VectorType(_llvm(to), n)
            return getattr(builder, kind)(args[0], target)

        return vt(v, dtype), codegen

    cast.__doc__ = f"LLVM `{kind}` of a vector to lanes of `dtype`."
    return cast


sext = _cast_intrinsic("sext")  # sign-extend each lane (vpmovsx*)
zext = _cast_intrinsic("zext")  # zero-extend each lane (vpmovzx*)
trunc = _cast_intrinsic("trunc")  # keep the low bits of each lane (vpmov*)
bitcast = _cast_intrinsic("bitcast")  # reinterpret the register's bits with other lanes


@intrinsic
def sitofp(typingctx, v):
    """Signed integer lanes -> float32 lanes (vcvtdq2ps)."""
    if not isinstance(v, VecType) or not isinstance(v.dtype, types.Integer):
        return None
    vt = VecType(types.float32, v.n)

    def codegen(context, builder, sig, args):
        return builder.sitofp(args[0], ir.VectorType(ir.FloatType(), v.n))

    return vt(v), codegen


@intrinsic
def fp16_to_f32(typingctx, v):
    """IEEE half bits (int16 or uint16 lanes) -> float32 lanes, exact (vcvtph2ps)."""
    if not isinstance(v, VecType) or not isinstance(v.dtype, types.Integer) or v.dtype.bitwidth != 16:
        return None
    vt = VecType(types.float32, v.n)

    def codegen(context, builder, sig, args):
        half = builder.bitcast(args[0], ir.VectorType(ir.HalfType(), v.n))
        return builder.fpext(half, ir.VectorType(ir.FloatType(), v.n))

    return vt(v), codegen


# ---------------------------------------------------------------------------------------------
# Arithmetic
# ---------------------------------------------------------------------------------------------


def _binop(int_op, float_op=None):
    @intrinsic
    def op(typingctx, a, b):
        if not isinstance(a, VecType):
            return None
        if isinstance(b, VecType):
            if a != b:
                return None
        elif not isinstance(b, (types.Integer, types.Float)):
            return None
        is_float = isinstance(a.dtype, types.Float)
        name = float_op if is_float else int_op
        if name is None:
            return None

        def codegen(context, builder, sig, args):
            x, y = args
            if not isinstance(b, VecType):  # vector op scalar: broadcast the scalar (a constant folds)
                y = _broadcast(builder, context.cast(builder, y, b, a.dtype), a.n)
            if name == "shr":
                return builder.ashr(x, y) if a.dtype.signed else builder.lshr(x, y)
            if is_float:
                return getattr(builder, name)(x, y, flags=("contract",))
            return getattr(builder, name)(x, y)

        return a(a, b), codegen

    return op


_vadd = _binop("add", "fadd")
_vsub = _binop("sub", "fsub")
_vmul = _binop("mul", "fmul")
_vand = _binop("and_")
_vor = _binop("or_")
_vxor = _binop("xor")
_vshr = _binop("shr")  # arithmetic for signed lanes, logical for unsigned
_vshl = _binop("shl")

for _pyop, _impl in ((operator.add, _vadd), (operator.sub, _vsub), (operator.mul, _vmul),
                     (operator.and_, _vand), (operator.or_, _vor), (operator.xor, _vxor),
                     (operator.rshift, _vshr), (operator.lshift, _vshl)):
    def _make(impl):
        def ov(a, b):
            if isinstance(a, VecType):
                return lambda a, b: impl(a, b)
            return None
        return ov
    overload(_pyop)(_make(_impl))


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma: vfmadd)."""
    if not (isinstance(a, VecType) and a == b == c and isinstance(a.dtype, types.Float)):
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        name = f"llvm.fma.v{a.n}f{a.dtype.bitwidth}"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty, vty]), name)
        return builder.call(fn, args)

    return a(a, b, c), codegen


@intrinsic
def hsum(typingctx, v):
    """The sum of the lanes of a float vector, reassociated into a tree (llvm.vector.reduce.fadd)."""
    if not isinstance(v, VecType) or not isinstance(v.dtype, types.Float):
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fnty = ir.FunctionType(vty.element, [vty.element, vty])
        fn = cgutils.get_or_insert_function(builder.module, fnty, f"llvm.vector.reduce.fadd.v{v.n}f32")
        return builder.call(fn, [ir.Constant(vty.element, -0.0), args[0]], fastmath=("reassoc", "nsz", "contract"))

    return v.dtype(v), codegen


@intrinsic
def hsum_int(typingctx, v):
    """The sum of the lanes of an integer vector (llvm.vector.reduce.add), same lane type."""
    if not isinstance(v, VecType) or not isinstance(v.dtype, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty.element, [vty]),
                                            f"llvm.vector.reduce.add.v{v.n}i{v.dtype.bitwidth}")
        return builder.call(fn, [args[0]])

    return v.dtype(v), codegen


@intrinsic
def vmax(typingctx, a, b):
    """Lane-wise maximum: llvm.umax / llvm.smax for integer lanes, llvm.maxnum for float lanes."""
    if not isinstance(a, VecType) or a != b:
        return None
    if isinstance(a.dtype, types.Float):
        name = f"llvm.maxnum.v{a.n}f{a.dtype.bitwidth}"
    else:
        name = f"llvm.{'s' if a.dtype.signed else 'u'}max.v{a.n}i{a.dtype.bitwidth}"

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty, vty]), name)
        return builder.call(fn, args)

    return a(a, b), codegen


@intrinsic
def hmax(typingctx, v):
    """The largest lane of an integer vector (llvm.vector.reduce.umax / smax)."""
    if not isinstance(v, VecType) or not isinstance(v.dtype, types.Integer):
        return None
    name = f"llvm.vector.reduce.{'s' if v.dtype.signed else 'u'}max.v{v.n}i{v.dtype.bitwidth}"

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty.element, [vty]), name)
        return builder.call(fn, [args[0]])

    return v.dtype(v), codegen


@intrinsic
def round_i32(typingctx, v):
    """float32 lanes -> int32 lanes, rounded to nearest, ties to even (llvm.rint + fptosi; as np.rint)."""
    if not isinstance(v, VecType) or v.dtype != types.float32:
        return None

    def codegen(context, builder, sig, args):
        vty = args[0].type
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty]), f"llvm.rint.v{v.n}f32")
        return builder.fptosi(builder.call(fn, [args[0]]), ir.VectorType(ir.IntType(32), v.n))

    return VecType(types.int32, v.n)(v), codegen


def shuffle(mask):
    """An intrinsic f(a): LLVM shufflevector of one vector with the constant `mask` (lane k of the result
    is lane mask[k] of a); LLVM picks the instruction (vpermw, vpermps, vpshufb, ...)."""
    mask = [int(m) for m in mask]

    @intrinsic
    def shuf(typingctx, a):
        if not isinstance(a, VecType) or max(mask) >= a.n:
            return None

        def codegen(context, builder, sig, args):
            undef = ir.Constant(args[0].type, ir.Undefined)
            return builder.shuffle_vector(args[0], undef, ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))

        return VecType(a.dtype, len(mask))(a), codegen

    return shuf


def shuffle2(mask):
    """An intrinsic f(a, b): shufflevector of two vectors of one type (lane k of the result is lane
    mask[k] of concat(a, b)): vpermi2w, vinserti64x4, vpunpck*, ..."""
    mask = [int(m) for m in mask]

    @intrinsic
    def shuf(typingctx, a, b):
        if not isinstance(a, VecType) or a != b or max(mask) >= 2 * a.n:
            return None

        def codegen(context, builder, sig, args):
            return builder.shuffle_vector(args[0], args[1], ir.Constant(ir.VectorType(ir.IntType(32), len(mask)), mask))

        return VecType(a.dtype, len(mask))(a, b), codegen

    return shuf


@intrinsic
def bit_bytes(typingctx, m, n):
    """<n x u8> from the low n bits of the integer m (or of a vector of n bits): lane i = 0xFF where bit i is
    set, else 0 (n = 32 or 64, a literal; kmov + vpmovm2b)."""
    nn = _lit(n)
    if nn not in (32, 64):
        return None
    if isinstance(m, VecType) and isinstance(m.dtype, types.Integer) and m.n * m.dtype.bitwidth == nn:
        width = nn  # a vector of exactly n bits (e.g. <4 x i16> for 64): its bits in lane order
    elif isinstance(m, types.Integer) and m.bitwidth >= nn:
        width = m.bitwidth
    else:
        return None

    def codegen(context, builder, sig, args):
        bits = builder.bitcast(args[0], ir.IntType(nn)) if isinstance(m, VecType) else args[0]
        if width > nn:
            bits = builder.trunc(bits, ir.IntType(nn))
        return builder.sext(builder.bitcast(bits, ir.VectorType(ir.IntType(1), nn)), ir.VectorType(ir.IntType(8), nn))

    return VecType(types.uint8, nn)(m, n), codegen


@intrinsic
def pshufb(typingctx, table, idx):
    """A 16-entry byte lookup: lane i = table[16 (i // 16) + idx[i]] for idx lanes in 0..15 (vpshufb: the
    table repeated in every 16-byte lane). <32 x u8> or <64 x u8> (AVX2 / AVX512-BW)."""
    if not (isinstance(table, VecType) and table == idx and table.dtype.bitwidth == 8 and table.n in (32, 64)):
        return None

    def codegen(context, builder, sig, args):
        ty = ir.VectorType(ir.IntType(8), table.n)
        name = "llvm.x86.avx512.pshuf.b.512" if table.n == 64 else "llvm.x86.avx2.pshuf.b"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ty, [ty, ty]), name)
        return builder.call(fn, [args[0], args[1]])

    return table(table, idx), codegen


# ---------------------------------------------------------------------------------------------
# x86 dot-product instructions (call only when the matching HAS_* flag is set)
# ---------------------------------------------------------------------------------------------


def _x86_dot(name512, name256, arg_dtype, acc_dtype):
    @intrinsic
    def dot(typingctx, acc, a, b):
        if not (isinstance(acc, VecType) and isinstance(a, VecType) and isinstance(b, VecType)):
            return None
        if acc.dtype != acc_dtype or acc.n not in (8, 16):
            return None
        bits = acc.n * 32
        if a.n * a.dtype.bitwidth != bits or b.n * b.dtype.bitwidth != bits:
            return None

        def codegen(context, builder, sig, args):
            acc_ty = args[0].type
            # the instruction's operand type: <n x i32> (bytes / words in 32-bit lanes), or for
            # dpbf16ps <2n x bfloat>, passed as <2n x half> (llvmlite has no bfloat; same bits)
            arg_ty = ir.VectorType(ir.HalfType(), 2 * acc.n) if isinstance(arg_dtype, ir.HalfType) \
                else ir.VectorType(arg_dtype, acc.n)
            name = name512 if acc.n == 16 else name256
            fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(acc_ty, [acc_ty, arg_ty, arg_ty]), name)
            return builder.call(fn, [args[0], builder.bitcast(args[1], arg_ty), builder.bitcast(args[2], arg_ty)])

        return acc(acc, a, b), codegen

    return dot


# acc (16 x i32) += sum over 4 byte pairs, u unsigned bytes, s signed bytes (vpdpbusd). Args: any vectors of
# 512 (or 256) bits; they are reinterpreted as bytes.
dpbusd = _x86_dot("llvm.x86.avx512.vpdpbusd.512", "llvm.x86.avx512.vpdpbusd.256", ir.IntType(32), types.int32)
dpbusd.__doc__ = "acc[i] += sum_k u[4i+k] * s[4i+k]: u unsigned bytes, s signed bytes (vpdpbusd)"
# acc (16 x i32) += sum over 2 signed word pairs (vpdpwssd).
dpwssd = _x86_dot("llvm.x86.avx512.vpdpwssd.512", "llvm.x86.avx512.vpdpwssd.256", ir.IntType(32), types.int32)
dpwssd.__doc__ = "acc[i] += a[2i]*b[2i] + a[2i+1]*b[2i+1]: signed words (vpdpwssd)"
# acc (16 x f32) += sum over 2 bf16 pairs (vdpbf16ps).
dpbf16ps = _x86_dot("llvm.x86.avx512bf16.dpbf16ps.512", "llvm.x86.avx512bf16.dpbf16ps.256", ir.HalfType(),
                    types.float32)
dpbf16ps.__doc__ = "acc[i] += a[2i]*b[2i] + a[2i+1]*b[2i+1]: bfloat16 bits in 16-bit lanes (vdpbf16ps)"
