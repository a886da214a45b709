"""When a decode step runs as one compiled call (`llamacpu.kernels.decode_step`), and its arguments.

`CompiledDecode.build(core)` returns None (the readable `forward_chunk` loop then runs every step) unless
the model can use it: the CPU backend, AVX512-VNNI kernels in use, and every projection a quantized
weight whose format has a decode kernel (decode_step.DECODE_FORMATS; dense models keep the readable pass,
see decode_step). A step uses it when it feeds one column per sequence (T = 1), nothing traces, and the
rows fit the decode kernels (N <= DECODE_MAX_TOKENS). `LlamaCore.compiled_decode = False` turns it off.
"""
from __future__ import annotations

import numpy as np

from ..kernels import decode_step
from ..kernels.simd import HAS_AVX512_VNNI
from ..quant import kernels as quant_kernels
from ..quant.vnni import NO_OUT, NO_ROWS
from ..quant.weight import QuantizedWeight
from .names import PROJECTIONS

_FIDS = {m.NAME: m.ID for m in decode_step.DECODE_FORMATS}
_BIASES = ("bq", "bk", "bv", "bo", "b_gate", "b_up", "b_down")


class CompiledDecode:
    def __init__(self, core, kind, arrays, fuse, bias_slot, biases):
        self.core = core
        self.kind, self.fuse = kind, fuse
        self.arrays = arrays  # the matrices: kept alive here, passed to the kernel by address
        self.addr = np.asarray([a.ctypes.data for a in arrays], np.int64)
        self.rows = np.asarray([a.shape[0] for a in arrays], np.int64)
        self.cols = np.asarray([a.shape[1] for a in arrays], np.int64)
        self.bias_slot, self.biases = bias_slot, biases
        w = core.weights
        self.attn_norm = np.ascontiguousarray(np.stack([l.attn_norm for l in w.layers]), np.float32)
        self.mlp_norm = np.ascontiguousarray(np.stack([l.mlp_norm for l in w.layers]), np.float32)
        self.norm = np.ascontiguousarray(w.norm, np.float32)

    @classmethod
    def build(cls, core) -> "CompiledDecode | None":
        from ..backends import CPUBackend

        if not HAS_AVX512_VNNI or type(core.backend) is not CPUBackend:
            return None
        kind, arrays, bias_slot, biases = [], [], [], []
        for layer in core.weights.layers:
            for name, bname in zip(PROJECTIONS, _BIASES):
                w = getattr(layer, name)
                if not (isinstance(w, QuantizedWeight) and w.format.name in _FIDS and w.format.fused is not None
                        and w.blocks.flags.c_contiguous):
                    return None  # a dense matrix, a format without a decode kernel, another Weight class
                kind.append(_FIDS[w.format.name])
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
        # q/k/v (gate/up) in one call where they share a quantized format, as Backend.linears does
        fuse = np.stack([(k7[:, 0] == k7[:, 1]) & (k7[:, 0] == k7[:, 2]), k7[:, 4] == k7[:, 5]], axis=1)
        return cls(core, kind, arrays, fuse, np.asarray(bias_slot, np.int64), bias_rows)

    def accepts(self, n_rows: int) -> bool:
        return n_rows <= quant_kernels.DECODE_MAX_TOKENS

    def __call__(self, ws, n_rows: int, cache, start: int, positions, inv_freq, serial_work: int) -> None:
        """The layers and final norm over ws.x[:N] (embedded) into ws.h[:N] (see decode_layers)."""
        cfg, N = self.core.config, n_rows
        decode_step.decode_layers(
            self.kind, self.addr, self.rows, self.cols, self.fuse, self.bias_slot, self.biases,
            self.attn_norm, self.mlp_norm, self.norm, float(cfg.rms_norm_eps),
            ws.x[:N], ws.h[:N], ws.q[:N], ws.k[:N], ws.v[:N], ws.att[:N], ws.gate[:N], ws.up[:N], ws.proj[:N],
            cache.k, cache.v, cache.valid_dev, start, positions, inv_freq, self.core.scale, cache.scores,
            cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, serial_work, NO_ROWS, NO_OUT)
