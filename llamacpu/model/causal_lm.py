"""The public model classes, named as in transformers: LlamaModel (hidden states), LlamaForCausalLM
(logits, loss), LlamaForSequenceClassification (a score head on the last real token)."""
from __future__ import annotations

import numba
import numpy as np

from ..backends import get_backend
from ..checkpoint.load import load
from ..config import LlamaConfig
from ..errors import InputError
from ..generation.api import generate
from ..inspect.trace import trace, tracing
from .cache import KVCache
from .hf_surface import PreTrainedModelSurface, init_weights, load_arguments
from .inputs import as_batch
from .llama import LlamaCore, LlamaWeights
from .outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast, ModelOutput,  # noqa: F401 (re-exported)
                      SequenceClassifierOutputWithPast)
from .weights import DenseWeight
from ..validation import int_arg, token_ids

# forward() keywords transformers passes that change nothing here: the cache is always used, and
# return_dict=False is honoured by returning output.to_tuple()
FORWARD_NO_OPS = ("use_cache", "cache_position")


class LlamaPreTrainedModel(PreTrainedModelSurface, LlamaCore):
    head_kind = "none"

    def __init__(self, config: LlamaConfig, weights: LlamaWeights | None = None, max_context: int | None = None,
                 backend=None, seed: int | None = None):
        """Without weights, a randomly initialised model, as `LlamaForCausalLM(config)` in transformers
        (see hf_surface.init_weights; `seed`, or llamacpu.set_seed, makes it reproducible)."""
        from ..generation.sampling import GenerationConfig

        if not isinstance(config, LlamaConfig):
            raise InputError(f"config: expected a LlamaConfig, got {type(config).__name__}")
        if weights is None:
            weights = init_weights(config, self.head_kind, seed)
        super().__init__(config, weights, max_context=max_context, backend=backend)
        self.name_or_path = ""
        self.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                  pad_token_id=config.pad_token_id)

    @classmethod
    def from_pretrained(cls, path, dtype: str | None = None, max_context: int | None = None,
                        quantization: str | None = None, device=None, num_threads: int | None = None,
                        check_finite: bool = True, progress: bool = False, **kwargs):
        """Load a checkpoint folder (config.json + safetensors), a .gguf file, or a Hub repo id.

        dtype: "auto" keeps the stored precision (F16/BF16 stay 16-bit in memory); "float32",
            "float16", "bfloat16" convert. quantization: a block format name (see llamacpu.quant).
        max_context: KV-cache length; default max_position_embeddings (x factor under dynamic RoPE).
        transformers' keywords (torch_dtype, device_map, attn_implementation, quantization_config,
        revision, ...) are mapped as llamacpu.model.hf_surface documents; others are refused.
        """
        from pathlib import Path

        from ..generation.sampling import GenerationConfig
        from ..hub import check_model_type, resolve_model

        check_model_type(path, f"{cls.__name__}.from_pretrained")
        dtype, device, from_config, revision = load_arguments(dtype, device, kwargs)
        if kwargs:
            raise InputError(f"from_pretrained: unknown arguments {sorted(kwargs)} (known: dtype, max_context, "
                             f"quantization, device, num_threads, check_finite, progress, and transformers' "
                             f"torch_dtype, device_map, attn_implementation, quantization_config, revision, "
                             f"low_cpu_mem_usage, use_safetensors, trust_remote_code)")
        if quantization and from_config and quantization != from_config:
            raise InputError(f"quantization={quantization!r} and quantization_config ({from_config}) disagree")
        quantization = quantization or from_config
        backend = get_backend(device)  # a missing GPU or driver fails here, before any loading
        if num_threads is not None:
            set_num_threads(num_threads)
        local = Path(path).expanduser() if Path(str(path)).expanduser().exists() else resolve_model(str(path), revision)
        config, weights = cls._load_weights(load, local, dtype, quantization, check_finite, progress)
        model = cls(config, weights, max_context=max_context, backend=backend)
        model.name_or_path = str(path)  # as given (a Hub id stays an id), as transformers keeps it
        config.name_or_path = str(path)
        if local.is_dir():
            model.generation_config = GenerationConfig.from_pretrained(local)
        return model

    @classmethod
    def _load_weights(cls, load, path, dtype, quantization, check_finite, progress):
        config, weights, _ = load(path, dtype=dtype, quantization=quantization, head=cls.head_kind,
                                  check_finite=check_finite, progress=progress)
        return config, weights

    def _run(self, input_ids, attention_mask, past_key_values, out_rows="all", capture=False):
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
        if not capture:
            return ids, mask, cache, self.decoder(ids, mask, cache, out_rows=out_rows), None, None
        with tracing(self) as rec:
            hidden = self.decoder(ids, mask, cache, out_rows=out_rows)
        hidden_states, attentions = _collected(rec.traces, self.config.num_hidden_layers)
        return ids, mask, cache, hidden, hidden_states, attentions

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

    def __call__(self, input_ids, attention_mask=None, past_key_values=None, output_hidden_states=None,
                 output_attentions=None, return_dict=None, **kwargs) -> BaseModelOutputWithPast:
        past_key_values = _cache_argument(past_key_values, kwargs)
        _refuse("LlamaModel", kwargs)
        capture = _flag(output_hidden_states, self.config, "output_hidden_states") or \
            _flag(output_attentions, self.config, "output_attentions")
        _, _, cache, hidden, hs, att = self._run(input_ids, attention_mask, past_key_values, capture=capture)
        out = BaseModelOutputWithPast(
            last_hidden_state=hidden, cache=cache,
            hidden_states=hs if _flag(output_hidden_states, self.config, "output_hidden_states") else None,
            attentions=att if _flag(output_attentions, self.config, "output_attentions") else None)
        return out if return_dict is not False else out.to_tuple()

    forward = __call__


class LlamaForCausalLM(LlamaPreTrainedModel):
    head_kind = "lm"

    def __call__(self, input_ids, attention_mask=None, labels=None, past_key_values=None,
                 logits_to_keep: int = 0, output_hidden_states=None, output_attentions=None, return_dict=None,
                 **kwargs) -> CausalLMOutputWithPast:
        """logits float32 [B, T, vocab] (the last `logits_to_keep` columns when > 0). Without
        past_key_values each call starts a fresh sequence in a new cache (returned as `cache`); with a
        cache from `new_cache()` the tokens are appended to it (transformers' past_key_values).
        output_hidden_states / output_attentions add transformers' tuples: L + 1 hidden states
        [B, T, hidden] (embeddings, each layer's output, the last one final-normed) and L attention
        probability maps [B, heads, T, cached + T]."""
        past_key_values = _cache_argument(past_key_values, kwargs)
        _refuse("LlamaForCausalLM", kwargs)
        logits_to_keep = int_arg(logits_to_keep, "logits_to_keep", 0)
        labels = None if labels is None else token_ids(labels, "labels")
        want_h = _flag(output_hidden_states, self.config, "output_hidden_states")
        want_a = _flag(output_attentions, self.config, "output_attentions")
        ids, mask, cache, hidden, hs, att = self._run(input_ids, attention_mask, past_key_values,
                                                      capture=want_h or want_a)
        last = hidden
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.head(self.weights.lm_head, hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        out = CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache,
                                     hidden_states=hs if want_h else None, attentions=att if want_a else None,
                                     last_hidden_state=last)
        return out if return_dict is not False else out.to_tuple()

    forward = __call__

    def next_token_logits(self, input_ids, attention_mask, cache: KVCache) -> np.ndarray:
        """Append [B, T] tokens to `cache` and return the logits of the last column, float32 [B, vocab].
        The generation loop calls this; it computes the vocabulary projection for one row per batch."""
        ids, mask = as_batch(input_ids, attention_mask, self.config.vocab_size)
        hidden = self.decoder(ids, mask, cache, out_rows="last")
        return self.head(self.weights.lm_head, hidden)

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """transformers' generate: -> int64 [B * num_return_sequences, T + new], or with
        return_dict_in_generate=True an output object. See llamacpu.generation.api."""
        if input_ids is None:
            raise InputError("generate: input_ids is required (inputs_embeds is not supported)")
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

    @classmethod
    def _load_weights(cls, load, path, dtype, quantization, check_finite, progress):
        """A causal-LM checkpoint has no score.weight: as transformers does, start it from random
        values (N(0, initializer_range)) and warn that it needs training."""
        import warnings

        from .hf_surface import _rng

        if _has_score(path):
            return super()._load_weights(load, path, dtype, quantization, check_finite, progress)
        config, weights, _ = load(path, dtype=dtype, quantization=quantization, head="none",
                                  check_finite=check_finite, progress=progress)
        score = _rng.normal(0.0, config.initializer_range, (config.num_labels, config.hidden_size))
        weights.score = DenseWeight(score.astype(np.float32), "f32")
        warnings.warn(f"Some weights of LlamaForSequenceClassification were not initialized from the checkpoint "
                      f"at {path} and are newly initialized: ['score.weight']. You should probably TRAIN this "
                      f"model on a down-stream task to be able to use it for predictions and inference.",
                      stacklevel=3)
        return config, weights

    def __call__(self, input_ids, attention_mask=None, labels=None, past_key_values=None,
                 output_hidden_states=None, output_attentions=None, return_dict=None,
                 **kwargs) -> SequenceClassifierOutputWithPast:
        past_key_values = _cache_argument(past_key_values, kwargs)
        _refuse("LlamaForSequenceClassification", kwargs)
        want_h = _flag(output_hidden_states, self.config, "output_hidden_states")
        want_a = _flag(output_attentions, self.config, "output_attentions")
        ids, mask, cache, hidden, hs, att = self._run(input_ids, attention_mask, past_key_values,
                                                      capture=want_h or want_a)
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
        out = SequenceClassifierOutputWithPast(loss=loss, logits=logits, cache=cache,
                                               hidden_states=hs if want_h else None,
                                               attentions=att if want_a else None, last_hidden_state=hidden)
        return out if return_dict is not False else out.to_tuple()

    forward = __call__


def _has_score(path) -> bool:
    from pathlib import Path

    from ..checkpoint import hf

    path = Path(path)
    if not path.is_dir():
        return False  # GGUF files carry no classification head
    try:
        names = hf.CheckpointTensors(hf.weight_files(path)).names()
    except Exception:  # unreadable checkpoints fail with their proper error in load()
        return True
    return "score.weight" in names


def _cache_argument(past_key_values, kwargs):
    """transformers 5 names the argument `cache`; 4.x `past_key_values`. Either is accepted."""
    cache = kwargs.pop("cache", None)
    if cache is not None and past_key_values is not None and cache is not past_key_values:
        raise InputError("give the KV cache once: cache= or past_key_values=")
    return past_key_values if past_key_values is not None else cache


def _flag(value, config, name) -> bool:
    return bool(getattr(config, name, False)) if value is None else bool(value)


def _refuse(who: str, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - set(FORWARD_NO_OPS))
    if unknown:
        raise InputError(f"{who}: unknown arguments {unknown} (known: input_ids, attention_mask, labels, "
                         f"cache / past_key_values, logits_to_keep, output_hidden_states, output_attentions, return_dict, "
                         f"and the no-ops {', '.join(FORWARD_NO_OPS)})")


def _collected(traces, n_layers: int) -> tuple[tuple, tuple]:
    """transformers' hidden_states (embeddings, outputs of layers 0..L-2, the final-normed output of
    the last layer) and attentions ([B, H, T, S] per layer) from the forward chunks' traces."""
    hidden = [np.concatenate([t["embed"] for t in traces], axis=1)]
    for i in range(n_layers - 1):
        hidden.append(np.concatenate([t[f"layers.{i}.resid_mlp"] for t in traces], axis=1))
    hidden.append(np.concatenate([t["final_norm"] for t in traces], axis=1))
    S = traces[-1]["layers.0.attn_probs"].shape[-1]
    attentions = []
    for i in range(n_layers):
        parts = [np.pad(t[f"layers.{i}.attn_probs"], ((0, 0), (0, 0), (0, 0), (0, S - t[f"layers.{i}.attn_probs"].shape[-1])))
                 for t in traces]
        attentions.append(np.nan_to_num(np.concatenate(parts, axis=2)))
    return tuple(hidden), tuple(attentions)


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
