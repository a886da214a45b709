"""The `llamacpu` command: generate, chat, quantize, inspect, bench, serve.

Flags follow llama.cpp's habits (-m, -p, -n, -t, -c, --temp, --top-k, --top-p, --min-p,
--repeat-penalty, --seed) with transformers-style long aliases (--max-new-tokens, --temperature,
--repetition-penalty, --max-context). MODEL is a folder, a .gguf file or a Hugging Face repo id;
without one, the embedded default model (SmolLM2-135M-Instruct) is used.

One module per subcommand, each with `add_parser(sub)` registering its flags and `func`; the shared
helpers (model flags, loading, the speed line, notes) live in common.py. Library modules never import
this package: it sits on top of everything else.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import LlamacpuError
from . import bench, chat, generate, inspect, quantize, serve
from .common import stderr

# the subcommands in the order `llamacpu --help` lists them; a new one is a module with add_parser(sub)
COMMANDS = [generate, chat, quantize, inspect, bench, serve]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llamacpu", description="Llama inference on the CPU (NumPy + Numba)")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
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
