"""The `llamacpu` command: generate, chat, serve, perplexity, embed, quantize, inspect, bench.

Flags follow llama.cpp's habits (-m, -hf, -p, -f, -n, -t, -c, --temp, --top-k, --top-p, --min-p,
--repeat-penalty, --seed) with transformers-style long aliases (--max-new-tokens, --temperature,
--repetition-penalty, --max-context). MODEL is a folder, a .gguf file or a Hugging Face repo id;
without one, the embedded default model (SmolLM2-135M-Instruct) is used.

One module per subcommand, each with `add_parser(sub)` registering its flags and `func`; the shared
helpers (model flags, argument checks, loading, the speed line, notes) live in common.py. Library
modules never import this package: it sits on top of everything else.
"""
from __future__ import annotations

import os
import sys
import traceback

from . import bench, chat, embed, generate, inspect, perplexity, quantize, serve
from .common import Parser, UsageError, add_common_args, refusal, stderr, unknown_flags_message, validate

# the subcommands in the order `llamacpu --help` lists them; a new one is a module with add_parser(sub)
COMMANDS = [generate, chat, serve, perplexity, embed, quantize, inspect, bench]

EPILOG = """examples:
  llamacpu generate -p "Once upon a time" -n 64                 # the embedded SmolLM2-135M-Instruct
  llamacpu generate --chat -p "What is the capital of France?" --temp 0
  llamacpu chat ./my-model-folder --system "You are concise."
  echo "Summarize: ..." | llamacpu generate --chat model.gguf
  llamacpu serve model.gguf --port 8080 -np 8                    # OpenAI-compatible HTTP server
  llamacpu perplexity model.gguf -f wiki.test.raw -c 512
  llamacpu <command> --help                                      # the flags of one command"""


def build_parser() -> Parser:
    from .. import __version__

    parser = Parser(prog="llamacpu", description="Llama inference on the CPU (NumPy + Numba)", epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"llamacpu {__version__}")
    add_common_args(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    for p in sub.choices.values():  # every subcommand takes --debug, wherever it is written
        if "--debug" not in p._option_string_actions:
            add_common_args(p)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv or os.environ.get("LLAMACPU_DEBUG", "") not in ("", "0")
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            command = parser._subparsers._group_actions[0].choices.get(args.command, parser)
            raise UsageError(unknown_flags_message(command, extra), command.prog)
        validate(args)
        return args.func(args)
    except UsageError as e:
        print(f"{e.prog}: error: {e}; see {e.prog} --help", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        stderr("interrupted")
        return 130
    except BrokenPipeError:  # the reader went away (| head): not an error; keep Python quiet at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # noqa: BLE001 - the one place that turns any error into one line
        if debug:
            traceback.print_exc()
        stderr(refusal(e))
        return 1


if __name__ == "__main__":
    sys.exit(main())
