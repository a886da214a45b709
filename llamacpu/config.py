"""LlamaConfig: the hyperparameters of a Llama checkpoint, read from a Hugging Face config.json.

Both config styles are accepted:
  transformers 4.x: `rope_theta`, `rope_scaling`, `torch_dtype`
  transformers 5.x: `rope_parameters` ({"rope_type", "rope_theta", ...}), `dtype`
Anything we cannot run is refused here, naming the field, before a byte of weights is read.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "LlamaModel", "LlamaForSequenceClassification")
ROPE_TYPES = ("default", "linear", "dynamic", "llama3")
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class LlamaConfig:
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None  # None -> MHA (= num_attention_heads)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": ..., "factor": ..., ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    pretraining_tp: int = 1  # tensor-parallel slicing at training time: the same math, ignored
    hidden_act: str = "silu"
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = None
    torch_dtype: str | None = None  # dtype the checkpoint was stored in ("float32", "bfloat16", ...)
    num_labels: int = 2  # LlamaForSequenceClassification
    architectures: list[str] | None = None  # None: LlamaForCausalLM
    model_type: str = "llama"
    # transformers' documented arguments with no effect on inference, kept for round-trips
    initializer_range: float = 0.02  # std of the random init of a model built from this config
    use_cache: bool = True  # the KV cache is always used
    attention_dropout: float = 0.0  # training only

    def __post_init__(self):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and _positive_int(self.num_attention_heads):
            self.head_dim = self.hidden_size // self.num_attention_heads if _positive_int(self.hidden_size) else None
        self.validate()

    # ---- derived ---------------------------------------------------------------------------------
    @property
    def rope_type(self) -> str:
        return (self.rope_scaling or {}).get("rope_type", "default")

    @property
    def n_rep(self) -> int:
        """Query heads per KV head (grouped-query attention [arXiv:2305.13245])."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    def default_max_context(self) -> int:
        """KV-cache length when the user gives none: the trained context, or beyond it under dynamic
        NTK scaling, which exists to run past it (transformers allows it)."""
        if self.rope_type == "dynamic":
            return int(self.max_position_embeddings * float(self.rope_scaling["factor"]))
        return self.max_position_embeddings

    # ---- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        if self.model_type != "llama":
            raise ConfigError(f"model_type: expected 'llama', found {self.model_type!r}")
        archs = self.architectures or ["LlamaForCausalLM"]
        if not isinstance(archs, list) or not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise ConfigError(f"architectures: expected one of {SUPPORTED_ARCHITECTURES}, found {archs!r}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings",
                     "pretraining_tp", "num_labels"):
            value = getattr(self, name)
            if not _positive_int(value):
                raise ConfigError(f"{name}: expected a positive integer, found {value!r}")
            if value > 1 << 31:
                raise ConfigError(f"{name}: {value} is implausibly large")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_key_value_heads: {self.num_key_value_heads} does not divide "
                              f"num_attention_heads={self.num_attention_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: RoPE needs an even head dimension, found {self.head_dim}")
        if not _positive_number(self.rms_norm_eps):
            raise ConfigError(f"rms_norm_eps: expected a positive number, found {self.rms_norm_eps!r}")
        self.rms_norm_eps = float(self.rms_norm_eps)  # the kernels take a float (an int of 2**64 fits no int64)
        # RoPE's frequencies theta ** (-2i / d) must stay finite, non-zero float32 numbers
        if not _positive_number(self.rope_theta) or not 1e-30 <= self.rope_theta <= 1e30:
            raise ConfigError(f"rope_theta: expected a positive number between 1e-30 and 1e30, found {self.rope_theta!r}")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act: only 'silu' (SwiGLU) is supported, found {self.hidden_act!r}")
        for name in ("tie_word_embeddings", "attention_bias", "mlp_bias"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name}: expected true or false, found {getattr(self, name)!r}")
        for name in ("bos_token_id", "pad_token_id"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not -1 <= v < 1 << 63):
                raise ConfigError(f"{name}: expected a token id (an integer in [-1, 2**63)) or null, found {v!r}")
        for e in ([self.eos_token_id] if not isinstance(self.eos_token_id, list) else self.eos_token_id):
            if e is not None and (not isinstance(e, int) or isinstance(e, bool) or not -1 <= e < 1 << 63):
                raise ConfigError(f"eos_token_id: expected token ids (integers in [-1, 2**63)), "
                                  f"found {self.eos_token_id!r}")
        if not _positive_number(self.initializer_range):
            raise ConfigError(f"initializer_range: expected a positive number, found {self.initializer_range!r}")
        if not isinstance(self.use_cache, bool):
            raise ConfigError(f"use_cache: expected true or false, found {self.use_cache!r}")
        if not isinstance(self.attention_dropout, (int, float)) or not 0 <= self.attention_dropout < 1:
            raise ConfigError(f"attention_dropout: expected a number in [0, 1), found {self.attention_dropout!r}")
        if self.torch_dtype is not None and self.torch_dtype not in DTYPES:
            raise ConfigError(f"torch_dtype/dtype: expected one of {DTYPES}, found {self.torch_dtype!r}")
        self._validate_rope_scaling()

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ConfigError(f"rope_scaling: expected an object or null, found {rs!r}")
        kind = rs.get("rope_type", rs.get("type", "default"))
        if kind not in ROPE_TYPES:
            raise ConfigError(f"rope_scaling.rope_type: expected one of {ROPE_TYPES}, found {kind!r}")
        rs = dict(rs)
        rs.pop("type", None)
        rs["rope_type"] = kind
        if kind != "default":
            factor = rs.get("factor")
            if not _positive_number(factor) or (kind != "llama3" and factor < 1):
                raise ConfigError(f"rope_scaling.factor: expected a number >= 1, found {factor!r}")
        if kind == "llama3":
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if not _positive_number(rs.get(key)):
                    raise ConfigError(f"rope_scaling.{key}: required by llama3 scaling, found {rs.get(key)!r}")
            if rs["high_freq_factor"] <= rs["low_freq_factor"]:
                raise ConfigError("rope_scaling: llama3 needs high_freq_factor > low_freq_factor")
        self.rope_scaling = None if kind == "default" else rs

    # ---- I/O -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a JSON object, found {type(d).__name__}")
        d = dict(d)
        # transformers 5.x style -> our (4.x-named) fields
        if "rope_parameters" in d:
            rp = d.pop("rope_parameters") or {}
            if not isinstance(rp, dict):
                raise ConfigError(f"rope_parameters: expected an object, found {rp!r}")
            d.update(_from_rope_parameters(rp))
        if "dtype" in d:
            d["torch_dtype"] = d.pop("dtype")
        if isinstance(d.get("rope_scaling"), dict) and "type" in d["rope_scaling"]:
            d["rope_scaling"] = dict(d["rope_scaling"])
            d["rope_scaling"].setdefault("rope_type", d["rope_scaling"].pop("type"))
        known = set(cls.__dataclass_fields__) | {"id2label", "label2id"}
        kwargs = {k: v for k, v in d.items() if k in known}
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (TypeError, ValueError, ArithmeticError) as e:  # wrong types in fields
            raise ConfigError(f"config: {e}") from None

    @classmethod
    def from_pretrained(cls, path) -> "LlamaConfig":
        path = Path(path)
        file = path / "config.json" if path.is_dir() else path
        if not file.exists():
            raise ConfigError(f"config.json not found in {path}")
        from .limits import read_json

        return cls.from_dict(read_json(file, ConfigError, "config.json", expect=None))

    # ---- transformers 5 surface: rope_parameters, dtype, to_dict / to_json_string / save_pretrained ---
    @property
    def rope_parameters(self) -> dict:
        """transformers 5's form of rope_theta + rope_scaling."""
        return {**(self.rope_scaling or {"rope_type": "default"}), "rope_theta": self.rope_theta}

    @property
    def dtype(self) -> str | None:
        return self.torch_dtype

    def to_dict(self) -> dict:
        """transformers 5's keys (rope_parameters, dtype, id2label, ...), as LlamaConfig.to_dict()."""
        return config_v5_dict(self)

    def to_json_string(self, use_diff: bool = True) -> str:
        d = self.to_dict()
        if use_diff:
            d = {k: v for k, v in d.items() if k not in _BASE_DEFAULTS or _BASE_DEFAULTS[k] != v}
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory, **overrides) -> str:
        """Write config.json (transformers 5 layout); returns its path."""
        from .checkpoint.write import atomic_write_text

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        d = json.loads(self.to_json_string())
        d.update(overrides)
        return atomic_write_text(folder / "config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")


_V5_EXTRA_ARGS = ("rope_parameters", "dtype", "id2label", "label2id", "output_hidden_states", "output_attentions",
                  "return_dict")
_dataclass_init = LlamaConfig.__init__


def _init(self, *args, rope_parameters=None, dtype=None, id2label=None, label2id=None,
          output_hidden_states=False, output_attentions=False, return_dict=True, **kwargs):
    """transformers 5's constructor arguments on top of the dataclass fields."""
    if rope_parameters is not None:
        if not isinstance(rope_parameters, dict):
            raise ConfigError(f"rope_parameters: expected a dict, found {rope_parameters!r}")
        kwargs.update(_from_rope_parameters(rope_parameters))
    if dtype is not None:
        kwargs["torch_dtype"] = dtype
    if id2label is not None:
        kwargs["num_labels"] = len(id2label)
    self.output_hidden_states, self.output_attentions, self.return_dict = (output_hidden_states, output_attentions,
                                                                            return_dict)
    _dataclass_init(self, *args, **kwargs)
    self.id2label = {int(k): v for k, v in id2label.items()} if id2label else \
        {i: f"LABEL_{i}" for i in range(self.num_labels)}
    self.label2id = dict(label2id) if label2id else {v: k for k, v in self.id2label.items()}


LlamaConfig.__init__ = _init

# PretrainedConfig's defaults: to_json_string(use_diff=True) leaves out the keys still equal to them
_BASE_DEFAULTS = {"output_hidden_states": False, "return_dict": True, "dtype": None, "chunk_size_feed_forward": 0,
                  "is_encoder_decoder": False, "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
                  "label2id": {"LABEL_0": 0, "LABEL_1": 1}, "problem_type": None, "architectures": None,
                  "_name_or_path": "", "output_attentions": False}


def config_v5_dict(c: LlamaConfig) -> dict:
    return {
        "transformers_version": "5.24.0",  # the transformers release whose layout this is
        "architectures": c.architectures,
        "output_hidden_states": c.output_hidden_states, "return_dict": c.return_dict, "dtype": c.torch_dtype,
        "chunk_size_feed_forward": 0, "is_encoder_decoder": False,
        "id2label": {str(k): v for k, v in c.id2label.items()}, "label2id": dict(c.label2id), "problem_type": None,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "hidden_act": c.hidden_act,
        "max_position_embeddings": c.max_position_embeddings, "initializer_range": c.initializer_range,
        "rms_norm_eps": c.rms_norm_eps, "use_cache": c.use_cache, "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id, "eos_token_id": c.eos_token_id, "pretraining_tp": c.pretraining_tp,
        "tie_word_embeddings": c.tie_word_embeddings, "rope_parameters": c.rope_parameters,
        "attention_bias": c.attention_bias, "attention_dropout": c.attention_dropout, "mlp_bias": c.mlp_bias,
        "head_dim": c.head_dim, "_name_or_path": getattr(c, "name_or_path", ""), "model_type": c.model_type,
        "output_attentions": c.output_attentions,
    }


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _from_rope_parameters(rp: dict) -> dict:
    """transformers 5's rope_parameters -> our rope_theta (when given) and rope_scaling."""
    rp = dict(rp)
    out = {"rope_theta": rp.pop("rope_theta")} if "rope_theta" in rp else {}
    kind = rp.get("rope_type", rp.get("type", "default"))
    out["rope_scaling"] = None if kind == "default" else rp
    return out


def _positive_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0
