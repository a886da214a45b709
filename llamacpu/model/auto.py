"""transformers' Auto classes. llamacpu runs one architecture, so each maps to one Llama class:

    AutoModelForCausalLM                -> LlamaForCausalLM
    AutoModel                           -> LlamaModel
    AutoModelForSequenceClassification  -> LlamaForSequenceClassification
    AutoConfig                          -> LlamaConfig

`from_pretrained(M, ...)` takes the class's keywords (transformers' included, see hf_surface);
`from_config(config)` builds a randomly initialised model.
"""
from __future__ import annotations

from ..config import LlamaConfig
from .causal_lm import LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel


class _Auto:
    _target: type

    def __init__(self, *_, **__):
        raise TypeError(f"{type(self).__name__} is not instantiated: use {type(self).__name__}.from_pretrained(...) "
                        f"or .from_config(config)")

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        return cls._target.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_config(cls, config, **kwargs):
        return cls._target.from_config(config, **kwargs)


class AutoModelForCausalLM(_Auto):
    _target = LlamaForCausalLM


class AutoModel(_Auto):
    _target = LlamaModel


class AutoModelForSequenceClassification(_Auto):
    _target = LlamaForSequenceClassification


class AutoConfig:
    def __init__(self, *_, **__):
        raise TypeError("AutoConfig is not instantiated: use AutoConfig.from_pretrained(path)")

    @staticmethod
    def from_pretrained(path, **kwargs) -> LlamaConfig:
        from pathlib import Path

        from ..hub import resolve_model

        local = Path(path) if Path(str(path)).exists() else resolve_model(str(path), kwargs.pop("revision", None))
        if local.is_file() and local.suffix == ".gguf":
            from ..checkpoint.gguf import read_gguf

            return LlamaConfig.from_dict(read_gguf(local).config)
        return LlamaConfig.from_pretrained(local)
