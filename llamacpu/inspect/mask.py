"""The attention mask as text: which keys each query token may read (causal, and never a padding
token), one grid per sequence. Pure functions of the mask, shared by the terminal visualizer
(`visualizer.py`) and the HTML report (`html.py`)."""
from __future__ import annotations

import numpy as np

FILLED, EMPTY = "■", "⬚"
GREEN, RESET = "\033[92m", "\033[0m"
LEGEND = f"{FILLED}: may attend   {EMPTY}: masked (causal: later tokens; padding: pad tokens)"


def allowed(attention_mask: np.ndarray) -> np.ndarray:
    """bool [B, T, T]: query t may read key s (s <= t and s is a real token)."""
    m = np.asarray(attention_mask, bool)
    T = m.shape[-1]
    causal = np.tril(np.ones((T, T), bool))
    return causal[None] & m[:, None, :]


def render_mask(tokens: list, mask_row, color: bool = False) -> str:
    """The grid for one sequence: tokens [T] (strings), mask_row [T] of 0/1."""
    grid = allowed(np.asarray(mask_row)[None])[0]
    T = len(tokens)
    labels = [repr(t) for t in tokens]
    width, digits = max(map(len, labels)), len(str(T - 1))
    margin = " " * (width + 3 + digits + 1)  # "'tok' : 12 " before the first cell
    lines = [margin + " ".join(col) for col in zip(*(str(j).rjust(digits) for j in range(T)))]
    for i, label in enumerate(labels):
        cells = []
        for j in range(T):
            c = FILLED if grid[i, j] else EMPTY
            cells.append(f"{GREEN}{c}{RESET}" if color and i == j and grid[i, j] else c)
        lines.append(f"{label.ljust(width)} : {str(i).rjust(digits)} " + " ".join(cells))
    return "\n".join(lines)
