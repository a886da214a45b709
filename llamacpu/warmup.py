"""Compile every Numba kernel once into the on-disk cache (`make warm`), so that later processes,
the test suite and the CLI start in well under a second instead of compiling first.

python -m llamacpu.warmup
"""
import contextlib
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from .checkpoint.synthetic import write_synthetic
from .model.causal_lm import LlamaForCausalLM
from .kernels.slot_attention import slot_attention, slot_attention_serial
from .quant import QuantizedWeight, format_names


def numba_cache_files() -> dict[str, float]:
    """{path: mtime} of Numba's cache files in the package: which kernels were (re)compiled shows as a change."""
    root = Path(__file__).resolve().parent
    return {str(p): p.stat().st_mtime for p in root.rglob("__pycache__/*.nb[ic]")}


@contextlib.contextmanager
def _repack_off():
    """LLAMACPU_REPACK=0 while models load: their matrices keep the stored layout (and its kernels)."""
    before = os.environ.get("LLAMACPU_REPACK")
    os.environ["LLAMACPU_REPACK"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["LLAMACPU_REPACK"]
        else:
            os.environ["LLAMACPU_REPACK"] = before


def warm(verbose: bool = True) -> float:
    before = numba_cache_files()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("F32", "F16", "BF16"):
            path = write_synthetic(f"{tmp}/{dtype}", "tiny", dtype=dtype)
            model = LlamaForCausalLM.from_pretrained(path)
            model.generate(np.array([[1, 2, 3], [4, 5, 6]]), attention_mask=np.array([[0, 1, 1], [1, 1, 1]]),
                           max_new_tokens=2)
            model(np.array([[1, 2, 3, 4]]))
            if dtype == "F16":  # dtype="bfloat16": the F16 -> BF16 conversion, the pairs layout's kernels
                as_bf16 = LlamaForCausalLM.from_pretrained(path, dtype="bfloat16")
                as_bf16(np.array([[1, 2, 3, 4]]))
                as_bf16.generate(np.array([[1, 2, 3]]), max_new_tokens=2)
            w = model.weights.layers[0].wq  # the serving engine's batch-invariant dense rows (dense.matvec_rows_*)
            w.matmul_decode(np.zeros((2, w.shape[1]), np.float32), np.zeros((2, w.shape[0]), np.float32))
            if dtype != "F32":  # F16/BF16 models run interleaved: the stored-layout kernels too (matrices the
                # backend cannot interleave, LLAMACPU_REPACK=0), and for F16 the stored rows' vdpbf16ps prefill
                with _repack_off():
                    stored = LlamaForCausalLM.from_pretrained(path)
                    stored_bf16 = LlamaForCausalLM.from_pretrained(path, dtype="bfloat16") if dtype == "F16" else None
                stored.generate(np.array([[1, 2, 3]]), max_new_tokens=2)
                stored(np.array([[1, 2, 3, 4]]))
                if stored_bf16 is not None:
                    stored_bf16(np.array([[1, 2, 3, 4]]))
                w = stored.weights.layers[0].wq
                w.matmul_decode(np.zeros((2, w.shape[1]), np.float32), np.zeros((2, w.shape[0]), np.float32))
            if dtype == "F32":  # the serving engine's slot attention, serial and parallel
                q, kv = np.zeros((1, 2, 4), np.float32), np.zeros((1, 1, 1, 2, 4), np.float32)
                for kernel in (slot_attention, slot_attention_serial):
                    kernel(q, kv, kv, 0, np.zeros(1, np.int64), np.zeros(1, np.int64), np.float32(1), q.copy(),
                           np.zeros((64, 2), np.float32))
            if dtype == "F32":
                for name in format_names():
                    try:
                        q = LlamaForCausalLM.from_pretrained(path, quantization=name)
                    except Exception:  # a format this shape cannot hold: warmed by its tests instead
                        continue
                    q.generate(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), max_new_tokens=2)  # >= 6: the prefill kernel
                # each format's row-by-row kernels (decode and prefill): models of the interleaved formats no
                # longer call them, but matrices the CPU backend cannot interleave and LLAMACPU_REPACK=0 do
                rng = np.random.default_rng(0)
                for name in format_names():
                    w = QuantizedWeight.quantize(name, rng.standard_normal((16, 256)).astype(np.float32))
                    for n in (1, 5):
                        w.matmul(np.zeros((n, 256), np.float32), np.zeros((n, 16), np.float32))
                # the K-quants need widths of 256 (the tiny shape falls back to Q4_0): their kernels, interleaved too
                wide = write_synthetic(f"{tmp}/wide", "tiny", hidden_size=256, intermediate_size=512)
                for name in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs"):
                    q = LlamaForCausalLM.from_pretrained(wide, quantization=name)
                    q.generate(np.array([[1, 2, 3, 4, 5, 6, 7, 8]]), max_new_tokens=2)
    seconds = time.perf_counter() - t0
    if verbose:
        changed = sum(1 for k, t in numba_cache_files().items() if before.get(k) != t)
        print(f"llamacpu: {changed} Numba cache files compiled and written ({seconds:.1f} s)" if changed else
              f"llamacpu: the Numba kernels were already compiled; loaded from the cache ({seconds:.1f} s)")
    return seconds


if __name__ == "__main__":
    warm()
