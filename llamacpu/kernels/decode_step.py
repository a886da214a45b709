"""The layer stack of one decode step as ONE compiled call (issue 12, step 3).

A decode token of SmolLM2-135M makes about 360 kernel calls from Python (30 layers x 12 ops); on a
135M model the Python side of those calls (argument checks, slicing, dispatch) cost about as much as
the kernels themselves. `decode_layers` runs the same kernels, in the same order, on the same buffers,
from compiled code: the loop of `LlamaCore.forward_chunk` for chunks of one column per sequence, down
to the final RMSNorm. It is not a second model definition: every op is the kernel the readable pass
calls (the projections' decode kernels, rmsnorm / rope / attention / swiglu, serial or parallel by the
same `serial_work` rule as `CPUBackend`), so results are bit-identical, which tests/test_compiled_decode.py
checks (greedy ids and every step's logits on the parity fixtures quantized at load, SmolLM2, batches).
`llamacpu.model.compiled_decode` decides when it runs.

Weights are passed by address (`addr`, `rows`, `cols`: bytes per row), 7 per layer (q, k, v, o, gate,
up, down), with `kind` = the quantized format's ID (its decode kernel). A typed list of arrays would do
the same, but building one from Python compiles Numba's list methods in every process (2.5 s here); the
caller keeps the arrays alive (CompiledDecode holds them). Biases: rows of `biases` (bias_slot -1: none).

Dense (F32/F16/BF16) matrices are left to the readable pass: with the dense matvec kernels called from
here as well, a cached `decode_layers` that had run a dense model gave a quantized model of the same
process logits 1 ulp off the readable pass (a Numba caching issue with parallel kernels called from
cached functions, numba/numba#10184; without the cache it did not happen), and the step exists for the
quantized decode anyway.
"""
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ..quant import int4_g128, q4_0, q4_1, q4_k, q5_k, q6_k, q8_0
from .attention import attention, attention_serial
from .rmsnorm import rmsnorm, rmsnorm_serial
from .rope import rope, rope_serial
from .swiglu import swiglu, swiglu_serial

# the quantized formats whose kernel (matmul_vnni, decode path) the step calls; the others (and CPUs without
# AVX512-VNNI, whose formats run portable kernels) keep the readable path
DECODE_FORMATS = (q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, int4_g128)
Q, K, V, O, GATE, UP, DOWN = range(7)  # a layer's matrices, in table order


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
def _quant(i, addr, rows, cols):
    return _matrix(addr[i], rows[i], cols[i], np.uint8)


@njit(cache=True)
def _decode(fid, a, b, c, X, oa, ob, oc):
    """oa = X @ A.T (and B into ob, C into oc) by format fid's kernel, decode path (see vnni.matmul)."""
    if fid == q8_0.ID:
        q8_0.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    elif fid == q4_0.ID:
        q4_0.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    elif fid == q4_1.ID:
        q4_1.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    elif fid == q4_k.ID:
        q4_k.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    elif fid == q5_k.ID:
        q5_k.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    elif fid == q6_k.ID:
        q6_k.matmul_vnni(a, b, c, X, oa, ob, oc, False)
    else:
        int4_g128.matmul_vnni(a, b, c, X, oa, ob, oc, False)


@njit(cache=True)
def _linear(i, X, out, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out):
    """out = X @ W_i.T (+ bias), as Backend.linear with the matrix's own kernel."""
    _decode(kind[i], _quant(i, addr, rows, cols), no_rows, no_rows, X, out, no_out, no_out)
    _add_bias(out, bias_slot[i], biases)


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
def _rmsnorm(x, w, eps, out, serial_work):
    if x.size < serial_work:
        rmsnorm_serial(x, w, eps, out)
    else:
        rmsnorm(x, w, eps, out)


@njit(cache=True)
def _rope(x, positions, inv_freq, serial_work):
    if x.size < serial_work:
        rope_serial(x, positions, inv_freq)
    else:
        rope(x, positions, inv_freq)


@njit(cache=True)
def decode_layers(kind, addr, rows, cols, fuse, bias_slot, biases, attn_norm, mlp_norm, norm, eps,
                  x, h, q, k, v, att, gate, up, proj, k_cache, v_cache, valid, start, positions, inv_freq, scale,
                  scores, n_heads, n_kv_heads, head_dim, serial_work, no_rows, no_out):
    """The layers and the final norm for N = B sequences of one new token each (see forward_chunk):
    x float32 [N, D] (the embedded tokens, updated in place: the residual stream), h [N, D] = the final
    normed hidden states on return; q, k, v, att, gate, up, proj: the workspace rows; k_cache, v_cache
    [L, B, KV, S, hd]; valid [B, S]; start: the cache slot of this token; positions int64 [N].
    fuse[l, 0] / fuse[l, 1]: q/k/v, gate/up of layer l share one format (one kernel call)."""
    N = x.shape[0]
    for layer in range(attn_norm.shape[0]):
        i = 7 * layer
        # --- attention block ---------------------------------------------------------------------
        _rmsnorm(x, attn_norm[layer], eps, h, serial_work)
        if fuse[layer, 0]:
            _decode(kind[i], _quant(i + Q, addr, rows, cols), _quant(i + K, addr, rows, cols),
                    _quant(i + V, addr, rows, cols), h, q, k, v)
            _add_bias(q, bias_slot[i + Q], biases)
            _add_bias(k, bias_slot[i + K], biases)
            _add_bias(v, bias_slot[i + V], biases)
        else:
            _linear(i + Q, h, q, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
            _linear(i + K, h, k, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
            _linear(i + V, h, v, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
        _rope(q.reshape(N, n_heads, head_dim), positions, inv_freq, serial_work)
        _rope(k.reshape(N, n_kv_heads, head_dim), positions, inv_freq, serial_work)
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
            attention(q4, kc, vc, valid, start, scale, att4, scores)
        _linear(i + O, att, proj, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
        _add(x, proj)
        # --- MLP block (SwiGLU) --------------------------------------------------------------------
        _rmsnorm(x, mlp_norm[layer], eps, h, serial_work)
        if fuse[layer, 1]:
            _decode(kind[i + GATE], _quant(i + GATE, addr, rows, cols), _quant(i + UP, addr, rows, cols), no_rows,
                    h, gate, up, no_out)
            _add_bias(gate, bias_slot[i + GATE], biases)
            _add_bias(up, bias_slot[i + UP], biases)
        else:
            _linear(i + GATE, h, gate, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
            _linear(i + UP, h, up, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
        if gate.size < serial_work:
            swiglu_serial(gate, up, gate)
        else:
            swiglu(gate, up, gate)
        _linear(i + DOWN, gate, proj, kind, addr, rows, cols, bias_slot, biases, no_rows, no_out)
        _add(x, proj)
    _rmsnorm(x, norm, eps, h, serial_work)
