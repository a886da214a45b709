"""The parts of transformers' PreTrainedModel API that code ported from transformers touches, on
llamacpu's models: loading keywords (torch_dtype, device, device_map, attn_implementation,
quantization_config), `model.device / dtype / eval() / to() / generation_config /
get_input_embeddings() / save_pretrained()`, and models built from a config with random weights.

What each transformers keyword does here (README "Coming from transformers" lists the same):
    torch_dtype=X          dtype=X (transformers' deprecated alias); torch dtypes are strings here
    device=N (int)         the GPU backend when numba.cuda finds one, else the CPU (with a warning)
    device_map="auto"      the same choice as device=0; "cpu"/"cuda"/{"": dev} name the device
    attn_implementation    accepted, no effect: one exact attention kernel serves every setting
    low_cpu_mem_usage, use_safetensors
                           accepted, no effect: weights are always memory-mapped safetensors
    quantization_config    a TorchAoConfig / BitsAndBytesConfig mapped to a block format
"""
from __future__ import annotations

import os
import warnings

import numpy as np

from ..errors import InputError, UnsupportedError

ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention", None)
LOAD_NO_OPS = ("attn_implementation", "low_cpu_mem_usage", "use_safetensors", "trust_remote_code")


def dtype_name(dtype) -> str:
    """"auto", "float32", "float16", "bfloat16"; also torch dtypes' names ("torch.float16")."""
    name = str(dtype)
    name = name[len("torch."):] if name.startswith("torch.") else name
    return {"half": "float16", "float": "float32", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}.get(name, name)


def _cuda_available() -> bool:
    from ..backends import get_backend
    from ..errors import DeviceError

    try:
        get_backend("cuda")
        return True
    except (DeviceError, ImportError):
        return False


def device_name(device, device_map=None) -> str:
    """transformers' device / device_map values -> "cpu" or "cuda"."""
    asked = f"device={device!r}"
    if device_map is not None:
        asked = f"device_map={device_map!r}"
        if isinstance(device_map, dict):
            targets = set(device_map.values())
            if len(targets) != 1:
                raise UnsupportedError(f"device_map {device_map!r}: llamacpu runs the whole model on one device")
            device_map = targets.pop()
        if device_map == "auto":
            device_map = 0
        device = device_map if device in (None, "cpu") else device
    if device is None:
        return "cpu"
    if isinstance(device, (int, np.integer)) and not isinstance(device, bool):
        if device < 0:
            return "cpu"
        if _cuda_available():
            return "cuda"
        warnings.warn(f"{asked}: no CUDA GPU is usable here (numba.cuda), running on the CPU", stacklevel=4)
        return "cpu"
    name = str(device)
    if name.startswith("cuda:"):
        name = "cuda"
    if name not in ("cpu", "cuda"):
        raise InputError(f"device {device!r}: expected 'cpu', 'cuda', 'cuda:N', a GPU index, or -1 for the CPU")
    return name


def load_arguments(dtype, device, kwargs: dict) -> tuple[str, str, str | None, str | None]:
    """Map transformers' from_pretrained keywords in `kwargs` (consumed) -> (dtype, device,
    quantization or None, revision). Unknown keywords are refused with the list of known ones."""
    from ..quantization_config import quantization_from_config

    torch_dtype = kwargs.pop("torch_dtype", None)
    if torch_dtype is not None:
        if dtype not in (None, "auto") and dtype_name(dtype) != dtype_name(torch_dtype):
            raise InputError(f"dtype={dtype!r} and torch_dtype={torch_dtype!r} disagree (torch_dtype is an alias)")
        dtype = torch_dtype
    dtype = dtype_name(dtype if dtype is not None else "auto")
    device = device_name(device, kwargs.pop("device_map", None))
    attn = kwargs.pop("attn_implementation", None)
    if attn not in ATTN_IMPLEMENTATIONS:
        raise InputError(f"attn_implementation={attn!r}: expected one of {ATTN_IMPLEMENTATIONS[:-1]} (all run "
                         f"llamacpu's one exact attention kernel)")
    for name in LOAD_NO_OPS:
        kwargs.pop(name, None)
    qc = kwargs.pop("quantization_config", None)
    quantization = quantization_from_config(qc) if qc is not None else None
    return dtype, device, quantization, kwargs.pop("revision", None)


# ---- models built from a config --------------------------------------------------------------------

_rng = np.random.default_rng()


def set_seed(seed: int) -> None:
    """Seed the generator that initialises models built from a config (transformers.set_seed's role)."""
    global _rng
    _rng = np.random.default_rng(seed)


def init_weights(config, head: str, seed: int | None = None):
    """Random weights as transformers initialises a Llama: every matrix N(0, initializer_range),
    norms 1, biases 0, the embedding row of pad_token_id zero (nn.Embedding's padding_idx)."""
    from .llama import LayerWeights, LlamaWeights
    from .weights import DenseWeight

    rng = np.random.default_rng(seed) if seed is not None else _rng
    std = float(getattr(config, "initializer_range", 0.02))
    D, I, hd = config.hidden_size, config.intermediate_size, config.head_dim
    Q, KV = config.num_attention_heads * hd, config.num_key_value_heads * hd

    def mat(rows, cols):
        return DenseWeight(rng.normal(0.0, std, (rows, cols)).astype(np.float32), "f32")

    def bias(n, on):
        return np.zeros(n, np.float32) if on else None

    n_params = config.vocab_size * D * (1 if config.tie_word_embeddings or head != "lm" else 2) + \
        config.num_hidden_layers * (D * (2 * Q + 2 * KV) + 3 * D * I)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 1 << 62
    if 4 * n_params > ram // 2:  # refuse rather than be killed: the default LlamaConfig is Llama 2 7B
        raise InputError(f"a randomly initialised model of this config has {n_params / 1e9:.1f}B parameters "
                         f"({4 * n_params / 2**30:.1f} GiB in float32), more than half this machine's "
                         f"{ram / 2**30:.1f} GiB: pass smaller sizes to LlamaConfig")
    ab, mb = config.attention_bias, config.mlp_bias
    layers = [LayerWeights(attn_norm=np.ones(D, np.float32), wq=mat(Q, D), wk=mat(KV, D), wv=mat(KV, D), wo=mat(D, Q),
                           mlp_norm=np.ones(D, np.float32), w_gate=mat(I, D), w_up=mat(I, D), w_down=mat(D, I),
                           bq=bias(Q, ab), bk=bias(KV, ab), bv=bias(KV, ab), bo=bias(D, ab),
                           b_gate=bias(I, mb), b_up=bias(I, mb), b_down=bias(D, mb))
              for _ in range(config.num_hidden_layers)]
    embed = mat(config.vocab_size, D)
    if config.pad_token_id is not None and 0 <= config.pad_token_id < config.vocab_size:
        embed.data[config.pad_token_id] = 0.0
    lm_head = (embed if config.tie_word_embeddings else mat(config.vocab_size, D)) if head == "lm" else None
    score = mat(config.num_labels, D) if head == "score" else None
    return LlamaWeights(embed=embed, layers=layers, norm=np.ones(D, np.float32), lm_head=lm_head, score=score)


class Embedding:
    """What get_input_embeddings() returns: transformers' nn.Embedding surface over the model's
    embedding matrix (`weight` is float32 [vocab, hidden], dequantized if the matrix is quantized)."""

    def __init__(self, w, padding_idx=None):
        self._w = w
        self.num_embeddings, self.embedding_dim = w.shape
        self.padding_idx = padding_idx

    @property
    def weight(self) -> np.ndarray:
        return self._w.dequantize()

    def __call__(self, input_ids) -> np.ndarray:
        ids = np.asarray(input_ids)
        if ids.dtype.kind not in "iu" or ((ids < 0) | (ids >= self.num_embeddings)).any():
            raise InputError(f"input_ids: expected integer ids in [0, {self.num_embeddings})")
        return self._w.rows(ids.reshape(-1)).reshape(ids.shape + (self.embedding_dim,))

    def __repr__(self):
        return f"Embedding({self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx})"


class PreTrainedModelSurface:
    """Mixed into LlamaPreTrainedModel: transformers' model attributes and methods."""

    @classmethod
    def from_config(cls, config, seed: int | None = None, **kwargs):
        """A model with random weights (see init_weights); `LlamaForCausalLM(config)` does the same."""
        return cls(config, **({"seed": seed} if seed is not None else {}), **kwargs)

    @property
    def device(self) -> str:
        return "cuda" if type(self.backend).__name__.lower().startswith("cuda") else "cpu"

    @property
    def dtype(self) -> str:
        """The embedding's storage as a name ("float32", "float16", "bfloat16", or a block format)."""
        d = self.weights.embed.dtype
        return {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}.get(d, d)

    def eval(self):
        """No-op (there is no training mode); returns the model, as in transformers."""
        return self

    def train(self, mode: bool = True):
        if mode:
            raise UnsupportedError("llamacpu is inference-only: train() has no effect to offer")
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self.train(requires_grad)

    def to(self, *args, **kwargs):
        """`.to("cpu")`, `.to(model.device)`: the model is already there; returns it. Moving to
        another device or dtype after loading is not supported: load with device= / dtype=."""
        for a in list(args) + list(kwargs.values()):
            name = dtype_name(a) if not isinstance(a, (int, np.integer)) else a
            if name in (self.device, None) or (name == self.dtype):
                continue
            raise UnsupportedError(f"to({a!r}): llamacpu places weights at load time; use "
                                   f"from_pretrained(..., device='cuda' or dtype=...)")
        return self

    def can_generate(self) -> bool:
        return getattr(self, "head_kind", None) == "lm"

    def get_input_embeddings(self) -> Embedding:
        return Embedding(self.weights.embed, self.config.pad_token_id)

    def get_output_embeddings(self):
        w = getattr(self.weights, "lm_head", None)
        return None if w is None else Embedding(w)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, max_shard_size=None,
                        push_to_hub: bool = False) -> None:
        """config.json, model.safetensors (weights as they are in memory: 16-bit stays 16-bit,
        quantized blocks in llamacpu's quantized format) and generation_config.json. One file,
        whatever max_shard_size says; safetensors only; never pushed."""
        from .save import save_model

        if not safe_serialization or push_to_hub:
            raise UnsupportedError("save_pretrained writes safetensors locally only (safe_serialization=True, "
                                   "push_to_hub=False)")
        save_model(self, save_directory)
