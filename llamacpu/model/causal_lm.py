"""The public model classes, named as in transformers: LlamaModel (hidden states), LlamaForCausalLM
(logits, loss), LlamaForSequenceClassification (a score head on the last real token)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np

from ..backends import get_backend
from ..checkpoint.load import load
from ..config import LlamaConfig
from ..errors import InputError
from ..generation.generate import generate
from ..inspect.trace import trace, tracing
from .cache import KVCache
from .inputs import as_batch
from .llama import LlamaCore, LlamaWeights
from .weights import DenseWeight
from ..validation import int_arg, token_ids


@dataclass
class ModelOutput:
    """Attribute and key access, as transformers' outputs."""

    logits: np.ndarray | None = None  # float32 [B, T, vocab] (or [B, num_labels] for classification)
    loss: float | None = None
    last_hidden_state: np.ndarray | None = None  # float32 [B, T, hidden]
    past_key_values: KVCache | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


class LlamaPreTrainedModel(LlamaCore):
    head_kind = "none"

    @classmethod
    def from_pretrained(cls, path, dtype: str = "auto", max_context: int | None = None,
                        quantization: str | None = None, device: str = "cpu", num_threads: int | None = None,
                        check_finite: bool = True, progress: bool = False, **kwargs):
        """Load a checkpoint folder (config.json + safetensors) or a .gguf file.

        dtype: "auto" keeps the stored precision (F16/BF16 stay 16-bit in memory); "float32",
            "float16", "bfloat16" convert. quantization: a block format name (see llamacpu.quant).
        max_context: KV-cache length; default max_position_embeddings (x factor under dynamic RoPE).
        """
        if kwargs.pop("torch_dtype", None) not in (None, "auto"):
            raise InputError("torch_dtype: use dtype= (llamacpu has no torch)")
        if kwargs:
            raise InputError(f"from_pretrained: unknown arguments {sorted(kwargs)}")
        backend = get_backend(device)  # a missing GPU or driver fails here, before any loading
        if num_threads is not None:
            set_num_threads(num_threads)
        if isinstance(path, str) and not Path(path).expanduser().exists():  # org/name[@rev][:Q4_K_M] on the Hub
            from ..hub import resolve_model

            path = resolve_model(path)
        config, weights, _ = load(path, dtype=dtype, quantization=quantization, head=cls.head_kind,
                                  check_finite=check_finite, progress=progress)
        model = cls(config, weights, max_context=max_context, backend=backend)
        model.name_or_path = str(path)
        return model

    def _run(self, input_ids, attention_mask, past_key_values, out_rows="all"):
        ids, mask = as_batch(input_ids, attention_mask, self.config.vocab_size)
        if past_key_values is not None and not isinstance(past_key_values, KVCache):
            raise InputError(f"past_key_values: expected a cache from model.new_cache() (or the past_key_values of "
                             f"an earlier output), got {type(past_key_values).__name__}")
        if past_key_values is None:  # a fresh cache per call (zero pages cost nothing until written)
            cache = self.new_cache(ids.shape[0])
        else:
            cache = past_key_values
            if cache.batch != ids.shape[0]:
                raise InputError(f"past_key_values holds {cache.batch} rows, input_ids has {ids.shape[0]}")
        hidden = self.decoder(ids, mask, cache, out_rows=out_rows)
        return ids, mask, cache, hidden

    def trace(self, input_ids, attention_mask=None):
        """Run one forward pass recording every named intermediate (see llamacpu.inspect.trace)."""
        return trace(self, input_ids, attention_mask)

    def tracing(self):
        """Context manager recording a Trace per forward chunk (prefill, then each decode step)."""
        return tracing(self)

    def num_parameters(self) -> int:
        cfg = self.config
        n = sum(int(np.prod(w.shape)) for w in self.weights.matrices())
        return n + cfg.hidden_size * (2 * cfg.num_hidden_layers + 1)


class LlamaModel(LlamaPreTrainedModel):
    """The decoder stack alone: `model(ids).last_hidden_state` float32 [B, T, hidden]."""

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, **_):
        _, _, cache, hidden = self._run(input_ids, attention_mask, past_key_values)
        return ModelOutput(last_hidden_state=hidden, past_key_values=cache)

    forward = __call__


class LlamaForCausalLM(LlamaPreTrainedModel):
    head_kind = "lm"

    def __call__(self, input_ids, attention_mask=None, labels=None, past_key_values=None,
                 logits_to_keep: int = 0, **_) -> ModelOutput:
        """logits float32 [B, T, vocab] (the last `logits_to_keep` columns when > 0). Without
        past_key_values each call starts a fresh sequence in a new cache (returned as past_key_values); with a cache
        from `new_cache()` the tokens are appended to it (transformers' past_key_values)."""
        logits_to_keep = int_arg(logits_to_keep, "logits_to_keep", 0)
        labels = None if labels is None else token_ids(labels, "labels")
        ids, mask, cache, hidden = self._run(input_ids, attention_mask, past_key_values)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head(self.weights.lm_head, hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=hidden, past_key_values=cache)

    forward = __call__

    def next_token_logits(self, input_ids, attention_mask, cache: KVCache) -> np.ndarray:
        """Append [B, T] tokens to `cache` and return the logits of the last column, float32 [B, vocab].
        The generation loop calls this; it computes the vocabulary projection for one row per batch."""
        ids, mask = as_batch(input_ids, attention_mask, self.config.vocab_size)
        hidden = self.decoder(ids, mask, cache, out_rows="last")
        return self.head(self.weights.lm_head, hidden)

    def generate(self, input_ids, attention_mask=None, **kwargs) -> np.ndarray:
        """transformers-style generate: -> int64 [B, T + new]. See llamacpu.generation.generate."""
        return generate(self, input_ids, attention_mask=attention_mask, **kwargs)

    def resize_token_embeddings(self, new_num_tokens: int) -> None:
        """Grow (or shrink) the vocabulary, e.g. after adding a pad token to the tokenizer. New rows
        are the mean of the old embeddings (as transformers initialises them)."""
        old = self.config.vocab_size
        if not isinstance(new_num_tokens, int) or new_num_tokens <= 0:
            raise InputError(f"new_num_tokens: expected a positive integer, got {new_num_tokens!r}")
        if new_num_tokens == old:
            return
        tied = self.weights.lm_head is self.weights.embed

        def resized(w):
            full = w.dequantize()
            extra = np.repeat(full.mean(axis=0, keepdims=True), max(0, new_num_tokens - old), axis=0)
            return DenseWeight(np.ascontiguousarray(np.concatenate([full[:new_num_tokens], extra])), "f32")

        self.weights.embed = resized(self.weights.embed)
        self.weights.lm_head = self.weights.embed if tied else resized(self.weights.lm_head)
        self.config.vocab_size = new_num_tokens


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    """Score head on the last non-pad token (transformers' rule: the last position whose id is not
    pad_token_id; without a pad token, the last position)."""

    head_kind = "score"

    def __call__(self, input_ids, attention_mask=None, labels=None, **_) -> ModelOutput:
        ids, mask, cache, hidden = self._run(input_ids, attention_mask, None)
        scores = self.head(self.weights.score, hidden)  # [B, T, num_labels]
        pad = self.config.pad_token_id
        if pad is None:
            last = np.full(ids.shape[0], ids.shape[1] - 1)
        else:
            non_pad = ids != pad
            last = (np.arange(ids.shape[1])[None, :] * non_pad).argmax(axis=1)
        logits = scores[np.arange(ids.shape[0]), last]
        loss = None
        if labels is not None:
            labels = token_ids(labels, "labels", max_ndim=1)
            if labels.shape != (ids.shape[0],) or ((labels < 0) | (labels >= logits.shape[-1])).any():
                raise InputError(f"labels: expected {ids.shape[0]} class ids in [0, {logits.shape[-1]}), got {labels.tolist()}")
            loss = float(np.mean(_nll(logits, labels)))
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=hidden)

    forward = __call__


def _nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    return -np.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]


def causal_lm_loss(logits: np.ndarray, labels) -> float:
    """Mean next-token cross-entropy, labels shifted inside as transformers does; -100 is ignored."""
    labels = np.asarray(labels)
    if labels.ndim == 1:
        labels = labels[None]
    if labels.shape != logits.shape[:2]:
        raise InputError(f"labels: shape {labels.shape} does not match input_ids {logits.shape[:2]}")
    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    keep = shift_labels != -100
    if not keep.any():
        return float("nan")
    if ((shift_labels[keep] < 0) | (shift_labels[keep] >= logits.shape[-1])).any():
        raise InputError("labels: ids out of range (use -100 to ignore a position)")
    return float(_nll(shift_logits[keep], shift_labels[keep]).mean())


def set_num_threads(n: int) -> None:
    """Threads for the Numba kernels (at most NUMBA_NUM_THREADS, fixed at import)."""
    limit = numba.config.NUMBA_NUM_THREADS
    if not isinstance(n, int) or not 1 <= n <= limit:
        raise InputError(f"num_threads: expected 1..{limit} (NUMBA_NUM_THREADS), got {n!r}")
    numba.set_num_threads(n)
