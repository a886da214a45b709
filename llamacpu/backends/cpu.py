"""The CPU backend: NumPy arrays and the Numba kernels of `llamacpu.kernels`."""
from __future__ import annotations

import dataclasses
import mmap
import os

import numpy as np

from ..kernels.attention import attention, attention_serial
from ..kernels.rmsnorm import rmsnorm, rmsnorm_serial
from ..kernels.rope import rope, rope_serial
from ..kernels.swiglu import swiglu, swiglu_serial
from ..kernels.simd import HAS_AVX512_VNNI
from ..model.weights import InterleavedDenseWeight, Weight, _release_mapped_pages
from ..quant import interleaved
from ..quant.weight import InterleavedWeight, QuantizedWeight
from .base import Backend

# Buffers at least this large (the KV cache) come from their own anonymous mapping in 4 KiB pages.
LAZY_BYTES = 4 << 20

# Below this much work (multiply-adds) a kernel runs on the calling thread: a parallel launch costs
# tens of microseconds with the workqueue layer, more than a decode token's norm, RoPE or SwiGLU.
SERIAL_WORK = 1 << 16


class CPUBackend(Backend):
    name = "cpu"

    # ---- memory --------------------------------------------------------------------------------------
    def zeros(self, shape, dtype=np.float32):
        """Zero-filled array. A large one is an anonymous mapping advised against transparent huge pages:
        NumPy advises huge pages for every allocation over 4 MiB, so the first write to a KV-cache head
        faulted in (and zeroed) its whole 2 MiB slot range, which made a SmolLM2 cache of 8192 slots
        resident at once (+360 MB RSS) and cost ~1.5 s on the first token here. With 4 KiB pages a cache
        costs memory only as it fills."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < LAZY_BYTES or not hasattr(mmap, "MADV_NOHUGEPAGE"):  # only Linux has THP
            return np.zeros(shape, dtype)
        # anonymous and private (a forked child gets its own copy on write): zero pages, mapped on first touch
        try:
            buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as e:  # ENOMEM: as np.zeros would say it
            raise MemoryError(f"cannot map {nbytes} bytes for an array {tuple(shape)}: {e}") from e
        buf.madvise(mmap.MADV_NOHUGEPAGE)
        return np.frombuffer(buf, dtype).reshape(shape)

    def upload(self, host: np.ndarray):
        """Host array -> backend array (here: the same array)."""
        return host

    def to_host(self, a) -> np.ndarray:
        return a

    def prepare_weights(self, weights):
        """LlamaWeights as loaded -> the weights this backend computes with, each matrix permuted once for its
        kernel: F16 and BF16 matrices interleaved by 16 rows (model/weights.py InterleavedDenseWeight: one
        float32 kernel for decode and prefill, on every CPU; bf16 compute in the pairs layout); where the AVX512-VNNI
        kernels run, the projections and the LM head in the formats of interleaved.FORMATS (Q4_0, Q4_1, Q5_0,
        Q5_1, IQ4_NL, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) interleaved by 16 rows
        (quant/interleaved.py). Their mapped source pages are released; everything else stays as loaded.
        LLAMACPU_REPACK=0 keeps every matrix as stored (A/B measurements)."""
        if os.environ.get("LLAMACPU_REPACK", "1") == "0":
            return weights

        def repacked(w):
            if InterleavedDenseWeight.eligible(w):
                packed = InterleavedDenseWeight(w)
                _release_mapped_pages(w.data)
                return packed
            if HAS_AVX512_VNNI and type(w) is QuantizedWeight and interleaved.eligible(w.format.name, w.shape):
                packed = InterleavedWeight(w)
                _release_mapped_pages(w.blocks)
                return packed
            return w

        # in place, so each source matrix is freed as soon as it is packed (the q/k blocks of a GGUF file are
        # unpermuted copies: kept until the end, they raised the peak RSS by ~10% of the weights)
        for layer in weights.layers:
            for f in dataclasses.fields(layer):
                w = getattr(layer, f.name)
                if isinstance(w, Weight):
                    setattr(layer, f.name, repacked(w))
                    del w
        if weights.lm_head is not None:  # tied to the embedding too: its row lookups read the rows they need
            head = repacked(weights.lm_head)
            if weights.lm_head is weights.embed:
                weights.embed = head
            weights.lm_head = head
        return weights

    # ---- the kernels the forward pass calls ---------------------------------------------------------------
    def embed(self, weight, ids: np.ndarray, out) -> None:
        out[:] = weight.rows(ids)

    def rmsnorm(self, x, weight, eps, out):  # x [N, D], weight [D] -> out [N, D]
        (rmsnorm_serial if x.size < SERIAL_WORK else rmsnorm)(x, weight, eps, out)

    def rope(self, x, positions, inv_freq):  # x [N, heads, hd] in place, positions [N], inv_freq [hd/2]
        (rope_serial if x.size < SERIAL_WORK else rope)(x, positions, inv_freq)

    def swiglu(self, gate, up, out):  # gate, up [N, I] -> out [N, I]
        (swiglu_serial if gate.size < SERIAL_WORK else swiglu)(gate, up, out)

    def store_kv(self, k_cache, v_cache, k, v, start: int) -> None:
        """k, v [B, T, KV, hd] -> cache [B, KV, S, hd] at slots start .. start+T."""
        T = k.shape[1]
        k_cache[:, :, start:start + T] = k.transpose(0, 2, 1, 3)
        v_cache[:, :, start:start + T] = v.transpose(0, 2, 1, 3)

    def attention(self, q, k_cache, v_cache, valid, start, scale, out, scratch) -> None:
        work = q.size * (start + q.shape[1])  # query elements x slots seen (at most)
        (attention_serial if work < SERIAL_WORK else attention)(q, k_cache, v_cache, valid, start, scale, out, scratch)

    def add(self, x, y) -> None:
        x += y

    def add_bias(self, out, bias) -> None:
        out += bias
