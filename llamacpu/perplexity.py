"""Perplexity of a text, with the windows of llama.cpp's `llama-perplexity`, so the numbers compare.

Default (llama-perplexity without --ppl-stride): the tokens (BOS first when the tokenizer adds one) are
cut into consecutive windows of `ctx` tokens, as many whole windows as fit (at least two). Each window
is evaluated from an empty cache with its first token replaced by BOS (when the tokenizer adds BOS).
The first half of each window is context only; the tokens at positions ctx/2 + 1 ... ctx - 1 are
scored, each predicted from everything before it in its window. Then

    NLL = mean over scored tokens of -log p(token | window so far),    PPL = exp(NLL)
    standard error of PPL = PPL * sqrt((mean(nll^2) - NLL^2) / (count - 1))   (llama.cpp's estimate)

Strided (llama-perplexity --ppl-stride N): windows of `ctx` tokens start every N tokens; in each, the
last N tokens are scored. llama.cpp puts BOS into a strided window only after evaluating it, so the
window is evaluated as the text has it; we do the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import InputError


@dataclass
class Perplexity:
    ppl: float
    se: float  # standard error of ppl
    nll: float  # mean negative log-likelihood (nats per token)
    count: int  # tokens scored
    windows: int
    ctx: int
    stride: int | None


def windows(n_tokens: int, ctx: int, stride: int | None = None) -> list[tuple[int, int]]:
    """[(start, first scored position inside the window)] for `n_tokens` tokens."""
    if ctx < 4:
        raise InputError(f"context: expected at least 4 tokens per window, got {ctx}")
    if n_tokens < 2 * ctx:
        raise InputError(f"the text has {n_tokens} tokens; perplexity with a context of {ctx} needs at least "
                         f"{2 * ctx} (two windows): give a longer text or a smaller context")
    if stride is None:
        return [(i * ctx, ctx // 2 + 1) for i in range(n_tokens // ctx)]
    if not 1 <= stride < ctx:
        raise InputError(f"stride: expected 1 <= stride < context ({ctx}), got {stride}")
    n = (n_tokens - ctx + stride - 1) // stride
    return [(i * stride, ctx - stride) for i in range(n)]


def token_nll(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """-log softmax(logits)[target] per row, in float64. logits [N, vocab], targets [N] -> [N]."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(targets)), targets]


def perplexity(model, ids, ctx: int = 512, stride: int | None = None, bos_token_id: int | None = None,
               progress=None) -> Perplexity:
    """Perplexity of token ids under `model` (see the module docstring for the windows). bos_token_id:
    the id that replaces each window's first token (default mode only); None when the tokenizer adds no
    BOS. progress: called with (windows done, windows in all) after each window."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if ctx > model.max_context:
        raise InputError(f"context {ctx} is longer than the model's cache ({model.max_context})")
    spans = windows(len(ids), ctx, stride)
    total = total2 = 0.0
    count = 0
    for k, (start, first) in enumerate(spans):
        window = ids[start:start + ctx].copy()
        if stride is None and bos_token_id is not None:
            window[0] = bos_token_id
        # logits of positions first-1 ... ctx-2 predict the tokens at first ... ctx-1
        logits = model(window[None], logits_to_keep=ctx - first + 1).logits[0, :-1]
        nll = token_nll(logits, window[first:])
        total += float(nll.sum())
        total2 += float((nll * nll).sum())
        count += len(nll)
        if progress:
            progress(k + 1, len(spans))
    mean = total / count
    var = total2 / count - mean * mean
    se = math.sqrt(var / (count - 1)) if var > 0 and count > 1 else 0.0
    ppl = math.exp(mean)
    return Perplexity(ppl=ppl, se=se * ppl, nll=mean, count=count, windows=len(spans), ctx=ctx, stride=stride)
