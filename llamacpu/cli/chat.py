"""`llamacpu chat`: an interactive multi-turn chat on a ChatSession (llamacpu.generation.chat).

On a terminal the input line is prompt_toolkit's: arrow keys, Home/End, Ctrl-R search, history across
turns and sessions (a history file), Esc then Enter for a new line, bracketed paste (a pasted block is
one message). prompt_toolkit rather than the standard `readline` because readline cannot keep a pasted
multi-line block as one message, has no portable multi-line editing, and is missing on Windows; the
chat is the one place where the line editor is the product. Piped input is read line by line instead
(scripts, tests), with the same commands.

While a reply streams, the terminal neither echoes nor buffers keys into the next message: keys typed
then are discarded when the reply ends (as llama.cpp's and Ollama's chats do). Colour only on a terminal
and never with NO_COLOR set. Commands: /help, /reset, /save FILE, /load FILE, /exit.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from ..errors import LlamacpuError
from ..generation.chat import ChatSession
from .common import add_model_args, add_sampling_args, load, sampling_kwargs, speed_line, stderr, suggest

EXAMPLES = """examples:
  llamacpu chat                                          # the embedded SmolLM2-135M-Instruct
  llamacpu chat model.gguf --system "You are a pirate." -c 2048
  printf 'Hi\\nTell me more\\n' | llamacpu chat --temp 0      # scripted: one message per line

in the chat:
  Enter sends; Esc then Enter (or Alt-Enter) starts a new line; a pasted block is one message;
  a line of three double quotes opens and closes a multi-line message.
  Up/Down recall earlier messages (kept in the history file); Ctrl-C stops a reply; Ctrl-D quits."""

COMMANDS = {
    "/help": "this list",
    "/reset": "forget the conversation (the system prompt stays)",
    "/save FILE": "write the conversation to FILE (JSON)",
    "/load FILE": "continue a conversation written by /save",
    "/exit": "quit (also /quit, Ctrl-D)",
}
FENCE = '"""'


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="interactive multi-turn chat (/help inside lists the commands)",
                       epilog=EXAMPLES, description="Chat with a model. The KV cache is reused across turns;\n"
                       "when the context fills, the oldest turns are dropped and the system prompt kept.")
    add_model_args(p)
    add_sampling_args(p)
    p.add_argument("--system", help="system message")
    p.add_argument("--history-file", default=default_history_file(), metavar="FILE",
                   help="where typed messages are remembered across sessions ('' = nowhere)")
    p.add_argument("--quiet", action="store_true", help="no speed line after each reply")
    p.set_defaults(func=cmd_chat)


def default_history_file() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "llamacpu", "chat_history")


def cmd_chat(args) -> int:
    model, tok = load(args, stderr)
    kwargs = sampling_kwargs(args)
    if args.max_new_tokens == -1:
        kwargs["max_new_tokens"] = model.max_context
    session = ChatSession(model, tok, system=args.system, **kwargs)
    terminal = sys.stdin.isatty() and sys.stdout.isatty()
    ui = TerminalUI(args.history_file) if terminal else PlainUI(sys.stdin, sys.stdout)
    return repl(session, ui, show_speed=not args.quiet)


def use_colour(stream) -> bool:
    """no-color.org: NO_COLOR set to anything non-empty turns colour off; so does a dumb terminal."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM", "") != "dumb"


# ---- the two front ends: a terminal (prompt_toolkit) and plain lines (pipes) -----------------------------

class PlainUI:
    """Lines from a pipe; the same "> " prompt on stdout so a transcript reads as the chat did."""

    colour = False

    def __init__(self, stdin, stdout):
        self.stdin, self.out = stdin, stdout

    def read_line(self, continuation: bool = False) -> str | None:
        self.out.write("... " if continuation else "> ")
        self.out.flush()
        line = self.stdin.readline()
        if not line:
            self.out.write("\n")
            return None
        return line.rstrip("\n")

    @contextlib.contextmanager
    def streaming(self):
        yield

    def thinking(self, on: bool) -> None:
        pass

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def notice(self, text: str) -> None:
        """A line about the chat (not the model's words): stderr, so stdout stays the transcript."""
        self.out.flush()
        print(text, file=sys.stderr, flush=True)


class TerminalUI(PlainUI):
    def __init__(self, history_file: str):
        from prompt_toolkit import PromptSession
        from prompt_toolkit.formatted_text import ANSI
        from prompt_toolkit.history import FileHistory, InMemoryHistory
        from prompt_toolkit.key_binding import KeyBindings

        super().__init__(sys.stdin, sys.stdout)
        self.colour = use_colour(sys.stdout)
        history = InMemoryHistory()
        if history_file:
            try:
                Path(history_file).expanduser().parent.mkdir(parents=True, exist_ok=True)
                history = FileHistory(str(Path(history_file).expanduser()))
            except OSError as e:
                stderr(f"warning: history file {history_file}: {e.strerror or e}; history kept for this session only")
        keys = KeyBindings()

        @keys.add("escape", "enter")  # Esc then Enter, or Alt-Enter: a new line inside the message
        def _(event):
            event.current_buffer.insert_text("\n")

        self.prompt = ANSI("\x1b[1;32m> \x1b[0m") if self.colour else "> "
        self.more = ANSI("\x1b[2m... \x1b[0m") if self.colour else "... "
        self.session = PromptSession(history=history, key_bindings=keys, enable_history_search=False,
                                     color_depth=None if self.colour else _monochrome())
        self.thinking_shown = False

    def read_line(self, continuation: bool = False) -> str | None:
        try:
            return self.session.prompt(self.more if continuation else self.prompt)
        except EOFError:
            return None

    @contextlib.contextmanager
    def streaming(self):
        """No echo and no line buffering while a reply streams (Ctrl-C still interrupts); whatever was
        typed meanwhile is thrown away afterwards, at the terminal and in prompt_toolkit's own buffer."""
        import termios

        from prompt_toolkit.input.typeahead import clear_typeahead

        fd = sys.stdin.fileno()
        try:
            saved = termios.tcgetattr(fd)
        except termios.error:
            saved = None
        if saved is not None:
            quiet = list(saved)
            quiet[3] &= ~(termios.ECHO | termios.ICANON)
            termios.tcsetattr(fd, termios.TCSANOW, quiet)
        try:
            yield
        finally:
            if saved is not None:
                termios.tcflush(fd, termios.TCIFLUSH)
                termios.tcsetattr(fd, termios.TCSANOW, saved)
            clear_typeahead(self.session.input)

    def thinking(self, on: bool) -> None:
        """A dim marker from Enter until the first piece of the reply."""
        if on and not self.thinking_shown:
            self.out.write("\x1b[2m…thinking\x1b[0m" if self.colour else "…thinking")
        elif not on and self.thinking_shown:
            self.out.write("\r\x1b[K")
        self.out.flush()
        self.thinking_shown = on

    def notice(self, text: str) -> None:
        self.out.write(f"\x1b[2m{text}\x1b[0m\n" if self.colour else text + "\n")
        self.out.flush()


def _monochrome():
    from prompt_toolkit.output import ColorDepth

    return ColorDepth.MONOCHROME


# ---- the loop ------------------------------------------------------------------------------------------

def read_message(ui) -> str | None:
    """One message: a line, or a block between lines of three double quotes (as Ollama). None at the end
    of input."""
    while True:
        try:
            line = ui.read_line()
        except KeyboardInterrupt:  # Ctrl-C at the prompt clears the line, as in a shell
            continue
        if line is None:
            return None
        if not line.lstrip().startswith(FENCE):
            return line
        first = line.lstrip()[len(FENCE):]
        if first.rstrip().endswith(FENCE) and first.strip():  # """one line"""
            return first.rstrip()[:-len(FENCE)]
        lines = [first] if first else []
        while True:
            more = ui.read_line(continuation=True)
            if more is None:
                return "\n".join(lines) if lines else None
            if more.rstrip().endswith(FENCE):
                tail = more.rstrip()[:-len(FENCE)]
                if tail:
                    lines.append(tail)
                return "\n".join(lines)
            lines.append(more)


def repl(session: ChatSession, ui, show_speed: bool = True) -> int:
    """Read messages, stream replies, until /exit or the end of input."""
    if isinstance(ui, TerminalUI):
        ui.notice("llamacpu chat: /help lists the commands; Esc Enter: new line; Ctrl-C stops a reply; Ctrl-D quits")
    while True:
        text = read_message(ui)
        if text is None:
            return 0
        word = text.strip().split(maxsplit=1)
        if word and word[0].startswith("/") and "\n" not in text.strip():
            if command(session, ui, word[0], word[1] if len(word) > 1 else "") == "exit":
                return 0
            continue
        if not text.strip():
            continue
        turn(session, ui, text, show_speed)


def command(session: ChatSession, ui, name: str, arg: str) -> str | None:
    if name in ("/exit", "/quit", "/bye"):
        return "exit"
    if name == "/reset":
        session.reset()
        ui.write("(conversation reset)\n")
    elif name == "/help":
        ui.write("".join(f"  {k:<12} {v}\n" for k, v in COMMANDS.items()) + '  """ ... """   a multi-line message\n')
    elif name in ("/save", "/load"):
        if not arg:
            ui.notice(f"{name} needs a file name: {name} FILE")
            return None
        try:
            if name == "/save":
                path = session.save(arg)
                ui.write(f"(saved {len(session.messages)} messages to {path})\n")
            else:
                n = session.load(arg)
                ui.write(f"(loaded {n} messages from {arg})\n")
        except (LlamacpuError, OSError) as e:
            ui.notice(f"error: {e}")
    else:
        ui.notice(f"unknown command {name}{suggest(name, [c.split()[0] for c in COMMANDS])}; /help lists them")
    return None


def turn(session: ChatSession, ui, text: str, show_speed: bool) -> None:
    """One message and its streamed reply, with the notices around it."""
    shown = False
    stopped = False
    before = len(session.messages)
    with ui.streaming():
        ui.thinking(True)
        try:
            for piece in session.send(text):
                if not shown:
                    ui.thinking(False)
                    if session.dropped_turns:
                        context_notice(session, ui)
                    shown = True
                ui.write(piece)
        except KeyboardInterrupt:
            stopped = True
        except LlamacpuError as e:  # e.g. the message cannot fit the context even alone: the chat goes on
            ui.thinking(False)
            del session.messages[before:]
            ui.notice(f"error: {e}")
            return
        finally:
            ui.thinking(False)
    if not shown and session.dropped_turns:
        context_notice(session, ui)
    if stopped:
        ui.write(" [stopped]")
    ui.write("\n")
    if session.finish_reason == "length":
        n = session.stats.new_tokens
        if n < (session.generation_kwargs.get("max_new_tokens") or 0):
            ui.notice(f"[reply cut after {n} tokens at the end of the context: -c sets its size]")
        else:
            ui.notice(f"[reply cut at the {n}-token limit: -n sets it]")
    if show_speed:
        stderr(f"{speed_line(session.stats)} (reused {session.reused_tokens} cached tokens)")


def context_notice(session, ui) -> None:
    n = session.dropped_turns
    ui.notice(f"[context full: dropped the oldest {n} turn{'s' if n > 1 else ''}"
              f"{', kept the system prompt' if session.system else ''}]")
