"""`llamacpu perplexity MODEL -f FILE [-c CTX] [--stride N]`: how well a model predicts a text, computed
with llama.cpp's llama-perplexity windows (see llamacpu.perplexity), so that quantizations compare."""
from __future__ import annotations

import sys

from .common import add_model_args, load, progress_wanted, read_text, stderr

EXAMPLES = """examples:
  llamacpu perplexity model.gguf -f wiki.test.raw                # llama-perplexity's default: -c 512
  llamacpu perplexity ./folder -f text.txt -c 256 -q q4_0        # the same text after quantizing
  llamacpu perplexity model.gguf -f text.txt -c 512 --stride 128 # llama-perplexity --ppl-stride 128

Windows of -c tokens; the second half of each is scored (llama.cpp's definition). The final line:
  perplexity: PPL +/- standard error (N windows of C tokens, T scored tokens)"""


def add_parser(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a text, as llama.cpp's llama-perplexity computes it",
                       epilog=EXAMPLES, description="Perplexity of the text in FILE.")
    add_model_args(p)
    p.add_argument("-f", "--file", required=True, metavar="FILE", help="the text ('-' = stdin)")
    p.add_argument("--stride", type=int, help="windows every N tokens, the last N of each scored "
                                               "(llama-perplexity --ppl-stride); default: whole windows")
    p.set_defaults(func=cmd_perplexity, ctx_size_default=512)


def cmd_perplexity(args) -> int:
    from ..perplexity import perplexity, windows

    ctx = args.ctx_size or 512
    text = read_text(args.file)
    model, tok = load(args, stderr, max_context=ctx)
    ids = tok.encode(text)
    bos = tok.bos_token_id if tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id] else None
    n = len(windows(len(ids), ctx, args.stride))  # refuses a text too short before any work
    stderr(f"{len(ids)} tokens, {n} windows of {ctx}" + (f" every {args.stride}" if args.stride else ""))
    bar = None
    if progress_wanted():
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="window", file=sys.stderr, leave=False)
    result = perplexity(model, ids, ctx, args.stride, bos, progress=(lambda k, total: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    print(f"perplexity: {result.ppl:.4f} +/- {result.se:.4f} ({result.windows} windows of {ctx} tokens, "
          f"{result.count} scored tokens, mean NLL {result.nll:.4f})")
    return 0
