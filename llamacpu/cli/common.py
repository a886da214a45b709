"""What every `llamacpu` subcommand shares: the model and sampling flags, checking every argument
before anything loads, loading a model with its tokenizer, the notes printed on stderr, the speed line.

Conventions (as llama.cpp and most Unix tools): the answer goes to stdout and nothing else does;
notes, progress bars (only on a terminal) and the speed line go to stderr; a refusal is one line on
stderr, "llamacpu: error: ...", exit 1 (2 for a usage mistake); `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys
from pathlib import Path

import llamacpu

from ..errors import InputError, LlamacpuError

EXAMPLES_TITLE = "examples:"


# ---- the parser: one line per usage mistake, with a suggestion ----------------------------------------

class UsageError(Exception):
    """A mistake in the command line itself (argparse's kind): exit 2."""

    def __init__(self, message: str, prog: str = "llamacpu"):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised, so `main` decides how to print them) and did-you-mean
    suggestions for mistyped subcommands and choices. Subparsers are built with this class too."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(with_suggestion(message), self.prog)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples kept as written (epilog), and every option that has a default shows it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def with_suggestion(message: str) -> str:
    """argparse's 'invalid choice' message, shortened, with the closest valid choice."""
    if "invalid choice:" in message and "(choose from" in message:
        head, choices = message.split("(choose from", 1)
        wrong = head.split("invalid choice:", 1)[1].strip().strip("'\"")
        names = [c.strip().strip("'\"") for c in choices.rstrip(")").split(",")]
        if head.startswith("argument COMMAND"):
            return f"unknown command {wrong!r}{suggest(wrong, names)} (commands: {', '.join(names)})"
        return head.strip() + suggest(wrong, names) + f" (choose from {', '.join(names)})"
    return message


def suggest(wrong: str, names) -> str:
    close = difflib.get_close_matches(wrong, list(names), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def unknown_flags_message(parser: argparse.ArgumentParser, extra: list[str]) -> str:
    """'unrecognized arguments' with the closest real flags of the subcommand."""
    flags = [s for a in parser._actions for s in a.option_strings]
    wrong = [x for x in extra if x.startswith("-")]
    if not wrong:
        return f"unexpected argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}"
    first = wrong[0].split("=", 1)[0]
    return f"unknown flag {first}" + suggest(first, flags)


def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")


def add_model_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("model_pos", nargs="?", metavar="MODEL",
                       help="folder, .gguf file or Hugging Face repo id (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("-m", "--model", "--model_name_or_path", help="same as MODEL")
    p.add_argument("-hf", "--hf-repo", dest="hf_repo", metavar="ORG/NAME",
                   help="a Hugging Face repo id, as llama.cpp's -hf (same as MODEL)")
    p.add_argument("--revision", metavar="REV", help="Hub revision (branch, tag or commit) for a repo id")
    p.add_argument("--hf-file", metavar="FILE", help="the .gguf file to fetch from a Hub repo")
    p.add_argument("-t", "--threads", type=int, metavar="N",
                   help="Numba threads (default: all cores, or NUMBA_NUM_THREADS); more than the cores runs "
                        "with a warning on as many threads as there are cores")
    p.add_argument("-c", "--ctx-size", "--max-context", dest="ctx_size", type=int, metavar="N",
                   help="KV-cache length in tokens (default: the model's context)")
    p.add_argument("--dtype", "--torch_dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="weight precision in memory (auto: as stored; bfloat16 also computes prefill in bf16 "
                        "where the CPU has AVX512-BF16: faster, not bit-exact)")
    p.add_argument("--attn_implementation", choices=["eager", "sdpa", "flash_attention_2", "flex_attention"],
                   help="accepted as in transformers' chat command; no effect (one exact attention kernel)")
    p.add_argument("-q", "--quantization", metavar="FORMAT",
                   help=f"quantize at load: {', '.join(quant_formats())}")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to run (cuda: numba.cuda)")


def add_sampling_args(p: argparse.ArgumentParser, max_new_tokens: int = 256) -> None:
    p.add_argument("-n", "--max-new-tokens", "--n-predict", dest="max_new_tokens", type=int, default=max_new_tokens, metavar="N",
                   help="most tokens to generate; -1: until end of text or the context is full")
    p.add_argument("--temp", "--temperature", dest="temperature", type=float, default=0.8, metavar="T",
                   help="sampling temperature; 0 = greedy")
    p.add_argument("--top-k", type=int, default=40, metavar="K", help="sample among the k most likely tokens; 0 = all")
    p.add_argument("--top-p", type=float, default=0.95, metavar="P",
                   help="nucleus sampling: the smallest set of tokens whose probabilities sum to p (0 < p <= 1)")
    p.add_argument("--min-p", type=float, default=0.05, metavar="P",
                   help="drop tokens less likely than min-p x the most likely one (0 <= p <= 1)")
    p.add_argument("--repeat-penalty", "--repetition-penalty", dest="repetition_penalty", type=float, default=1.0, metavar="R",
                   help="divide the logits of tokens already seen by this (> 0; 1 = off)")
    p.add_argument("--seed", type=int, metavar="N", help="sampling seed (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop after this text (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-text token (as llama.cpp)")


def quant_formats() -> list[str]:
    from .. import quant

    return list(quant.FORMATS)


def sampling_kwargs(args, max_new_tokens: int | None = None) -> dict:
    n = args.max_new_tokens if max_new_tokens is None else max_new_tokens
    kwargs = dict(max_new_tokens=n, do_sample=args.temperature > 0,
                  temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                  repetition_penalty=args.repetition_penalty, seed=args.seed,
                  stop_strings=args.stop or None)
    if getattr(args, "ignore_eos", False):
        kwargs["eos_token_id"] = []  # no token ends the text; only -n or a stop string
    return kwargs


# ---- one validation step, before anything loads ---------------------------------------------------------

SAMPLING_FLAGS = {"max_new_tokens": "-n", "temperature": "--temp", "top_k": "--top-k", "top_p": "--top-p",
                  "min_p": "--min-p", "repetition_penalty": "--repeat-penalty", "seed": "--seed",
                  "stop_strings": "--stop"}


def validate(args) -> None:
    """Every check that needs no model, so a mistake is reported at once rather than after loading.
    Raises InputError (exit 1); warnings go to stderr."""
    from ..generation.sampling import GenerationConfig

    if hasattr(args, "model"):
        given = [m for m in (getattr(args, "model_pos", None), args.model, getattr(args, "hf_repo", None)) if m]
        if len(set(given)) > 1:
            raise InputError(f"two models given ({' and '.join(given)}): give MODEL, -m or -hf once")
        args.model = given[0] if given else None
        if args.model:
            check_model_argument(args.model)
    if getattr(args, "threads", None) is not None:
        import numba

        if args.threads < 1:
            raise InputError(f"-t/--threads: expected at least 1, got {args.threads}")
        limit = numba.config.NUMBA_NUM_THREADS
        if args.threads > limit:
            note(f"warning: -t {args.threads} is more than the {limit} threads Numba started with "
                 f"(the cores here, or NUMBA_NUM_THREADS); running on {limit}")
            args.threads = limit
    if getattr(args, "ctx_size", None) is not None and args.ctx_size < 1:
        raise InputError(f"-c/--ctx-size: expected at least 1 token, got {args.ctx_size}")
    if getattr(args, "quantization", None):
        check_format(args.quantization, "-q/--quantization")
    if hasattr(args, "temperature"):
        if args.max_new_tokens < -1 or args.max_new_tokens == 0:
            raise InputError(f"-n/--max-new-tokens: expected a positive count or -1, got {args.max_new_tokens}")
        try:
            GenerationConfig.from_kwargs(**sampling_kwargs(args, max_new_tokens=1))
        except InputError as e:
            name, _, rest = str(e).partition(":")
            raise InputError(f"{SAMPLING_FLAGS.get(name, name)}:{rest}") from None
    stride = getattr(args, "stride", None)
    if stride is not None and not 1 <= stride < (args.ctx_size or 512):
        raise InputError(f"--stride: expected 1 <= N < the context ({args.ctx_size or 512}), got {stride}")
    for name in ("file", "prompt_file"):
        path = getattr(args, name, None)
        if path and path != "-":
            check_readable_file(path, "-f/--file")


def check_model_argument(model: str) -> None:
    """A name that can only be a local path must exist here: it is never sent to the Hub."""
    from ..hub import could_be_repo_id, split_repo_spec

    if not Path(model).expanduser().exists() and not could_be_repo_id(split_repo_spec(model)[0]):
        raise InputError(f"{model}: no such file or folder; MODEL is a local folder, a .gguf file, "
                         "or a Hugging Face repo id 'org/name'")


def check_format(name: str, flag: str) -> None:
    formats = quant_formats()
    if name.lower() not in formats:
        raise InputError(f"{flag}: unknown format {name!r}{suggest(name.lower(), formats)} "
                         f"(known: {', '.join(formats)})")


def check_readable_file(path: str, flag: str) -> None:
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"{flag}: {path}: no such file")
    if p.is_dir():
        raise InputError(f"{flag}: {path} is a folder, not a file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{flag}: {path}: not readable (permissions)")


MAX_PROMPT_BYTES = 64 << 20  # a prompt file larger than this is a mistake (and would not fit a context)


def read_text(path: str, flag: str = "-f/--file") -> str:
    """A prompt file ('-' = stdin) as text, bounded in size, with one clear error if it is not UTF-8."""
    try:
        if path == "-":
            data = sys.stdin.buffer.read(MAX_PROMPT_BYTES + 1)
        else:
            with open(Path(path).expanduser(), "rb") as f:
                data = f.read(MAX_PROMPT_BYTES + 1)
    except OSError as e:
        raise InputError(f"{flag}: {path}: {e.strerror or e}") from None
    if len(data) > MAX_PROMPT_BYTES:
        raise InputError(f"{flag}: {path} is larger than {MAX_PROMPT_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{flag}: {path} is not UTF-8 text (byte {e.start})") from None


# ---- loading ------------------------------------------------------------------------------------------

def load(args, say=None, tokenizer: bool = True, max_context: int | None = None):
    """(model, tokenizer) for the CLI's model arguments. The tokenizer is read first (cheap, and a
    folder without one is refused before the weights load); the kernels are then warmed up so that
    the first prompt's timing is the model's, not Numba's loading."""
    from ..hub import resolve_model
    from ..model.causal_lm import LlamaForCausalLM, set_num_threads
    from ..tokenizer.auto import AutoTokenizer

    if args.threads:
        set_num_threads(args.threads)
    path = resolve_model(args.model, args.revision, args.hf_file)
    if say:
        say(f"loading {path}")
    tok = AutoTokenizer.from_pretrained(path) if tokenizer else None
    first_run_note(say)
    model = LlamaForCausalLM.from_pretrained(path, dtype=args.dtype, max_context=max_context or args.ctx_size,
                                             quantization=args.quantization, device=args.device,
                                             progress=progress_wanted())
    warm_up(model)
    return model, tok


def warm_up(model) -> None:
    """One prefill of eight tokens (quantized formats switch to their prefill kernel from six) and one
    decode step into a scratch cache: loads the cached Numba kernels of both paths (about a second on
    the first call) outside any timed work."""
    import numpy as np

    cache = model.new_cache(1, max_len=9)
    model.next_token_logits(np.zeros((1, 8), np.int64), None, cache)
    model.next_token_logits(np.array([[0]], np.int64), None, cache)


def progress_wanted() -> bool:
    """Progress bars only where a person watches: stderr on a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def first_run_note(say) -> None:
    """Numba compiles the kernels on first use (tens of seconds), then caches them on disk."""
    import glob

    here = os.path.dirname(os.path.abspath(llamacpu.__file__))
    if say and not glob.glob(os.path.join(here, "kernels", "__pycache__", "*.nbi")):
        say("first run: compiling the Numba kernels (cached for next time)...")


def stderr(msg: str) -> None:
    print(f"llamacpu: {msg}", file=sys.stderr, flush=True)


note = stderr


def speed_line(stats) -> str:
    return (f"prompt {stats.prompt_tokens} tokens at {stats.prompt_tps:.1f} tok/s, "
            f"generation {stats.new_tokens} tokens at {stats.gen_tps:.1f} tok/s")


def refusal(e: BaseException) -> str:
    """The one line printed for an error."""
    return f"error: {e}" if isinstance(e, LlamacpuError) else \
        f"error: {type(e).__name__}: {e} (an internal error: please report it; --debug shows the traceback)"
