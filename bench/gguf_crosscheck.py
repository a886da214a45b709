"""GGUF files across engines (issue #15): files made by llama.cpp's own quantizer run in llamacpu, and a
file written by `llamacpu quantize --type Q4_K_M` runs in llama.cpp. Tables for bench/README.md.

    .venv/bin/python bench/gguf_crosscheck.py [--peer-python ../benchenv/bin/python] [--workdir bench/out/gguf]
        [--mixes Q2_K,Q3_K_M,...] [--models smollm2,random] [--threads 2]

llama.cpp runs under --peer-python (bench/llamacpp_peer.py), so llama_cpp never enters .venv.

Models (sources written by our GGUF writer as F16, the input llama.cpp's quantizer expects):
  smollm2  SmolLM2-135M-Instruct, the embedded Q4_1 file dequantized. Its 576-wide rows are not whole
           256-weight blocks, so llama.cpp falls back from the K-quants on most tensors (the table lists
           the types each file really holds).
  random   a Llama with random weights and 256-multiple widths (hidden 512, intermediate 1536, 4 layers,
           8 heads / 2 KV heads, SmolLM2's tokenizer and vocabulary), so every K-quant is exercised.
Prompts: SmolLM2 reads two real paragraphs (bench/accuracy.py's texts, ~220 tokens); the random model
reads 128 seeded random ids.

Part 1, llama.cpp-made files in llamacpu: for each mix, llama.cpp quantizes the F16 source; llamacpu
loads the file and its logits (default kernels: VNNI where the CPU has it) are compared with an fp32
forward on that file's own weights, dequantized exactly (bench/accuracy.py's `dequantized`): top-1
agreement over positions, and relative error ||ours - ref|| / ||ref|| over all logits. The same
reference for llama.cpp's logits on that file gives llama.cpp's own arithmetic noise, for scale.

Part 2, ours in llama.cpp: `llamacpu quantize SRC DST.gguf --type Q4_K_M` (quantize_to_gguf) from the
same F16 source; llama.cpp loads it and its logits are compared with llamacpu's on the same file, and
with the fp32 forward on its weights. The file is also compared tensor by tensor with llama.cpp's own
Q4_K_M file of the same source: the same ggml type (llama.cpp's per-tensor choice), the same bytes.
`--mixes none` runs part 2 alone.

A benchmark reports; it asserts nothing.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from accuracy import ESSAY, STORY, dequantized  # noqa: E402

from llamacpu import LlamaForCausalLM  # noqa: E402
from llamacpu.checkpoint.gguf import read_gguf  # noqa: E402
from llamacpu.checkpoint.gguf_write import quantize_to_gguf, write_gguf  # noqa: E402
from llamacpu.config import LlamaConfig  # noqa: E402
from llamacpu.hub import default_model  # noqa: E402
from llamacpu.tokenizer.auto import AutoTokenizer  # noqa: E402

MIXES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q5_0", "Q5_1", "IQ4_XS", "IQ4_NL"]
RANDOM = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, rope_theta=10000.0,
              tie_word_embeddings=True)


def log(msg: str) -> None:
    print(f"[gguf {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def peer(args, *cmd: str) -> None:
    """One llama.cpp step in the peers' python; its chatter goes to WORKDIR/llamacpp.log."""
    with open(args.workdir / "llamacpp.log", "a") as out:
        subprocess.run([args.peer_python, str(HERE / "llamacpp_peer.py"), *cmd], check=True, stdout=out, stderr=out)


def random_source(path: Path, smol: Path) -> Path:
    meta = read_gguf(smol).tokenizer_metadata
    vocab = len(meta["tokens"])
    cfg = LlamaConfig(vocab_size=vocab, **RANDOM)
    h, f, n = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    hd = h // cfg.num_attention_heads
    kv = cfg.num_key_value_heads * hd
    shapes = {"model.embed_tokens.weight": (vocab, h)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (h,), p + "self_attn.q_proj.weight": (h, h),
                       p + "self_attn.k_proj.weight": (kv, h), p + "self_attn.v_proj.weight": (kv, h),
                       p + "self_attn.o_proj.weight": (h, h), p + "post_attention_layernorm.weight": (h,),
                       p + "mlp.gate_proj.weight": (f, h), p + "mlp.up_proj.weight": (f, h),
                       p + "mlp.down_proj.weight": (h, f)})
    shapes["model.norm.weight"] = (h,)

    def tensor(name):  # seeded per tensor, so the file does not depend on the writing order
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        shape = shapes[name]
        if len(shape) == 1:
            return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        scale = 1.0 if name == "model.embed_tokens.weight" else shape[1] ** -0.5
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    return write_gguf(path, cfg, shapes, tensor, meta, "F16", name="random-llama-512")


def prompt(model: str, smol: Path, text: str | None = None, tokens: int = 0) -> np.ndarray:
    if model == "smollm2":
        ids = AutoTokenizer.from_pretrained(smol).encode(text if text is not None else STORY + " " + ESSAY)
        return np.array(ids[:tokens] if tokens else ids, np.int64)
    return np.random.default_rng(0).integers(0, 49152, 128).astype(np.int64)


def types_of(path: Path) -> str:
    counts = Counter(t.ggml_type.name for t in read_gguf(path).tensors.values())
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def same_as_llamacpp(ours_path: Path, theirs_path: Path) -> tuple[str, str]:
    """Of our file's tensors, how many have llama.cpp's type (its per-tensor choice for the mix) and how
    many also its bytes, against llama.cpp's file of the same source and mix."""
    if not theirs_path.exists():
        return "-", "-"
    from gguf import GGUFReader

    theirs = {t.name: t for t in GGUFReader(str(theirs_path)).tensors}
    mine = GGUFReader(str(ours_path)).tensors
    typed = [t for t in mine if t.name in theirs and t.tensor_type == theirs[t.name].tensor_type]
    same = sum(1 for t in typed if np.array_equal(np.asarray(t.data).view(np.uint8),
                                                  np.asarray(theirs[t.name].data).view(np.uint8)))
    return f"{len(typed)} / {len(mine)}", f"{same} / {len(mine)}"


def compare(a: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """top-1 agreement over positions, relative error over all logits."""
    top1 = float((a.argmax(-1) == ref.argmax(-1)).mean())
    rel = float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
    return top1, rel


def ours(path: Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """llamacpu's logits on the file, and the fp32 forward on its exactly dequantized weights."""
    m = LlamaForCausalLM.from_pretrained(path)
    got = np.asarray(m(ids[None]).logits[0], np.float32)
    ref = np.asarray(dequantized(m)(ids[None]).logits[0], np.float32)
    return got, ref


def llamacpp(args, path: Path, ids: np.ndarray) -> np.ndarray:
    ids_file, out = args.workdir / "ids.npy", args.workdir / "llamacpp-logits.npy"
    np.save(ids_file, ids)
    peer(args, "logits", str(path), str(ids_file), str(out), str(args.threads))
    return np.load(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-python", default=str(ROOT.parent / "benchenv" / "bin" / "python"))
    ap.add_argument("--workdir", type=Path, default=HERE / "out" / "gguf")
    ap.add_argument("--mixes", default=",".join(MIXES))
    ap.add_argument("--models", default="smollm2,random")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text", type=Path, help="SmolLM2 reads this file instead of the two paragraphs "
                    "(more positions: a tighter top-1 estimate)")
    ap.add_argument("--tokens", type=int, default=0, help="with --text: its first N tokens")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    smol = default_model()
    part1, part2 = [], []
    for model in args.models.split(","):
        src = args.workdir / f"{model}-F16.gguf"
        if not src.exists():
            log(f"writing {src}")
            if model == "smollm2":
                quantize_to_gguf(smol, src, "F16")
            else:
                random_source(src, smol)
        ids = prompt(model, smol, args.text.read_text() if args.text else None, args.tokens)
        for mix in [m for m in args.mixes.split(",") if m and m != "none"]:
            path = args.workdir / f"{model}-llamacpp-{mix}.gguf"
            if not path.exists():
                log(f"llama.cpp quantizes {model} to {mix}")
                peer(args, "quantize", str(src), str(path), mix, str(args.threads))
            got, ref = ours(path, ids)
            theirs = llamacpp(args, path, ids)
            t1, rel = compare(got, ref)
            c1, crel = compare(theirs, ref)
            part1.append((model, mix, types_of(path), len(ids), t1, rel, c1, crel))
            log(f"{model} {mix}: ours top-1 {t1:.2%} rel {rel:.2e}; llama.cpp top-1 {c1:.2%} rel {crel:.2e}")
        path = args.workdir / f"{model}-llamacpu-Q4_K_M.gguf"
        log(f"llamacpu quantize {model} --type Q4_K_M")
        quantize_to_gguf(src, path, "Q4_K_M")
        got, ref = ours(path, ids)
        theirs = llamacpp(args, path, ids)
        t1, rel = compare(theirs, got)
        r1, rrel = compare(theirs, ref)
        typed, same = same_as_llamacpp(path, args.workdir / f"{model}-llamacpp-Q4_K_M.gguf")
        part2.append((model, types_of(path), typed, same, len(ids), t1, rel, r1, rrel))
        log(f"{model} ours Q4_K_M in llama.cpp: top-1 vs ours {t1:.2%} rel {rel:.2e}")

    print("\n### llama.cpp-made files in llamacpu\n")
    print("| model | mix | ggml types in the file (tensors) | positions | llamacpu top-1 vs fp32 | llamacpu rel. error "
          "| llama.cpp top-1 vs fp32 | llama.cpp rel. error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, mix, types, n, t1, rel, c1, crel in part1:
        print(f"| {model} | {mix} | {types} | {n} | {t1:.2%} | {rel:.1e} | {c1:.2%} | {crel:.1e} |")
    print("\n### `llamacpu quantize --type Q4_K_M` in llama.cpp\n")
    print("| model | ggml types in the file (tensors) | tensors of llama.cpp's type / bytes (its Q4_K_M file) "
          "| positions | llama.cpp top-1 vs llamacpu | rel. error | llama.cpp top-1 vs fp32 | llama.cpp rel. error vs fp32 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, types, typed, same, n, t1, rel, r1, rrel in part2:
        print(f"| {model} | {types} | types {typed}, bytes {same} | {n} | {t1:.2%} | {rel:.1e} | {r1:.2%} | {rrel:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
