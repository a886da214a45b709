"""`llamacpu quantize SRC DST --type FMT`: write a quantized checkpoint."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import check_format, quant_formats, stderr

EXAMPLES = """examples:
  llamacpu quantize ./my-model ./my-model-q4_0 --type q4_0
  llamacpu generate ./my-model-q4_0 -p "Hello"        # loads the quantized blocks as written"""


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="write a quantized checkpoint that loads without re-quantizing",
                       epilog=EXAMPLES, description="Quantize the weights of a checkpoint folder (or .gguf "
                       "file) SRC into a new checkpoint folder DST.")
    p.add_argument("src", metavar="SRC", help="the checkpoint to quantize: a folder or a .gguf file")
    p.add_argument("dst", metavar="DST", help="the folder to write (created)")
    p.add_argument("--type", required=True, metavar="FORMAT", help=f"block format: {', '.join(quant_formats())}")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from ..checkpoint.quantized import quantize_checkpoint

    if not Path(args.src).expanduser().exists():
        raise InputError(f"{args.src}: no such file or folder")
    check_format(args.type, "--type")

    out = quantize_checkpoint(args.src, args.dst, args.type, progress=True)
    stderr(f"wrote {out}")
    return 0
