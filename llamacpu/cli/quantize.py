"""`llamacpu quantize SRC DST --type FMT`: write a quantized checkpoint (a GGUF file in one of llama.cpp's
mixes when DST ends in .gguf, else llamacpu's quantized safetensors folder)."""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import check_format, quant_formats, stderr

EXAMPLES = """examples:
  llamacpu quantize ./my-model ./my-model-Q4_K_M.gguf --type Q4_K_M   # a GGUF file llama.cpp loads too
  llamacpu quantize ./my-model ./my-model-q4_0 --type q4_0
  llamacpu generate ./my-model-q4_0 -p "Hello"        # loads the quantized blocks as written"""


def add_parser(sub) -> None:
    from ..checkpoint.gguf_write import mix_names

    p = sub.add_parser("quantize", help="write a quantized checkpoint: a GGUF file (llama.cpp's mixes) or a folder",
                       epilog=EXAMPLES, description="Quantize the weights of a checkpoint folder (or .gguf "
                       "file) SRC into DST: a GGUF file when DST ends in .gguf, else a checkpoint folder.")
    p.add_argument("src", metavar="SRC", help="the checkpoint to quantize: a folder or a .gguf file")
    p.add_argument("dst", metavar="DST", help="DST.gguf: a GGUF file; else the folder to write (created)")
    p.add_argument("--type", required=True, metavar="FORMAT",
                   help=f"for .gguf, llama.cpp's mixes: {', '.join(mix_names())}; for a folder, a block format: "
                        f"{', '.join(quant_formats())}")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    if not Path(args.src).expanduser().exists():
        raise InputError(f"{args.src}: no such file or folder")
    if args.dst.endswith(".gguf"):
        from ..checkpoint.gguf_write import quantize_to_gguf

        out = quantize_to_gguf(args.src, args.dst, args.type, progress=True)
    else:
        from ..checkpoint.gguf_write import MIXES
        from ..checkpoint.quantized import quantize_checkpoint

        if args.type.upper() in MIXES and args.type.lower() not in quant_formats():
            raise InputError(f"--type {args.type} is one of llama.cpp's GGUF mixes: give DST a .gguf name "
                             f"(e.g. {Path(args.dst).name}.gguf)")
        check_format(args.type, "--type")
        out = quantize_checkpoint(args.src, args.dst, args.type, progress=True)
    stderr(f"wrote {out}")
    return 0
