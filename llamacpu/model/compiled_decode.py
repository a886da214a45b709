"""When a decode step runs as one compiled call (`llamacpu.kernels.decode_step`), and its arguments.

`CompiledDecode.build(core)` returns None (the readable `forward_chunk` loop then runs every step) unless
the model can use it: the CPU backend and every projection either a quantized weight whose format has a
VNNI kernel (where those run) or an F16/BF16 matrix interleaved at load (InterleavedDenseWeight: its
matmul16_shared kernel has the quantized kernels' calling convention); F32 and stored-layout dense matrices
keep the readable pass. A step uses it when it feeds one column per sequence (T = 1), nothing traces, and
the rows fit the decode kernels (N <= DECODE_MAX_TOKENS). `LlamaCore.compiled_decode = False` turns it off.
"""
from __future__ import annotations

import numpy as np
from numba import typeof, types

from ..kernels import decode_step
from ..kernels.attention import attention
from ..kernels.rmsnorm import rmsnorm
from ..kernels.rope import rope
from ..kernels.simd import HAS_AVX512_VNNI
from ..kernels.swiglu import swiglu
from ..quant import interleaved
from ..quant import kernels as quant_kernels
from ..quant.vnni import NO_OUT, NO_ROWS
from ..quant.weight import InterleavedWeight, QuantizedWeight
from .names import PROJECTIONS
from .weights import InterleavedDenseWeight

# the formats whose kernel (matmul_vnni: decode, fused, batched) the step calls
_MODULES = {m.NAME: m for m in quant_kernels.VNNI_MODULES}
# the `kind` of interleaved matrices: after the format IDs, one per interleaved format
INTERLEAVED = {name: len(quant_kernels.MODULES) + i for i, name in enumerate(interleaved.FORMATS)}
# then the dense interleaved matrices, one per (16-bit dtype, layout)
DENSE = {key: len(quant_kernels.MODULES) + len(INTERLEAVED) + i for i, key in enumerate(InterleavedDenseWeight.SHARED)}
_BIASES = ("bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down")
_F32_2D = types.Array(types.float32, 2, "C")


def native_address(dispatcher, argtypes) -> int:
    """The address of `dispatcher`'s machine code for exactly these argument types (loaded from the
    cache, or compiled, now): what decode_step.call_native calls, the same code a call from Python runs."""
    sig = tuple(argtypes)
    if sig not in dispatcher.overloads:
        dispatcher.compile(sig)
    cres = dispatcher.overloads[sig]
    return cres.library.get_pointer_to_function(cres.fndesc.llvm_func_name)


class CompiledDecode:
    def __init__(self, core, kind, arrays, fuse, bias_slot, biases):
        self.core = core
        self.kind, self.fuse = kind, fuse
        self.single_row = bool((kind == DENSE[("bf16", "pairs")]).any())  # bf16 compute: see accepts
        self.arrays = arrays  # the matrices: kept alive here, passed to the kernel by address
        self.addr = np.asarray([a.ctypes.data for a in arrays], np.int64)
        self.rows = np.asarray([a.shape[0] for a in arrays], np.int64)
        self.cols = np.asarray([a.shape[1] for a in arrays], np.int64)
        self.bias_slot, self.biases = bias_slot, biases
        # addresses of the formats' matmul_vnni (by format ID) and of the parallel kernels (by row count)
        self.kernel = np.zeros(len(quant_kernels.MODULES) + len(INTERLEAVED) + len(DENSE), np.int64)
        u8 = typeof(NO_ROWS)
        by_kind = {k: interleaved.KERNELS[name] for name, k in INTERLEAVED.items()}
        by_kind.update({k: InterleavedDenseWeight.SHARED[key] for key, k in DENSE.items()})
        for fid in set(kind.tolist()):
            kernel = by_kind[fid] if fid in by_kind else quant_kernels.MODULES[fid].matmul_vnni
            self.kernel[fid] = native_address(kernel, (u8, u8, u8) + (_F32_2D,) * 4 + (types.boolean,))
        self.parallel = {}
        w = core.weights
        self.attn_norm = np.ascontiguousarray(np.stack([l.attn_norm for l in w.layers]), np.float32)
        self.mlp_norm = np.ascontiguousarray(np.stack([l.mlp_norm for l in w.layers]), np.float32)
        self.norm = np.ascontiguousarray(w.norm, np.float32)

    @classmethod
    def build(cls, core) -> "CompiledDecode | None":
        from ..backends import CPUBackend

        if type(core.backend) is not CPUBackend:
            return None
        kind, arrays, bias_slot, biases = [], [], [], []
        for layer in core.weights.layers:
            for name, bname in zip(PROJECTIONS, _BIASES):
                w = getattr(layer, name)
                if type(w) is InterleavedDenseWeight:
                    kind.append(DENSE[w.key])
                    arrays.append(w.packed_bytes)
                elif not HAS_AVX512_VNNI:
                    return None  # the quantized kernels below need AVX512-VNNI
                elif isinstance(w, InterleavedWeight):
                    kind.append(INTERLEAVED[w.format.name])
                    arrays.append(w.packed)
                elif not (isinstance(w, QuantizedWeight) and w.format.name in _MODULES and w.format.fused is not None
                        and w.blocks.flags.c_contiguous):
                    return None  # a dense matrix, a format without a VNNI kernel, another Weight class
                else:
                    kind.append(_MODULES[w.format.name].ID)
                    arrays.append(w.blocks)
                b = getattr(layer, bname)
                bias_slot.append(-1 if b is None else len(biases))
                if b is not None:
                    biases.append(np.asarray(b, np.float32).reshape(-1))
        width = max([len(b) for b in biases], default=1)
        bias_rows = np.zeros((max(1, len(biases)), width), np.float32)
        for r, b in enumerate(biases):
            bias_rows[r, :len(b)] = b
        kind = np.asarray(kind, np.int64)
        k7 = kind.reshape(len(core.weights.layers), 7)
        # q/k/v (gate/up) in one call where they share a format, as Backend.linears does
        fuse = np.stack([(k7[:, 0] == k7[:, 1]) & (k7[:, 0] == k7[:, 2]), k7[:, 4] == k7[:, 5]], axis=1)
        return cls(core, kind, arrays, fuse, np.asarray(bias_slot, np.int64), bias_rows)

    def accepts(self, n_rows: int) -> bool:
        # bf16 compute (the pairs layout): the readable pass sends several rows through vdpbf16ps (rounded
        # activations), the step through the float32 kernel, so only single rows are the same bits
        return n_rows <= (1 if self.single_row else quant_kernels.DECODE_MAX_TOKENS)

    def _parallel(self, N: int, start: int, positions, inv_freq, scores, serial_work: int) -> np.ndarray:
        """Addresses of the parallel kernels this step may call (0 where the serial one runs), fetched on
        first need: a kernel never used by this model is never loaded."""
        cfg = self.core.config
        D, I, H, KV, hd = (cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads,
                           cfg.num_key_value_heads, cfg.head_dim)
        key = (N, N * H * hd * (start + 1) >= serial_work)
        out = self.parallel.get(key)
        if out is None:
            out = np.zeros(5, np.int64)
            f32 = lambda nd: types.Array(types.float32, nd, "C")  # noqa: E731
            if N * D >= serial_work:
                out[decode_step.RMSNORM] = native_address(rmsnorm, (f32(2), f32(1), types.float64, f32(2)))
            if N * max(H, KV) * hd >= serial_work:
                out[decode_step.ROPE] = native_address(rope, (f32(3), typeof(positions), typeof(inv_freq)))
            if key[1]:
                out[decode_step.ATTENTION] = native_address(
                    attention, (f32(4), f32(4), f32(4), types.Array(types.uint8, 2, "C"), types.int64, types.float32,
                                f32(4), typeof(scores)))
            if N * I >= serial_work:
                out[decode_step.SWIGLU] = native_address(swiglu, (f32(2), f32(2), f32(2)))
            self.parallel[key] = out
        return out

    def __call__(self, ws, n_rows: int, cache, start: int, positions, inv_freq, serial_work: int) -> None:
        """The layers and final norm over ws.x[:N] (embedded) into ws.h[:N] (see decode_layers)."""
        cfg, N = self.core.config, n_rows
        parallel = self._parallel(N, start, positions, inv_freq, cache.scores, serial_work)
        decode_step.decode_layers(
            self.kind, self.addr, self.rows, self.cols, self.fuse, self.bias_slot, self.biases, self.kernel, parallel,
            self.attn_norm, self.mlp_norm, self.norm, float(cfg.rms_norm_eps),
            ws.x[:N], ws.h[:N], ws.q[:N], ws.k[:N], ws.v[:N], ws.att[:N], ws.gate[:N], ws.up[:N], ws.proj[:N],
            cache.k, cache.v, cache.valid_dev, start, positions, inv_freq, self.core.scale, cache.scores,
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, serial_work, NO_ROWS, NO_OUT)
