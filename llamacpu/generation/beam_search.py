"""Beam search as transformers 5 defines it (GenerationMixin._beam_search), so the same settings give
the same sequences and scores.

Each prompt keeps `num_beams` running hypotheses. At each step every beam's next-token log-probabilities
(log_softmax of the logits, then the logits processors) are added to its running score; the best
K = max(2, 1 + #eos) * num_beams continuations over all beams are kept (K > num_beams so that enough
stay open when some end). A continuation that ends (EOS, or the length limit) joins the finished list
if it is among the top num_beams, scored

    score = sum(log p) / (new_tokens ** length_penalty)

(length_penalty > 0 favours longer sequences); the num_beams best finished ones are kept. The search
stops when no running beam can still beat the worst finished one (transformers' heuristic, controlled
by early_stopping), or at max_new_tokens. Arrays follow transformers' layout: [batch, beams, ...].
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedError
from ..model.outputs import GenerateBeamDecoderOnlyOutput
from .sampling import GenerationConfig, repetition_penalty

NEG = -1.0e9  # transformers' "impossible" score


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Values and indices of the k largest entries of each row, largest first (ties: lower index)."""
    idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    return np.take_along_axis(x, idx, axis=-1), idx


def gather(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a [B, N, ...], idx [B, K] -> a[b, idx[b, k], ...]."""
    return a[np.arange(a.shape[0])[:, None], idx]


def reorder_cache(cache, beam_idx: np.ndarray) -> None:
    """Row r of the KV cache becomes old row beam_idx[r] (beams that continue another beam's prefix)."""
    if not isinstance(cache.k, np.ndarray):
        raise UnsupportedError("beam search needs the CPU backend (its cache rows are reordered in host memory)")
    cache.k[:] = cache.k[:, beam_idx]
    cache.v[:] = cache.v[:, beam_idx]
    cache.valid[:] = cache.valid[beam_idx]
    cache.seen[:] = cache.seen[beam_idx]
    cache._sync()


def beam_search(model, ids: np.ndarray, mask: np.ndarray, config: GenerationConfig):
    """ids, mask [B, T] (validated) -> int64 [B * num_return_sequences, T + n], or a
    GenerateBeamDecoderOnlyOutput with return_dict_in_generate=True."""
    nb, lp, early = config.num_beams, config.length_penalty, config.early_stopping
    B, T = ids.shape
    max_length = T + config.max_new_tokens
    eos = np.array(config.eos_token_id or [], np.int64)
    K = max(2, 1 + len(eos)) * nb
    top_nb = np.arange(K) < nb  # only the top num_beams continuations may finish

    fill = (config.pad_token_id or (int(eos[0]) if len(eos) else -1)) if len(eos) else -1
    running = np.full((B, nb, max_length), fill, np.int64)
    running[:, :, :T] = ids[:, None]
    sequences = running.copy()
    running_scores = np.zeros((B, nb))
    running_scores[:, 1:] = NEG  # every beam starts as the prompt: only the first one may expand at step 0
    beam_scores = np.full((B, nb), NEG)
    finished = np.zeros((B, nb), bool)
    improvable = np.ones((B, 1), bool)
    running_idx = np.full((B, nb, max(max_length - T, 1)), -1, np.int64)
    beam_idx_out = running_idx.copy()
    all_scores = []

    flat_mask = np.repeat(mask, nb, axis=0)  # [B * nb, T]
    cache = model.new_cache(B * nb)
    cache.check_room(max(max_length - 1, T))  # before any work: the whole search must fit the context
    logits = model.next_token_logits(np.repeat(ids, nb, axis=0), flat_mask, cache) if config.max_new_tokens else None
    cur = T
    while cur < max_length:
        V = logits.shape[-1]
        logp = log_softmax(logits)  # [B * nb, V]
        if config.repetition_penalty != 1.0:
            rows = running.reshape(B * nb, max_length)[:, :cur]
            history = [r[np.concatenate([m.astype(bool), np.ones(cur - T, bool)])] for r, m in zip(rows, flat_mask)]
            logp = repetition_penalty(logp, history, config.repetition_penalty)
        if config.output_scores:
            all_scores.append(logp.astype(np.float32))
        acc = (logp.reshape(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)

        # c. the top K continuations over all beams
        topk_scores, topk_flat = topk(acc, K)
        src_beam, token = topk_flat // V, topk_flat % V
        topk_seqs = gather(running, src_beam)
        topk_seqs[:, :, cur] = token
        topk_idx = gather(running_idx, src_beam)
        topk_idx[:, :, cur - T] = src_beam + (np.arange(B) * nb)[:, None]

        # d. which of them end here (EOS, or the length limit)
        hits = np.isin(token, eos) | (cur + 1 >= max_length)

        # e. the best open ones keep running
        open_scores = topk_scores + hits * NEG
        _, keep = topk(open_scores, nb)
        running = gather(topk_seqs, keep)
        running_scores = gather(open_scores, keep)
        running_idx = gather(topk_idx, keep)

        # f. finished hypotheses, length-penalised, merged with the earlier ones
        just_finished = hits & top_nb[None, :]
        fin_scores = topk_scores / ((cur + 1 - T) ** lp)
        full = finished.all(axis=1, keepdims=True) & (early is True)
        fin_scores = fin_scores + full * NEG + (~improvable) * NEG + (~just_finished) * NEG
        merged_scores = np.concatenate([beam_scores, fin_scores], axis=1)
        _, best = topk(merged_scores, nb)
        sequences = gather(np.concatenate([sequences, topk_seqs], axis=1), best)
        beam_scores = gather(merged_scores, best)
        beam_idx_out = gather(np.concatenate([beam_idx_out, topk_idx], axis=1), best)
        finished = gather(np.concatenate([finished, just_finished], axis=1), best)

        # g. stop, or feed each running beam's new token after reordering the cache to its source beam
        cur += 1
        length = (max_length - T) if (early == "never" and lp > 0) else (cur - T)
        best_running = running_scores[:, :1] / (length ** lp)
        worst_finished = np.where(finished, beam_scores.min(axis=1, keepdims=True), NEG)
        improvable = improvable & (best_running > worst_finished).any(axis=-1, keepdims=True)
        still_open = not (finished.all() and early is True)
        if not (improvable.any() and still_open and not hits.all()):
            break
        reorder_cache(cache, running_idx[:, :, cur - 1 - T].reshape(B * nb))
        logits = model.next_token_logits(running[:, :, cur - 1].reshape(B * nb, 1), np.ones((B * nb, 1), np.uint8),
                                          cache)

    n = config.num_return_sequences
    sequences = sequences[:, :n].reshape(B * n, max_length)
    scores = beam_scores[:, :n].reshape(B * n)
    beam_indices = beam_idx_out[:, :n].reshape(B * n, -1)
    generated = int((beam_indices != -1).sum(axis=1).max()) if config.max_new_tokens else 0
    sequences, beam_indices = sequences[:, :T + generated], beam_indices[:, :generated]
    if not config.return_dict_in_generate:
        return sequences
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences, sequences_scores=scores.astype(np.float32) if config.output_scores else None,
        scores=tuple(all_scores) if config.output_scores else None, beam_indices=beam_indices, cache=cache)
