"""`llamacpu quantize SRC DST --type FMT`: write a quantized checkpoint."""
from __future__ import annotations

from .common import stderr


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="write a quantized checkpoint that loads without re-quantizing")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--type", required=True, help="q8_0, q4_0, q4_1, q4_k, int4_g128")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    from ..checkpoint.quantized import quantize_checkpoint

    out = quantize_checkpoint(args.src, args.dst, args.type, progress=True)
    stderr(f"wrote {out}")
    return 0
