"""The `llamacpu` command: generate, chat, quantize, inspect, bench.

Flags follow llama.cpp's habits (-m, -p, -n, -t, -c, --temp, --top-k, --top-p, --min-p,
--repeat-penalty, --seed) with transformers-style long aliases (--max-new-tokens, --temperature,
--repetition-penalty, --max-context). MODEL is a folder, a .gguf file or a Hugging Face repo id;
without one, the embedded default model (SmolLM2-135M-Instruct) is used.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

from .errors import LlamacpuError


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
    from .hub import resolve_model
    from .model.causal_lm import LlamaForCausalLM, set_num_threads
    from .tokenizer.auto import AutoTokenizer

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

    here = os.path.dirname(os.path.abspath(__file__))
    if say and not glob.glob(os.path.join(here, "kernels", "__pycache__", "*.nbi")):
        say("first run: compiling the Numba kernels (cached for next time)...")


def stderr(msg: str) -> None:
    print(f"llamacpu: {msg}", file=sys.stderr, flush=True)


def speed_line(stats) -> str:
    return (f"prompt {stats.prompt_tokens} tokens at {stats.prompt_tps:.1f} tok/s, "
            f"generation {stats.new_tokens} tokens at {stats.gen_tps:.1f} tok/s")


# ---- commands --------------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    from .generation.stream import TextGeneration

    model, tok = load(args, stderr if args.verbose else None)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": args.prompt})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        echo = ""
    else:
        ids = tok.encode(args.prompt or "")
        if not ids:  # an empty prompt without BOS: start from BOS all the same
            ids = [tok.bos_token_id if tok.bos_token_id is not None else 0]
        echo = args.prompt or ""
    run = TextGeneration(model, tok)
    if echo and not args.no_echo:
        sys.stdout.write(echo)
    for piece in run.stream(ids, **sampling_kwargs(args)):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        stderr(speed_line(run.stats))
    return 0


def cmd_chat(args) -> int:
    from .generation.chat import ChatSession, repl

    model, tok = load(args, stderr)
    session = ChatSession(model, tok, system=args.system, **sampling_kwargs(args))
    return repl(session, sys.stdin, sys.stdout, show_speed=not args.quiet)


def cmd_quantize(args) -> int:
    from .checkpoint.quantized import quantize_checkpoint

    out = quantize_checkpoint(args.src, args.dst, args.type, progress=True)
    stderr(f"wrote {out}")
    return 0


def cmd_inspect(args) -> int:
    from .inspect import inspect_main

    return inspect_main(args)


def cmd_bench(args) -> int:
    from .bench import bench_main

    return bench_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamacpu", description="Llama inference on the CPU (NumPy + Numba)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="continue a prompt (streams the text)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("-p", "--prompt", default="", help="prompt text (empty: start from BOS)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message in the chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--no-echo", action="store_true", help="do not print the prompt before the continuation")
    p.add_argument("--quiet", action="store_true", help="no speed line")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("chat", help="interactive multi-turn chat (/reset, /exit; Ctrl-C stops a reply)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", help="system message")
    p.add_argument("--quiet", action="store_true", help="no speed line after each reply")
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("quantize", help="write a quantized checkpoint that loads without re-quantizing")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--type", required=True, help="q8_0, q4_0, q4_1, q4_k, int4_g128")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("inspect", help="layer-by-layer view of a forward pass")
    add_model_args(p)
    p.add_argument("--prompt", "-p", default="Once upon a time")
    p.add_argument("--step", action="store_true", help="pause after each layer")
    p.add_argument("--compare-transformers", action="store_true")
    p.add_argument("--top", type=int, default=3, help="tokens shown by the logit lens")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("bench", help="prefill and decode speed of one model")
    add_model_args(p)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LlamacpuError as e:
        stderr(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        stderr("interrupted")
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
