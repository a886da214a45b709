"""The layer stack of one decode step as ONE compiled call (issue 12, step 3).

A decode token of SmolLM2-135M makes about 360 kernel calls from Python (30 layers x 12 ops); on a
135M model the Python side of those calls (argument checks, slicing, dispatch) cost about as much as
the kernels themselves. `decode_layers` runs the same kernels, in the same order, on the same buffers,
from compiled code: the loop of `LlamaCore.forward_chunk` for chunks of one column per sequence, down
to the final RMSNorm. It is not a second model definition: every op is the kernel the readable pass
calls (the projections' matmul_vnni, rmsnorm / rope / attention / swiglu, serial or parallel by the
same `serial_work` rule as `CPUBackend`), so results are bit-identical, which tests/test_compiled_decode.py
checks (greedy ids and every step's logits on the parity fixtures quantized at load, SmolLM2, batches).
`llamacpu.model.compiled_decode` decides when it runs.

The parallel kernels are called through the address of their compiled code (`call_native`; the addresses
come from the caller, `compiled_decode.native_address`), the very machine code the readable pass runs.
Calling them by name would link a copy of each into this function's cached library, and Numba's cache
mixes up parallel kernels called from cached functions (numba/numba#10184): that way a quantized model
run after another model in the same process got logits 1 ulp off the readable pass (uncached it was
exact, but took 28 s to compile in every process). The serial kernels are ordinary calls.

Weights are passed by address too (`addr`, `rows`, `cols`: bytes per row), 7 per layer (q, k, v, o, gate,
up, down), with `kind` = the matrix's format ID; `kernel[kind]` is that format's matmul_vnni (or its
interleaved kernel, or dense.matmul16_shared_* for F16/BF16 matrices interleaved at load: one signature). A typed
list of arrays would do the same, but building one from Python compiles Numba's list methods in every
process (2.5 s here); the caller keeps the arrays alive (CompiledDecode holds them). Biases: rows of
`biases` (bias_slot -1: none). F32 models keep the readable pass.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from .attention import attention_serial
from .rmsnorm import rmsnorm_serial
from .rope import rope_serial
from .swiglu import swiglu_serial

Q, K, V, O, GATE, UP, DOWN = range(7)  # a layer's matrices, in table order
# the parallel kernels decode_layers calls by address (`parallel` argument: their addresses, this order)
MATMUL, RMSNORM, ROPE, ATTENTION, SWIGLU = range(5)


@intrinsic
def call_native(typingctx, addr, args):
    """Call the Numba-compiled function at address `addr` (compiled for exactly the types of the tuple
    `args`, returning nothing) with the values of `args`; an exception it raises propagates."""
    if not isinstance(addr, types.Integer) or not isinstance(args, types.BaseTuple):
        return None
    argtys = tuple(args.types)

    def codegen(context, builder, sig, llargs):
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys,
                                                    cgutils.unpack_tuple(builder, llargs[1], len(argtys)))
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return types.none(addr, args), codegen


@intrinsic
def _matrix(typingctx, addr, rows, cols, dtype):
    """The C-contiguous read-only array dtype [rows, cols] at address `addr` (no meminfo: the caller keeps
    its owner alive)."""
    dt = getattr(dtype, "instance_type", None) or getattr(dtype, "dtype", None)
    if not isinstance(dt, types.Number):
        return None
    arrty = types.Array(dt, 2, "C", readonly=True)

    def codegen(context, builder, sig, args):
        intp = context.get_value_type(types.intp)
        elem = context.get_data_type(dt)
        nrows = context.cast(builder, args[1], sig.args[1], types.intp)
        ncols = context.cast(builder, args[2], sig.args[2], types.intp)
        size = ir.Constant(intp, context.get_abi_sizeof(elem))
        out = context.make_array(arrty)(context, builder)
        context.populate_array(out, data=builder.inttoptr(context.cast(builder, args[0], sig.args[0], types.intp),
                                                          elem.as_pointer()),
                               shape=[nrows, ncols], strides=[builder.mul(ncols, size), size], itemsize=size,
                               meminfo=None)
        return out._getvalue()

    return arrty(addr, rows, cols, dtype), codegen


@njit(inline="always")
def _w(i, addr, rows, cols):
    return _matrix(addr[i], rows[i], cols[i], np.uint8)


@njit(inline="always")
def _project(kernel, k, a, b, c, X, oa, ob, oc):
    """oa = X @ A.T (and B into ob, C into oc) by format k's matmul_vnni, decode path."""
    call_native(kernel[k], (a, b, c, X, oa, ob, oc, False))


@njit(cache=True)
def _add_bias(out, s, biases):
    if s >= 0:
        bias = biases[s]  # padded: its first out.shape[1] elements
        for t in range(out.shape[0]):
            for j in range(out.shape[1]):
                out[t, j] += bias[j]


@njit(cache=True)
def _add(x, y):
    """x += y (Backend.add)."""
    for t in range(x.shape[0]):
        for j in range(x.shape[1]):
            x[t, j] += y[t, j]


@njit(cache=True)
def decode_layers(kind, addr, rows, cols, fuse, bias_slot, biases, kernel, parallel, attn_norm, mlp_norm, norm,
                  eps, x, h, q, k, v, att, gate, up, proj, k_cache, v_cache, valid, start, positions, inv_freq,
                  scale, scores, n_heads, n_kv_heads, head_dim, serial_work, no_rows, no_out):
    """The layers and the final norm for N = B sequences of one new token each (see forward_chunk):
    x float32 [N, D] (the embedded tokens, updated in place: the residual stream), h [N, D] = the final
    normed hidden states on return; q, k, v, att, gate, up, proj: the workspace rows; k_cache, v_cache
    [L, B, KV, S, hd]; valid [B, S]; start: the cache slot of this token; positions int64 [N].
    fuse[l, 0] / fuse[l, 1]: q/k/v, gate/up of layer l share one format (one kernel call).
    kernel[format ID], parallel[MATMUL ..]: addresses of the parallel kernels (see the module docstring)."""
    N = x.shape[0]
    for layer in range(attn_norm.shape[0]):
        i = 7 * layer
        # --- attention block ---------------------------------------------------------------------
        if x.size < serial_work:
            rmsnorm_serial(x, attn_norm[layer], eps, h)
        else:
            call_native(parallel[RMSNORM], (x, attn_norm[layer], eps, h))
        if fuse[layer, 0]:
            _project(kernel, kind[i], _w(i + Q, addr, rows, cols), _w(i + K, addr, rows, cols),
                     _w(i + V, addr, rows, cols), h, q, k, v)
        else:
            _project(kernel, kind[i + Q], _w(i + Q, addr, rows, cols), no_rows, no_rows, h, q, no_out, no_out)
            _project(kernel, kind[i + K], _w(i + K, addr, rows, cols), no_rows, no_rows, h, k, no_out, no_out)
            _project(kernel, kind[i + V], _w(i + V, addr, rows, cols), no_rows, no_rows, h, v, no_out, no_out)
        _add_bias(q, bias_slot[i + Q], biases)
        _add_bias(k, bias_slot[i + K], biases)
        _add_bias(v, bias_slot[i + V], biases)
        for y, heads in ((q, n_heads), (k, n_kv_heads)):
            y3 = y.reshape(N, heads, head_dim)
            if y3.size < serial_work:
                rope_serial(y3, positions, inv_freq)
            else:
                call_native(parallel[ROPE], (y3, positions, inv_freq))
        kc, vc = k_cache[layer], v_cache[layer]  # [B, KV, S, hd]
        for b in range(N):
            for g in range(n_kv_heads):
                for d in range(head_dim):
                    kc[b, g, start, d] = k[b, g * head_dim + d]
                    vc[b, g, start, d] = v[b, g * head_dim + d]
        q4 = q.reshape(N, 1, n_heads, head_dim)
        att4 = att.reshape(N, 1, n_heads, head_dim)
        if q4.size * (start + 1) < serial_work:
            attention_serial(q4, kc, vc, valid, start, scale, att4, scores)
        else:
            call_native(parallel[ATTENTION], (q4, kc, vc, valid, start, scale, att4, scores))
        _project(kernel, kind[i + O], _w(i + O, addr, rows, cols), no_rows, no_rows, att, proj, no_out, no_out)
        _add_bias(proj, bias_slot[i + O], biases)
        _add(x, proj)
        # --- MLP block (SwiGLU) --------------------------------------------------------------------
        if x.size < serial_work:
            rmsnorm_serial(x, mlp_norm[layer], eps, h)
        else:
            call_native(parallel[RMSNORM], (x, mlp_norm[layer], eps, h))
        if fuse[layer, 1]:
            _project(kernel, kind[i + GATE], _w(i + GATE, addr, rows, cols), _w(i + UP, addr, rows, cols), no_rows,
                     h, gate, up, no_out)
        else:
            _project(kernel, kind[i + GATE], _w(i + GATE, addr, rows, cols), no_rows, no_rows, h, gate, no_out, no_out)
            _project(kernel, kind[i + UP], _w(i + UP, addr, rows, cols), no_rows, no_rows, h, up, no_out, no_out)
        _add_bias(gate, bias_slot[i + GATE], biases)
        _add_bias(up, bias_slot[i + UP], biases)
        if gate.size < serial_work:
            swiglu_serial(gate, up, gate)
        else:
            call_native(parallel[SWIGLU], (gate, up, gate))
        _project(kernel, kind[i + DOWN], _w(i + DOWN, addr, rows, cols), no_rows, no_rows, gate, proj, no_out, no_out)
        _add_bias(proj, bias_slot[i + DOWN], biases)
        _add(x, proj)
    if x.size < serial_work:
        rmsnorm_serial(x, norm, eps, h)
    else:
        call_native(parallel[RMSNORM], (x, norm, eps, h))
