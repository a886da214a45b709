"""llama.cpp's side of bench/gguf_crosscheck.py, run under the peers' python (llama-cpp-python), never in
.venv: llama_cpp does not enter llamacpu's environment, and numba/gguf need not enter the peers'.

    PEER_PYTHON bench/llamacpp_peer.py quantize SRC.gguf DST.gguf MIX [THREADS]
        llama.cpp's own quantizer (llama_model_quantize, the code behind llama-quantize) in MIX
        (Q4_K_M, Q2_K, IQ4_XS, ...: the LLAMA_FTYPE_MOSTLY_* names), default parameters.
    PEER_PYTHON bench/llamacpp_peer.py logits MODEL.gguf IDS.npy OUT.npy [THREADS]
        llama.cpp's logits at every position of one sequence of token ids (int64 [n]), float32 [n, vocab].
"""
import ctypes
import sys

import numpy as np


def quantize(src: str, dst: str, mix: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + mix.upper())
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}, {mix}) failed: {rc}")


def logits(model: str, ids_path: str, out: str, threads: int) -> None:
    from llama_cpp import Llama

    ids = np.load(ids_path).astype(np.int64).tolist()
    llm = Llama(model_path=model, n_ctx=max(64, len(ids) + 8), n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, logits_all=True, use_mmap=True, verbose=False)
    llm.eval(ids)
    np.save(out, np.asarray(llm.scores[: len(ids)], np.float32))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    if cmd == "quantize":
        quantize(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 2)
    elif cmd == "logits":
        logits(args[0], args[1], args[2], int(args[3]) if len(args) > 3 else 2)
    else:
        raise SystemExit(__doc__)
