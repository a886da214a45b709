"""Record every named intermediate of a forward pass.

The forward pass (`llamacpu.model.llama.LlamaCore.forward_chunk` and `head`) calls `model.tracer` at each
step when it is set; when it is None (always, outside this module) each hook costs one test of a
local variable. `Recorder` is that tracer: it copies each array to the host as float32 and gives it a
shape that says what it is. `trace(model, ids)` runs one fresh forward pass under a Recorder and
returns a `Trace`, a read-only mapping from names to arrays:

    embed                     [B, T, hidden]         the token embeddings (layer 0's residual input)
    layers.{i}.attn_norm      [B, T, hidden]         RMSNorm(x) before attention
    layers.{i}.q / k / v      [B, T, heads, hd]      projections (k, v: kv heads), before RoPE
    layers.{i}.q_rope/k_rope  [B, T, heads, hd]      after RoPE
    layers.{i}.attn_scores    [B, heads, T, S]       q.k * scale; -inf where masked (S = cache slots)
    layers.{i}.attn_probs     [B, heads, T, S]       softmax of the scores
    layers.{i}.attn_out       [B, T, heads, hd]      probs @ v, per head
    layers.{i}.o_proj         [B, T, hidden]         attn_out @ Wo: the attention block's update
    layers.{i}.resid_attn     [B, T, hidden]         x + o_proj
    layers.{i}.mlp_norm       [B, T, hidden]         RMSNorm before the MLP
    layers.{i}.gate / up      [B, T, intermediate]
    layers.{i}.act            [B, T, intermediate]   silu(gate) * up
    layers.{i}.down           [B, T, hidden]         act @ Wdown: the MLP block's update
    layers.{i}.resid_mlp      [B, T, hidden]         resid_attn + down: the layer's output
    final_norm                [B, T, hidden]
    logits                    [B, T, vocab]
"""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from ..errors import InputError
from ..model.inputs import as_batch
from ..kernels.attention import attention_probs_ref

LAYER_STEPS = ("attn_norm", "q", "k", "v", "q_rope", "k_rope", "attn_scores", "attn_probs", "attn_out",
               "o_proj", "resid_attn", "mlp_norm", "gate", "up", "act", "down", "resid_mlp")
_PER_HEAD = ("q", "k", "v", "q_rope", "k_rope", "attn_out")  # [N, heads * hd] -> [B, T, heads, hd]


class Trace(Mapping):
    """The intermediates of one forward chunk: `trace["layers.3.q_rope"]`, `trace.shapes()`,
    `for name in trace`, `trace.layer(3)["q_rope"]`. Also holds the inputs that produced them:
    input_ids, attention_mask [B, T], positions [B, T] (RoPE), inv_freq [hd/2], start (first cache
    slot), valid [B, S] (which cache slots held real tokens), scale (1/sqrt(hd)), config and the model."""

    def __init__(self, tensors: dict, **meta):
        self.tensors = tensors  # insertion order = the order the forward pass computed them
        self.input_ids = meta.get("input_ids")
        self.attention_mask = meta.get("attention_mask")
        self.positions = meta.get("positions")
        self.inv_freq = meta.get("inv_freq")
        self.start = meta.get("start", 0)
        self.valid = meta.get("valid")
        self.scale = meta.get("scale")
        self.config = meta.get("config")
        self.model = meta.get("model")  # for the logit lens of to_html

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{name!r} is not in this trace (see trace.shapes() for the names)") from None

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def num_layers(self) -> int:
        return sum(1 for n in self.tensors if n.endswith(".resid_mlp"))

    def layer(self, i: int) -> dict:
        """The tensors of layer i by short name ("q_rope", "attn_probs", ...)."""
        prefix = f"layers.{i}."
        return {n[len(prefix):]: a for n, a in self.tensors.items() if n.startswith(prefix)}

    def residual(self, i: int) -> np.ndarray:
        """The residual stream entering layer i (i = num_layers: the last layer's output)."""
        return self["embed"] if i == 0 else self[f"layers.{i - 1}.resid_mlp"]

    def shapes(self) -> dict:
        return {n: a.shape for n, a in self.tensors.items()}

    def to_html(self, path, tokenizer=None, **kwargs):
        """Write this pass as one self-contained HTML page (llamacpu.inspect.html.write_html): tokens,
        residual stream, every head's attention, the logit lens, the next token. Without a tokenizer the
        model's own (from its name_or_path) labels the tokens. Returns the path."""
        from .html import write_html

        if self.model is None:
            raise InputError("this trace does not know its model: write it with html.write_html(path, model, trace)")
        if tokenizer is None:
            tokenizer = _tokenizer_of(self.model)
        return write_html(path, self.model, self, tokenizer, **kwargs)

    def __repr__(self) -> str:
        width = max((len(n) for n in self.tensors), default=0)
        rows = [f"  {n.ljust(width)}  {tuple(a.shape)}" for n, a in self.tensors.items()]
        return "Trace(\n" + "\n".join(rows) + "\n)"


class Recorder:
    """The object set as `model.tracer`: called by the forward pass (see llamacpu.model.llama).
    Each forward chunk becomes one Trace in `self.traces`; the logits that `head()` computes after
    the last chunk of a call join that chunk's Trace."""

    def __init__(self, model):
        self.model = model
        self.traces: list[Trace] = []
        self._prefix = ""
        self._shape, self._cache = None, None  # (B, T) and KV cache of the current chunk

    def __bool__(self) -> bool:  # the forward pass tests `if trace:`
        return True

    def begin(self, ids, mask, positions, inv_freq, start, cache, **named):
        """A new chunk (one Trace), then `record(None, **named)`."""
        cfg = self.model.config
        B, T = ids.shape
        self._shape, self._cache = (B, T), cache
        self.traces.append(Trace(
            {}, input_ids=np.array(ids), attention_mask=np.array(mask), positions=np.array(positions).reshape(B, T),
            inv_freq=np.array(self._host(inv_freq), np.float32), start=int(start),
            valid=np.array(cache.valid[:, :start + T]), scale=np.float32(self.model.scale), config=cfg,
            model=self.model))
        self.record(None, **named)

    def layer(self, i):
        self._prefix = "" if i is None else f"layers.{i}."

    def record(self, layer, **named) -> None:
        """Record each named array as an intermediate of `layer` (None: outside the layers), in order.
        `attn_probs=(q, scale)` records the attention scores and probabilities (see `attention`)."""
        self.layer(layer)
        for name, array in named.items():
            if name == "attn_probs":
                self.attention(layer, *array)
            else:
                self(name, array)

    def __call__(self, name: str, array) -> None:
        a = np.array(self._host(array), dtype=np.float32)  # a copy: workspace buffers are reused
        if self._shape is not None:
            B, T = self._shape
            if name in _PER_HEAD:
                a = a.reshape(B, T, -1, self.model.config.head_dim)
            elif name != "logits":
                a = a.reshape(B, T, -1)
        if not self.traces:  # head() called directly, without a forward pass
            self.traces.append(Trace({}, config=self.model.config, model=self.model))
        self.traces[-1].tensors[self._prefix + name] = a

    def attention(self, layer: int, q, scale) -> None:
        """Scores and probabilities [B, H, T, S] from the rotated q and the keys now in the cache
        (the kernel never materialises them: it keeps one row of scores per thread)."""
        cfg, cache = self.model.config, self._cache
        B, T = self._shape
        start = self.traces[-1].start
        S = start + T
        q = np.asarray(self._host(q), np.float32).reshape(B, T, cfg.num_attention_heads, cfg.head_dim)
        k = np.asarray(self._host(cache.k[layer]), np.float32)[:, :, :S]  # [B, KV, S, hd]
        valid = cache.valid[:, :S]
        tensors = self.traces[-1].tensors
        tensors[self._prefix + "attn_scores"] = masked_scores(q, k, valid, start, scale)
        tensors[self._prefix + "attn_probs"] = attention_probs_ref(q, k, valid, start, scale)

    def _host(self, a):
        return self.model.backend.to_host(a)


def _tokenizer_of(model):
    """The tokenizer stored with the model's files, or None (token ids are shown instead)."""
    from ..errors import LlamacpuError
    from ..tokenizer.auto import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model.name_or_path)
    except (LlamacpuError, OSError, AttributeError):
        return None


def masked_scores(q, k_cache, valid, start, scale) -> np.ndarray:
    """q [B, T, H, hd], k_cache [B, KV, S, hd] -> scaled scores [B, H, T, S], -inf where a query may
    not look (a later slot, or a slot without a real token)."""
    n_rep = q.shape[2] // k_cache.shape[1]
    k = np.repeat(k_cache, n_rep, axis=1)  # GQA: query head h reads kv head h // n_rep
    scores = np.einsum("bthd,bhsd->bhts", q, k) * np.float32(scale)
    T, S = q.shape[1], k.shape[2]
    allowed = (np.arange(S)[None, :] <= start + np.arange(T)[:, None])[None, None] & (valid[:, None, None, :] != 0)
    return np.where(allowed, scores, -np.inf).astype(np.float32)


@contextmanager
def tracing(model):
    """`with tracing(model) as rec: model(ids)` records every forward chunk run inside the block
    into `rec.traces` (one Trace per chunk: a prefill, then one per decode step under generate)."""
    previous = model.tracer
    rec = Recorder(model)
    model.tracer = rec
    try:
        yield rec
    finally:
        model.tracer = previous


def trace(model, input_ids, attention_mask=None) -> Trace:
    """One fresh forward pass over `input_ids` ([T] or [B, T]) in a fresh KV cache, as one chunk (so
    the attention maps cover the whole prompt), recording every intermediate and the logits."""

    ids, mask = as_batch(input_ids, attention_mask, model.config.vocab_size)
    B, T = ids.shape
    if T > model.max_context:
        raise InputError(f"input of {T} tokens exceeds the context of {model.max_context}")
    cache = model.new_cache(B, max_len=T)  # the model's own cache is left as it was
    with tracing(model) as rec:
        hidden = model.forward_chunk(ids, mask, cache)  # [B, T, hidden]
        lm_head = getattr(model.weights, "lm_head", None)
        if lm_head is not None:
            model.head(lm_head, hidden)
    return rec.traces[0]
