"""`llamacpu embed MODEL TEXT...`: one pooled, normalized vector per text (llamacpu.model.pooling)."""
from __future__ import annotations

import json
import sys

from ..errors import InputError
from ..model.pooling import POOLINGS
from .common import add_model_args, check_model_argument, load, read_text, stderr

EXAMPLES = """examples:
  llamacpu embed "a cat" "a dog"                     # one line of numbers per text
  llamacpu embed model.gguf "hello" --pooling last --json
  llamacpu embed -f sentences.txt --json > vectors.json   # one text per line"""


def add_parser(sub) -> None:
    p = sub.add_parser("embed", help="sentence embeddings: pooled final hidden states", epilog=EXAMPLES,
                       description="Embed each TEXT (or each line of -f FILE) as one vector of the model's "
                                   "hidden size, L2-normalized unless --no-normalize.")
    add_model_args(p, positional=False)
    p.add_argument("texts", nargs="*", metavar="TEXT",
                   help="texts to embed; with no -m, a first argument that is a model path or .gguf file is "
                        "taken as MODEL")
    p.add_argument("-f", "--file", metavar="FILE", help="embed each non-empty line of FILE ('-' = stdin)")
    p.add_argument("--pooling", default="mean", choices=POOLINGS, help="how the tokens' states become one vector")
    p.add_argument("--no-normalize", action="store_true", help="keep the raw pooled vector")
    p.add_argument("--json", action="store_true", help='one JSON object: {"model", "pooling", "data": [...]}')
    p.set_defaults(func=cmd_embed)


def split_model(args) -> None:
    """`llamacpu embed MODEL TEXT...`: the first word is the model when it names a file or folder."""
    from pathlib import Path

    if args.model is None and args.texts and (Path(args.texts[0]).exists() or args.texts[0].endswith(".gguf")):
        args.model, args.texts = args.texts[0], args.texts[1:]


def cmd_embed(args) -> int:
    from ..model.pooling import embed

    split_model(args)
    if args.model:
        check_model_argument(args.model)
    texts = list(args.texts)
    if args.file:
        texts += [line for line in read_text(args.file).splitlines() if line.strip()]
    if not texts:
        raise InputError("nothing to embed: give TEXT arguments or -f FILE")
    model, tok = load(args, None)
    vectors = embed(model, tok, texts, pooling=args.pooling, normalize=not args.no_normalize)
    if args.json:
        json.dump({"model": getattr(model, "name_or_path", None), "pooling": args.pooling,
                   "normalized": not args.no_normalize,
                   "data": [{"index": i, "text": t, "embedding": v.tolist()} for i, (t, v) in enumerate(zip(texts, vectors))]},
                  sys.stdout)
        sys.stdout.write("\n")
    else:
        for v in vectors:
            sys.stdout.write(" ".join(f"{x:.6g}" for x in v) + "\n")
    stderr(f"{len(texts)} vector{'s' if len(texts) > 1 else ''} of {vectors.shape[1]} ({args.pooling} pooling)")
    return 0
