"""`llamacpu chat`: an interactive multi-turn chat on a ChatSession (llamacpu.generation.chat)."""
from __future__ import annotations

import sys

from ..errors import LlamacpuError
from ..generation.chat import ChatSession
from .common import add_model_args, add_sampling_args, load, sampling_kwargs, speed_line, stderr


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat (/reset, /exit; Ctrl-C stops a reply)")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", help="system message")
    p.add_argument("--quiet", action="store_true", help="no speed line after each reply")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> int:
    model, tok = load(args, stderr)
    session = ChatSession(model, tok, system=args.system, **sampling_kwargs(args))
    return repl(session, sys.stdin, sys.stdout, show_speed=not args.quiet)


def repl(session: ChatSession, stdin=sys.stdin, stdout=sys.stdout, show_speed: bool = True) -> int:
    """Read user lines, stream replies. /reset starts over, /exit (or end of input) quits, Ctrl-C
    stops the current reply and keeps the session."""
    interactive = stdin.isatty()
    if interactive:
        print("llamacpu chat: /reset starts over, /exit quits, Ctrl-C stops a reply", file=sys.stderr)
    while True:
        stdout.write("> ")
        stdout.flush()
        try:
            line = stdin.readline()
        except KeyboardInterrupt:
            stdout.write("\n")
            continue
        if not line:
            stdout.write("\n")
            return 0
        text = line.rstrip("\n")
        if text.strip() in ("/exit", "/quit"):
            return 0
        if text.strip() == "/reset":
            session.reset()
            stdout.write("(conversation reset)\n")
            continue
        if not text.strip():
            continue
        try:
            for piece in session.send(text):
                stdout.write(piece)
                stdout.flush()
        except KeyboardInterrupt:
            stdout.write(" [stopped]")
        except LlamacpuError as e:
            stdout.write(f"\n[error: {e}]")
            session.messages = session.messages[:-2] if len(session.messages) >= 2 else []
        stdout.write("\n")
        if show_speed:
            print(f"llamacpu: {speed_line(session.stats)} (reused {session.reused_tokens} cached tokens)",
                  file=sys.stderr, flush=True)
