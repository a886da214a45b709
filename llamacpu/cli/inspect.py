"""`llamacpu inspect MODEL --prompt TEXT`: one forward pass, one table row per layer.

    |resid|   L2 norm of the residual stream at the last token after the layer
    +attn     norm of what the layer's attention block added to it (o_proj)
    +mlp      norm of what its MLP block added (down)
    entropy   bits per attention head, mean over the prompt's tokens (0 = looks at one token)
    lens      the logit lens: the top tokens if decoding stopped after this layer

--step pauses after each layer (Enter continues; at end of input it runs on) and shows what changed.
--compare-transformers runs transformers on the same tokens and names the first tensor that differs.
--html FILE writes the same pass as one self-contained page (llamacpu.inspect.html); --png DIR saves each
layer's attention heatmaps (needs matplotlib: pip install 'llamacpu[plot]').
"""
from __future__ import annotations

import sys

import numpy as np

from ..inspect import lens
from ..inspect.tokens import token_labels
from ..inspect.visualizer import save_heatmaps
from ..inspect.trace import trace as run_trace
from .common import add_model_args, load, stderr

COLUMNS = __doc__.split("\n\n")[1]


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="layer-by-layer view of a forward pass")
    add_model_args(p)
    p.add_argument("--prompt", "-p", default="Once upon a time")
    p.add_argument("--step", action="store_true", help="pause after each layer")
    p.add_argument("--compare-transformers", action="store_true")
    p.add_argument("--top", type=int, default=3, help="tokens shown by the logit lens")
    p.add_argument("--html", metavar="FILE", help="also write the pass as a self-contained HTML page")
    p.add_argument("--png", metavar="DIR", help="also save attention heatmaps, one PNG per layer (matplotlib)")
    p.set_defaults(func=inspect_main)


def token_label(tokenizer, i: int) -> str:
    """The token as text (`' Paris'`, not the vocabulary's `'ĠParis'`; see llamacpu.inspect.tokens)."""
    try:
        return repr(token_labels(tokenizer, [int(i)])[0]["text"])
    except Exception:  # a tokenizer without pieces: show the text
        return repr(tokenizer.decode([int(i)]))


def format_top(tokenizer, logits, k: int) -> str:
    return "  ".join(f"{token_label(tokenizer, i)} {p:.2f}" for i, p in lens.top_tokens(logits, k))


def inspect_main(args, out=None, stdin=None) -> int:
    out, stdin = out or sys.stdout, stdin or sys.stdin
    if args.compare_transformers:
        from ..inspect.compare import missing_packages

        missing = missing_packages()
        if missing:  # checked before the model loads, so the answer is immediate
            stderr(f"--compare-transformers needs torch and transformers; not installed here: {', '.join(missing)} "
                   "(pip install torch transformers)")
            return 1
    if args.png:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:  # checked before the model loads, so the answer is immediate
            stderr(f"--png needs matplotlib (pip install 'llamacpu[plot]'): {e}")
            return 1
    model, tok = load(args, stderr)
    ids = tok.encode(args.prompt or "")
    if not ids:
        ids = [tok.bos_token_id if tok.bos_token_id is not None else 0]
    tr = run_trace(model, np.asarray([ids], np.int64))
    print_report(model, tok, tr, args.top, step=args.step, out=out, stdin=stdin)
    if args.html:
        path = tr.to_html(args.html, tok)
        stderr(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB): open it in a browser")
    if args.png:
        paths = save_heatmaps(tr, [[t["text"] for t in token_labels(tok, ids)]], args.png)
        stderr(f"saved {len(paths)} heatmaps in {args.png}")
    if args.compare_transformers:
        return compare(model, tr, out)
    return 0


def print_report(model, tok, tr, top: int = 3, step: bool = False, out=sys.stdout, stdin=None) -> None:
    cfg, L = model.config, tr.num_layers
    say = lambda s="": print(s, file=out, flush=True)  # noqa: E731
    norms, updates = lens.residual_norms(tr), lens.update_norms(tr)
    entropy = lens.attention_entropy(tr)  # [L, H]
    lens_logits = lens.logit_lens(model, tr)[:, 0]  # [L + 1, vocab]; row 0 = the embedding
    ids, pause = tr.input_ids[0], step
    labels = [token_label(tok, i) for i in ids]

    say(f"model: {getattr(model, 'name_or_path', '?')}: {L} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads of {cfg.head_dim}, "
        f"vocab {cfg.vocab_size}")
    say(f"prompt: {len(ids)} tokens: " + " ".join(labels))
    say(f"at the last token {labels[-1]}:")
    say(COLUMNS)
    say()
    ent_width = max(len("entropy per head (bits)"), 5 * cfg.num_attention_heads - 1)
    header = f"{'':8} {'|resid|':>8} {'+attn':>7} {'+mlp':>7}  {'entropy per head (bits)':<{ent_width}}  lens (top {top})"
    say(header)
    say(f"{'embed':8} {norms[0]:8.2f} {'':7} {'':7}  {'':<{ent_width}}  {format_top(tok, lens_logits[0], top)}")
    for i in range(L):
        ent = " ".join(f"{e:4.2f}" for e in entropy[i])
        say(f"{'layer ' + str(i):8} {norms[i + 1]:8.2f} {updates[i, 0]:7.2f} {updates[i, 1]:7.2f}  "
            f"{ent:<{ent_width}}  {format_top(tok, lens_logits[i + 1], top)}")
        if step:
            say(step_details(tok, tr, i, lens_logits, labels, top))
            if pause and not wait(stdin, f"[Enter: layer {i + 1}]" if i + 1 < L else "[Enter: the output]"):
                pause = False  # end of input: run on without pausing
    final = tr["logits"][0, -1]
    (nxt, p), = lens.top_tokens(final, 1)
    say(f"next token: {token_label(tok, nxt)} (p {p:.2f}); the last layer's lens is the model's own output")


def step_details(tok, tr, i: int, lens_logits, labels, top: int) -> str:
    """What layer i changed at the last token."""
    before, after = tr.residual(i)[0, -1], tr.residual(i + 1)[0, -1]
    cos = float(before @ after / (np.linalg.norm(before) * np.linalg.norm(after) + 1e-30))
    old = {t for t, _ in lens.top_tokens(lens_logits[i], top)}
    new = {t for t, _ in lens.top_tokens(lens_logits[i + 1], top)}
    names = lambda s: " ".join(token_label(tok, t) for t in sorted(s)) or "-"  # noqa: E731
    probs = tr[f"layers.{i}.attn_probs"][0, :, -1]  # [H, S]: where each head looks from the last token
    looks = ", ".join(f"h{h} {labels[int(j)]} {probs[h, j]:.2f}" for h, j in enumerate(probs.argmax(-1)))
    return (f"  layer {i} moved the residual by |Δ| {np.linalg.norm(after - before):.2f} "
            f"(cosine with before {cos:.2f})\n"
            f"  lens gained: {names(new - old)}   lost: {names(old - new)}\n"
            f"  heads look most at: {looks}")


def wait(stdin, prompt: str) -> bool:
    """Pause until Enter; False at the end of input (a pipe or /dev/null), so the caller stops asking."""
    print(prompt, file=sys.stderr, flush=True)
    try:
        return stdin is not None and stdin.readline() != ""
    except (OSError, ValueError):  # closed stdin
        return False


def compare(model, tr, out) -> int:
    from ..inspect.compare import first_divergence, reference_tensors

    reference = reference_tensors(model.name_or_path, tr.input_ids)
    name, err, n = first_divergence(tr, reference)
    if name is None:
        print(f"transformers: all {n} compared tensors match (largest relative difference {err:.1e})", file=out)
        return 0
    print(f"transformers: first tensor that diverges: {name} (max |Δ| = {err:.1e} of max |reference|, "
          f"after {n - 1} matching)", file=out)
    return 1
