"""`llamacpu generate`: continue a prompt (or answer it with --chat), streaming the text to stdout."""
from __future__ import annotations

import sys

from .common import add_model_args, add_sampling_args, load, sampling_kwargs, speed_line, stderr


def add_parser(sub) -> None:
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


def cmd_generate(args) -> int:
    from ..generation.stream import TextGeneration

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
