"""Which tokens each token may attend to, drawn in the terminal as transformers'
`AttentionMaskVisualizer` does: one row per query token, one column per key, ■ = may attend,
⬚ = masked. Two rules make the mask (`llamacpu.kernels.attention`):
  causal:  token t sees tokens 0..t only;
  padding: no token sees a padding position (attention_mask 0); a padding token sees nothing.
With a model and matplotlib, it also saves the real attention probabilities as heatmaps, one PNG per
layer with one panel per head.

    python -m llamacpu.inspect.visualizer MODEL --prompt "Once upon a time" [--prompt "Hi" ...] [--png DIR]
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .mask import EMPTY, FILLED, GREEN, LEGEND, RESET, allowed, render_mask  # noqa: F401 (public here)
from .tokens import token_labels

def render(tokens: list, attention_mask, color: bool = False) -> str:
    """The legend, then one grid per row of a batch: tokens [B][T] strings, attention_mask [B, T]."""
    mask = np.atleast_2d(np.asarray(attention_mask))
    parts = [LEGEND]
    for b, (row_tokens, row_mask) in enumerate(zip(tokens, mask)):
        if len(mask) > 1:
            pad = int((row_mask == 0).sum())
            parts.append(f"row {b}" + (f" ({pad} padding)" if pad else ""))
        parts.append(render_mask(row_tokens, row_mask, color))
    return "\n".join(parts)


class AttentionMaskVisualizer:
    """`AttentionMaskVisualizer(tokenizer)("some text")` prints the causal mask of the text's tokens;
    a list of texts is left-padded into a batch (as generate() pads) and shows the padding too.
    With a model, `heatmaps=DIR` also saves each layer's attention probabilities as PNG."""

    def __init__(self, tokenizer, model=None):
        self.tokenizer, self.model = tokenizer, model

    @classmethod
    def from_pretrained(cls, path, load_model: bool = True, **kwargs):
        """The tokenizer of a model folder or .gguf file, and the model itself unless load_model=False."""
        from ..model.causal_lm import LlamaForCausalLM
        from ..tokenizer.auto import AutoTokenizer

        model = LlamaForCausalLM.from_pretrained(path, **kwargs) if load_model else None
        return cls(AutoTokenizer.from_pretrained(path), model)

    def encode(self, texts) -> tuple:
        """texts (a string or a list) -> (ids int64 [B, T], mask [B, T], tokens [B][T]), left-padded."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        rows = [self.tokenizer.encode(t) for t in texts]
        T = max(map(len, rows))
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id  # any id: a padding position is never read
        ids = np.array([[pad_id] * (T - len(r)) + r for r in rows], np.int64)
        mask = np.array([[0] * (T - len(r)) + [1] * len(r) for r in rows], np.uint8)
        tokens = [["<pad>"] * (T - len(r)) + list(self.tokenizer.convert_ids_to_tokens(r)) for r in rows]
        return ids, mask, tokens

    def render(self, texts, color: bool = False) -> str:
        _, mask, tokens = self.encode(texts)
        return render(tokens, mask, color)

    def __call__(self, texts, heatmaps: str | Path | None = None) -> None:
        print(self.render(texts, color=sys.stdout.isatty()))
        if heatmaps is not None:
            if self.model is None:
                raise ValueError("heatmaps need a model: AttentionMaskVisualizer(tokenizer, model)")
            ids, mask, tokens = self.encode(texts)
            labels = [[t["text"] for t in token_labels(self.tokenizer, r)] for r in ids]
            labels = [[lab if m else "<pad>" for lab, m in zip(r, mr)] for r, mr in zip(labels, mask)]
            paths = save_heatmaps(self.model.trace(ids, mask), labels, heatmaps)
            print(f"saved {len(paths)} heatmaps in {heatmaps}" if paths else
                  "heatmaps need matplotlib (pip install 'llamacpu[plot]'): none saved")


def save_heatmaps(trace, tokens: list, out_dir, row: int = 0) -> list:
    """One PNG per layer (layer_00.png, ...): a grid with one panel per head of batch row `row`'s
    attention probabilities, queries down, keys across, masked cells grey, one colour bar (0..1);
    tokens [B][T] label the axes. Returns the paths; [] when matplotlib is not installed
    (pip install 'llamacpu[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, no window
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [str(t) if len(str(t)) <= 14 else str(t)[:13] + "…" for t in tokens[row]]
    T, L = len(labels), trace.num_layers
    masked = ~allowed(trace.attention_mask[row][None])[0]  # [T, T]
    H = trace["layers.0.attn_probs"].shape[1]
    cols = min(H, 3 if H == 9 else 4)
    rows = -(-H // cols)
    # All heads go into one RGBA image on one axes (a block per head, one blank cell between blocks):
    # matplotlib spends its time on tick labels, so one axes with one set of labels is ~10x faster
    # than a grid of subplots.
    step = T + 1
    cmap = plt.get_cmap("viridis")
    side = max(2.4, min(5.5, 0.16 * T + 1.0))  # inches per head: room for one label per token
    fig, ax = plt.subplots(figsize=(side * cols + 2.2, side * rows + 1.0), dpi=100, layout="constrained")
    canvas = np.full((rows * step - 1, cols * step - 1, 4), 255, np.uint8)  # RGBA bytes: nothing to convert
    image = ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([c * step + t for c in range(cols) for t in range(T)], labels * cols, rotation=90, fontsize=6)
    ax.set_yticks([r * step + t for r in range(rows) for t in range(T)], labels * rows, fontsize=6)
    ax.set_xlabel("key token", fontsize=8)
    ax.set_ylabel("query token", fontsize=8)
    ax.tick_params(length=0)
    for side_ in ax.spines.values():
        side_.set_visible(False)
    titles = [ax.text((h % cols) * step, (h // cols) * step - 0.7, f"head {h}", fontsize=8, va="bottom")
              for h in range(H)]
    fig.colorbar(plt.cm.ScalarMappable(plt.Normalize(0, 1), cmap), ax=ax, shrink=0.6,
                 label="attention probability (grey: masked)")
    title = fig.suptitle("attention probabilities, layer 00: query tokens down, key tokens across", fontsize=10)
    # Draw everything that is the same for every layer once (axes, token labels, colour bar), keep the
    # pixels, and per layer paint only the heatmap and the title over them (matplotlib's blitting):
    # a full redraw per file spends most of its time laying out the same tick labels again.
    fig.canvas.draw()
    fig.set_layout_engine("none")
    for artist in (*titles, title):  # drawn per layer, over the heatmap
        artist.set_visible(False)
    fig.canvas.draw()
    background = fig.canvas.copy_from_bbox(fig.bbox)
    for artist in (*titles, title):
        artist.set_visible(True)
    paths = []
    for i in range(L):
        probs = trace[f"layers.{i}.attn_probs"][row]  # [H, T, S]
        for h in range(H):
            r, c = divmod(h, cols)
            block = cmap(np.nan_to_num(probs[h]), bytes=True)
            block[masked | ~np.isfinite(probs[h])] = (230, 230, 230, 255)
            canvas[r * step:r * step + T, c * step:c * step + T] = block
        image.set_data(canvas)
        title.set_text(f"attention probabilities, layer {i}: query tokens down, key tokens across")
        fig.canvas.restore_region(background)
        for artist in (image, *titles, title):
            fig.draw_artist(artist)
        path = out_dir / f"layer_{i:02d}.png"
        plt.imsave(path, np.asarray(fig.canvas.buffer_rgba()))
        paths.append(path)
    plt.close(fig)
    return paths


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m llamacpu.inspect.visualizer", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model folder or .gguf file")
    p.add_argument("--prompt", "-p", action="append", help="text (repeat for a left-padded batch)")
    p.add_argument("--png", help="folder for attention heatmaps (needs matplotlib)")
    args = p.parse_args(argv)
    vis = AttentionMaskVisualizer.from_pretrained(args.model, load_model=args.png is not None)
    vis(args.prompt or ["Once upon a time"], heatmaps=args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
