"""`AttentionMaskVisualizer(model_id)(text)` from transformers.utils.attention_visualizer, on llamacpu:
prints the same box and the same rows (one per token of `tokenizer.tokenize(text)`, ■ where the
token may attend, ⬚ where it is masked, the diagonal in green). Llama has no sliding window and no
image tokens, so only the causal rule applies. For llamacpu's own view (padding, heatmaps of the real
attention probabilities) see llamacpu.inspect.visualizer.
"""
from __future__ import annotations

import numpy as np

GREEN, YELLOW, RESET = "\033[92m", "\033[93m", "\033[0m"
BLACK_SQUARE, WHITE_SQUARE = "■", "⬚"


def generate_attention_matrix_from_mask(words: list[str], mask: np.ndarray) -> str:
    """transformers' grid for `words` and an allowed-mask [n', n'] (n' >= len(words)), without the
    image-token and sliding-window decorations Llama never uses."""
    n = len(words)
    width = max(len(repr(w)) for w in words)
    row_dummy = " ".join(f"{GREEN}{BLACK_SQUARE}{RESET}" if j == 0 else BLACK_SQUARE if mask[0, j] else WHITE_SQUARE
                         for j in range(n))
    out = [" " + f"{GREEN}{BLACK_SQUARE}{RESET}: i == j (diagonal)   {YELLOW}{BLACK_SQUARE}{RESET}: token_type_ids",
           " " * (width + 5) + "Attention Matrix".ljust(len(row_dummy) // 2)]
    out += [""] * len(str(n))  # transformers prints its column numbers only beside a sliding window
    for i, word in enumerate(words):
        row = " ".join(f"{GREEN}{BLACK_SQUARE}{RESET}" if i == j else BLACK_SQUARE if mask[i, j] else WHITE_SQUARE
                       for j in range(n))
        out.append(f"{repr(word).ljust(width)}: {str(i).rjust(2)} {row}    |    ")
    return "\n".join(out)


class AttentionMaskVisualizer:
    """AttentionMaskVisualizer(model_name_or_path)(sentence): reads only the config and the tokenizer."""

    def __init__(self, model_name: str):
        from ..model.auto import AutoConfig
        from ..tokenizer.auto import AutoTokenizer

        self.repo_id = str(model_name)
        self.config = AutoConfig.from_pretrained(model_name)
        self.tokenizer = AutoTokenizer.from_pretrained(model_name)
        self.mapped_cls_name = "LlamaModel"

    def __call__(self, input_sentence: str, suffix: str = "") -> None:
        self.visualize_attention_mask(input_sentence, suffix)

    def render(self, input_sentence: str) -> str:
        tokens = self.tokenizer.tokenize(input_sentence)
        attention = np.asarray(self.tokenizer(input_sentence, return_tensors="np")["attention_mask"])[0].astype(bool)
        T = len(attention)
        allowed = np.tril(np.ones((T, T), bool)) & attention[None, :]  # causal, and no padding key
        title = f"Attention visualization for {self.config.model_type} | <class 'llamacpu.model.causal_lm.LlamaModel'>"
        border = "##" * (len(title) + 4)
        head = (f"  Attention visualization for \033[1m{self.config.model_type}:{self.repo_id}\033[0m "
                f"{self.mapped_cls_name}").center(len(border))
        return "\n".join(["", border, "##" + head + "    " + "##", border,
                          generate_attention_matrix_from_mask(tokens, allowed), border])

    def visualize_attention_mask(self, input_sentence: str, suffix: str = "") -> None:
        print(self.render(input_sentence))
