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
    p.add_argument("--calibration", metavar="FILE",
                   help="int4_g128 only: a text file whose first --calibration-tokens tokens measure each "
                        "projection's input (activation-aware rounding, as AWQ); default: min-max rounding")
    p.add_argument("--calibration-tokens", type=int, default=512, metavar="N",
                   help="tokens of the calibration text to use (default 512)")
    p.add_argument("-t", "--threads", type=int, metavar="N",
                   help="threads for the quantizers (default: all cores, or NUMBA_NUM_THREADS), as llama-quantize's "
                        "nthreads")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args) -> int:
    if not Path(args.src).expanduser().exists():
        raise InputError(f"{args.src}: no such file or folder")
    if args.calibration and (args.dst.endswith(".gguf") or args.type.lower() != "int4_g128"):
        raise InputError("--calibration: only for --type int4_g128 into a checkpoint folder (the GGUF mixes "
                         "follow llama.cpp's quantizers without an importance matrix)")
    if args.threads is not None:  # checked in common.validate; the quantizers run a thread per Numba thread
        from ..model.causal_lm import set_num_threads

        set_num_threads(args.threads)
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
        importance = calibrate(args) if args.calibration else None
        out = quantize_checkpoint(args.src, args.dst, args.type, progress=True, importance=importance)
    stderr(f"wrote {out}")
    return 0


def calibrate(args) -> dict:
    """Each projection's mean squared input over the calibration text, on SRC's unquantized model."""
    from ..checkpoint.calibrate import input_importance
    from ..limits import read_text
    from ..model.causal_lm import LlamaForCausalLM
    from ..tokenizer.auto import AutoTokenizer
    from .common import check_readable_file

    check_readable_file(args.calibration, "--calibration")
    if args.calibration_tokens < 1:
        raise InputError(f"--calibration-tokens: expected at least 1, got {args.calibration_tokens}")
    text = read_text(Path(args.calibration), InputError, "--calibration")
    model = LlamaForCausalLM.from_pretrained(args.src)
    ids = AutoTokenizer.from_pretrained(args.src).encode(text)[: args.calibration_tokens]
    if not ids:
        raise InputError(f"--calibration: {args.calibration} holds no tokens")
    stderr(f"calibrating on {len(ids)} tokens of {args.calibration}")
    return input_importance(model, ids)
