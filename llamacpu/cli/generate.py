"""`llamacpu generate`: continue a prompt (or answer it with --chat), streaming the text to stdout.

stdout carries the answer and nothing else: piped, it is exactly the generated text (the prompt is
echoed, and a final newline added, only on a terminal). Notes and the speed line go to stderr.
"""
from __future__ import annotations

import sys

from ..errors import InputError
from .common import add_model_args, add_sampling_args, load, read_text, sampling_kwargs, speed_line, stderr

EXAMPLES = """examples:
  llamacpu generate -p "Once upon a time" -n 64
  llamacpu generate --chat -p "Name three colors." --temp 0 model.gguf
  llamacpu generate --chat -f question.txt --system "Answer in one sentence."
  echo "What is 2+2?" | llamacpu generate --chat > answer.txt     # stdout: the answer only"""


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt (streams the text)", epilog=EXAMPLES,
                       description="Continue a prompt, or answer it as a chat message with --chat.\nThe prompt "
                                   "comes from -p, from -f FILE, or from stdin when it is not a terminal.")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("-p", "--prompt", help="prompt text (empty: start from BOS)")
    p.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message in the chat template")
    p.add_argument("--system", help="system message (with --chat)")
    p.add_argument("--no-echo", action="store_true", help="do not print the prompt before the continuation "
                                                          "(it is printed only on a terminal anyway)")
    p.add_argument("--quiet", action="store_true", help="no speed line")
    p.add_argument("-v", "--verbose", action="store_true", help="notes while loading")
    p.set_defaults(func=cmd_generate)


def prompt_text(args) -> str:
    if args.prompt is not None and args.file:
        raise InputError("give the prompt once: -p or -f, not both")
    if args.file:
        return read_text(args.file)
    if args.prompt is not None:
        return args.prompt
    if not sys.stdin.isatty():  # piped: the prompt is the input (an empty pipe means an empty prompt)
        return read_text("-", "stdin")
    return ""


def cmd_generate(args) -> int:
    from ..generation.stream import TextGeneration

    text = prompt_text(args)  # read before loading: a missing file is reported at once
    if args.chat and not text.strip():
        raise InputError("--chat needs a prompt: -p TEXT, -f FILE, or text on stdin")
    model, tok = load(args, stderr if args.verbose else None)
    if args.chat:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        messages.append({"role": "user", "content": text})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        echo = ""
    else:
        ids = tok.encode(text)
        if not ids:  # an empty prompt without BOS: start from BOS all the same
            ids = [tok.bos_token_id if tok.bos_token_id is not None else 0]
        echo = text
    room = model.max_context - len(ids)
    if room < 1:
        raise InputError(f"the prompt is {len(ids)} tokens, the context {model.max_context}: "
                         f"raise -c/--ctx-size or shorten the prompt")
    n = room if args.max_new_tokens == -1 else args.max_new_tokens
    if n > room:  # as llama.cpp: generation stops where the context ends, and says so
        stderr(f"note: the context holds {model.max_context} tokens and the prompt takes {len(ids)}: at most "
               f"{room} new tokens, not {n} (-c/--ctx-size raises it)")
        n = room
    terminal = sys.stdout.isatty()
    run = TextGeneration(model, tok)
    wrote = False
    try:
        if echo and terminal and not args.no_echo:
            sys.stdout.write(echo)
            wrote = True
        for piece in run.stream(ids, **sampling_kwargs(args, max_new_tokens=n)):
            sys.stdout.write(piece)
            sys.stdout.flush()
            wrote = True
    except KeyboardInterrupt:  # stop, but finish the line and say how fast it went
        if wrote:
            sys.stdout.write("\n")
            sys.stdout.flush()
        if not args.quiet:
            stderr(speed_line(run.stats) + " (interrupted)")
        raise
    if terminal and wrote:
        sys.stdout.write("\n")
    sys.stdout.flush()
    if not args.quiet:
        stderr(speed_line(run.stats))
    return 0
