"""What every `llamacpu` subcommand shares: the model and sampling flags, loading a model with its
tokenizer, the notes printed on stderr, and the speed line."""
from __future__ import annotations

import argparse
import os
import sys

import llamacpu


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model_pos", nargs="?", metavar="MODEL",
                       help="folder, .gguf file or Hugging Face repo id (default: SmolLM2-135M-Instruct)")
    p.add_argument("-m", "--model", help="same as MODEL")
    p.add_argument("--revision", help="Hub revision (branch, tag or commit) for a repo id")
    p.add_argument("--hf-file", help="the .gguf file to fetch from a Hub repo")
    p.add_argument("-t", "--threads", type=int, help="Numba threads (default: all cores, or NUMBA_NUM_THREADS)")
    p.add_argument("-c", "--ctx-size", "--max-context", dest="ctx_size", type=int,
                   help="KV-cache length (default: the model's context)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weight precision in memory (default: as stored)")
    p.add_argument("-q", "--quantization", help="quantize at load: q8_0, q4_0, q4_1, q4_k, int4_g128")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (cuda: numba.cuda)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--max-new-tokens", "--n-predict", dest="max_new_tokens", type=int, default=256)
    p.add_argument("--temp", "--temperature", dest="temperature", type=float, default=0.8,
                   help="0 = greedy (default 0.8)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", "--repetition-penalty", dest="repetition_penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, help="sampling seed (default: random)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")


def sampling_kwargs(args) -> dict:
    return dict(max_new_tokens=args.max_new_tokens, do_sample=args.temperature > 0,
                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                repetition_penalty=args.repetition_penalty, seed=args.seed,
                stop_strings=args.stop or None)


def load(args, say=None):
    """(model, tokenizer) for the CLI's model arguments, with a first-run note while Numba compiles."""
    from ..hub import resolve_model
    from ..model.causal_lm import LlamaForCausalLM, set_num_threads
    from ..tokenizer.auto import AutoTokenizer

    if args.threads:
        set_num_threads(args.threads)
    path = resolve_model(args.model or getattr(args, "model_pos", None), args.revision, args.hf_file)
    if say:
        say(f"loading {path}")
    first_run_note(say)
    model = LlamaForCausalLM.from_pretrained(path, dtype=args.dtype, max_context=args.ctx_size,
                                             quantization=args.quantization, device=args.device, progress=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def first_run_note(say) -> None:
    """Numba compiles the kernels on first use (tens of seconds), then caches them on disk."""
    import glob

    here = os.path.dirname(os.path.abspath(llamacpu.__file__))
    if say and not glob.glob(os.path.join(here, "kernels", "__pycache__", "*.nbi")):
        say("first run: compiling the Numba kernels (cached for next time)...")


def stderr(msg: str) -> None:
    print(f"llamacpu: {msg}", file=sys.stderr, flush=True)


def speed_line(stats) -> str:
    return (f"prompt {stats.prompt_tokens} tokens at {stats.prompt_tps:.1f} tok/s, "
            f"generation {stats.new_tokens} tokens at {stats.gen_tps:.1f} tok/s")
