"""Perplexity of one text under llamacpu and under llama.cpp (llama-cpp-python), same GGUF file, same
windows (llama-perplexity's: windows of --ctx tokens, BOS first when the vocabulary adds one, the second
half scored). The results go to bench/README.md.

    .venv/bin/python bench/perplexity.py [--model FILE.gguf] [--text FILE] [--ctx 512] [--windows 8]
        [--threads N] [--peer-python ../benchenv/bin/python]

The llama.cpp side runs in the peers' venv (this file, --peer mode, imports only numpy and llama_cpp):
  - on llamacpu's token ids, so the two engines see exactly the same input (the engine comparison);
  - on llama.cpp's own tokenization of the text (what `llama-perplexity -f` would report end to end).
Per scored token, the two engines' negative log-likelihoods are compared too.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_TEXT = "/usr/share/common-licenses/GPL-3"
DEFAULT_PEER_PYTHON = HERE.parent.parent / "benchenv" / "bin" / "python"


def window_nll(logits: np.ndarray, window, first: int) -> np.ndarray:
    """-log p of window[first+1:] from logits[first:-1] (llama-perplexity's scored half)."""
    z = np.asarray(logits[first:len(window) - 1], np.float64)
    z = z - z.max(axis=1, keepdims=True)
    targets = np.asarray(window[first + 1:])
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(targets)), targets]


def summary(nll: np.ndarray) -> dict:
    mean = float(nll.mean())
    ppl = math.exp(mean)
    se = math.sqrt(max(float((nll ** 2).mean()) - mean * mean, 0.0) / (len(nll) - 1)) * ppl
    return {"ppl": ppl, "se": se, "nll": mean, "count": int(len(nll))}


def peer(args) -> None:
    """llama.cpp side: per-window NLLs on the given ids, and on llama.cpp's own tokens of the text."""
    from llama_cpp import Llama, llama_cpp

    llm = Llama(model_path=args.model, n_ctx=args.ctx, n_batch=args.ctx, logits_all=True, n_threads=args.threads,
                verbose=False)
    job = json.loads(Path(args.peer).read_text())
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llama_cpp.llama_model_get_vocab(llm.model))) \
        if hasattr(llama_cpp, "llama_vocab_get_add_bos") else bool(llm.metadata.get("tokenizer.ggml.add_bos_token") == "true")
    own = llm.tokenize(Path(args.text).read_bytes(), add_bos=add_bos, special=False)
    out = {"version": __import__("llama_cpp").__version__, "add_bos": add_bos, "own_tokens": len(own),
           "same_tokens": own[:len(job["ids"])] == job["ids"][:len(own)]}
    t = time.perf_counter()
    for name, ids in (("given", job["ids"]), ("own", own)):
        nll = []
        for w in range(min(args.windows, len(ids) // args.ctx)):
            window = list(ids[w * args.ctx:(w + 1) * args.ctx])
            if add_bos:
                window[0] = llm.token_bos()
            llm.reset()
            llm.eval(window)
            nll.append(window_nll(np.array(llm.scores[:args.ctx]), window, args.ctx // 2))
        out[name] = np.concatenate(nll).tolist()
    out["seconds"] = time.perf_counter() - t
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF file (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="a plain-text file (default: the GPL-3 text)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-python", default=str(DEFAULT_PEER_PYTHON))
    ap.add_argument("--peer", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.peer:
        return peer(args)

    import llamacpu
    from llamacpu import AutoTokenizer, LlamaForCausalLM
    from llamacpu.perplexity import perplexity, token_nll, windows

    args.model = str(args.model or llamacpu.default_model())
    tok = AutoTokenizer.from_pretrained(args.model)
    model = LlamaForCausalLM.from_pretrained(args.model, max_context=args.ctx, num_threads=args.threads)
    ids = tok.encode(Path(args.text).read_text())
    bos = tok.bos_token_id if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else None
    ids = ids[:args.windows * args.ctx]
    t = time.perf_counter()
    ours = perplexity(model, ids, args.ctx, bos_token_id=bos)
    seconds = time.perf_counter() - t
    nll = []  # per token, for the comparison (the same windows as perplexity())
    for start, first in windows(len(ids), args.ctx):
        window = np.array(ids[start:start + args.ctx])
        if bos is not None:
            window[0] = bos
        logits = model(window[None], logits_to_keep=args.ctx - first + 1).logits[0, :-1]
        nll.append(token_nll(logits, window[first:]))
    nll = np.concatenate(nll)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"ids": ids}, f)
    r = subprocess.run([args.peer_python, __file__, "--peer", f.name, "--model", args.model, "--text", args.text,
                        "--ctx", str(args.ctx), "--windows", str(args.windows), "--threads", str(args.threads)],
                       capture_output=True, text=True)
    Path(f.name).unlink()
    if r.returncode != 0:
        sys.exit(f"llama.cpp side failed:\n{r.stderr[-3000:]}")
    theirs = json.loads(r.stdout.strip().splitlines()[-1])
    given, own = np.array(theirs["given"]), np.array(theirs["own"])
    a, b, c = summary(nll), summary(given), summary(own)
    diff = nll - given
    print(f"model {args.model}\ntext {args.text}: {len(ids)} tokens used, {ours.windows} windows of {args.ctx}, "
          f"{ours.count} scored; llamacpu BOS per window: {bos is not None}, llama.cpp add_bos: {theirs['add_bos']}")
    print("| engine | tokens | PPL | +/- (standard error) | mean NLL | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| llamacpu | llamacpu's | {ours.ppl:.4f} | {ours.se:.4f} | {ours.nll:.5f} | {seconds:.1f} |")
    print(f"| llama.cpp ({theirs['version']}) | llamacpu's | {b['ppl']:.4f} | {b['se']:.4f} | {b['nll']:.5f} | |")
    print(f"| llama.cpp | its own ({'same' if theirs['same_tokens'] else 'different'} ids) | {c['ppl']:.4f} | "
          f"{c['se']:.4f} | {c['nll']:.5f} | |")
    print(f"per scored token, llamacpu - llama.cpp NLL: mean {diff.mean():+.5f}, mean |d| {np.abs(diff).mean():.5f}, "
          f"max |d| {np.abs(diff).max():.4f}; PPL difference {ours.ppl - b['ppl']:+.4f} = "
          f"{(ours.ppl - b['ppl']) / max(ours.se, 1e-12):+.3f} standard errors")
    assert abs(a["ppl"] - ours.ppl) < 1e-6 * ours.ppl  # the per-token pass is the same computation


if __name__ == "__main__":
    main()
