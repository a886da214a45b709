"""transformers' quantization config objects, mapped onto llamacpu's block formats, so that

    model = AutoModelForCausalLM.from_pretrained(M, quantization_config=TorchAoConfig("int4_weight_only", group_size=128))

quantizes at load exactly as `quantization="int4_g128"` does. The mapping (weight-only in every case:
activations stay float32):

    TorchAoConfig("int4_weight_only", group_size=128) / TorchAoConfig(Int4WeightOnlyConfig(group_size=128))
                                              -> int4_g128 (asymmetric 4-bit, groups of 128, fp16 scale + min)
    ... group_size=32                         -> q4_1      (asymmetric 4-bit, groups of 32, fp16 scale + min)
    TorchAoConfig("int8_weight_only") / Int8WeightOnlyConfig()
                                              -> q8_0      (8-bit, blocks of 32 with an fp16 scale; torchao
                                                            uses one scale per row: ours is finer)
    BitsAndBytesConfig(load_in_8bit=True)     -> q8_0
    BitsAndBytesConfig(load_in_4bit=True)     -> q4_0 for "fp4", refused for "nf4" (no NF4 format here)

Anything else (other group sizes, int4 with dynamic activations, float8, HQQ, GPTQ/AWQ checkpoints)
raises UnsupportedError naming the formats llamacpu has.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import UnsupportedError

FORMATS = "q8_0, q4_0, q4_1, q4_k, int4_g128"
INT4_GROUPS = {128: "int4_g128", 32: "q4_1"}


@dataclass
class Int4WeightOnlyConfig:
    """torchao's int4 weight-only config (the object transformers 5's TorchAoConfig wraps)."""

    group_size: int = 128

    def llamacpu_format(self) -> str:
        if self.group_size not in INT4_GROUPS:
            raise UnsupportedError(f"int4 weight-only with group_size={self.group_size}: llamacpu has groups of "
                                   f"{sorted(INT4_GROUPS)} (int4_g128, q4_1)")
        return INT4_GROUPS[self.group_size]


@dataclass
class Int8WeightOnlyConfig:
    group_size: int | None = None  # torchao: None = one scale per row

    def llamacpu_format(self) -> str:
        return "q8_0"


class TorchAoConfig:
    """`TorchAoConfig("int4_weight_only", group_size=128)` (the 4.x string form) or
    `TorchAoConfig(Int4WeightOnlyConfig(group_size=128))` (transformers 5)."""

    quant_method = "torchao"
    _STRINGS = {"int4_weight_only": Int4WeightOnlyConfig, "int8_weight_only": Int8WeightOnlyConfig}

    def __init__(self, quant_type, modules_to_not_convert=None, **kwargs):
        if isinstance(quant_type, str):
            if quant_type not in self._STRINGS:
                raise UnsupportedError(f"TorchAoConfig({quant_type!r}): llamacpu maps {sorted(self._STRINGS)} "
                                       f"(its formats: {FORMATS})")
            try:
                quant_type = self._STRINGS[quant_type](**kwargs)
            except TypeError as e:
                raise UnsupportedError(f"TorchAoConfig({quant_type!r}, ...): {e}") from None
        elif kwargs:
            raise UnsupportedError(f"TorchAoConfig: unexpected arguments {sorted(kwargs)} with a config object")
        if not hasattr(quant_type, "llamacpu_format"):
            raise UnsupportedError(f"TorchAoConfig({type(quant_type).__name__}): llamacpu maps Int4WeightOnlyConfig "
                                   f"and Int8WeightOnlyConfig (its formats: {FORMATS})")
        if modules_to_not_convert:
            raise UnsupportedError("modules_to_not_convert: llamacpu quantizes every matrix (the embedding and "
                                   "LM head as q8_0)")
        self.quant_type = quant_type

    def llamacpu_format(self) -> str:
        return self.quant_type.llamacpu_format()

    def __repr__(self):
        return f"TorchAoConfig({self.quant_type!r})"


class BitsAndBytesConfig:
    quant_method = "bitsandbytes"

    def __init__(self, load_in_8bit: bool = False, load_in_4bit: bool = False, bnb_4bit_quant_type: str = "fp4",
                 **kwargs):
        self.load_in_8bit, self.load_in_4bit, self.bnb_4bit_quant_type = load_in_8bit, load_in_4bit, bnb_4bit_quant_type
        self.kwargs = kwargs

    def llamacpu_format(self) -> str:
        if self.load_in_8bit:
            return "q8_0"
        if self.load_in_4bit and self.bnb_4bit_quant_type == "fp4":
            return "q4_0"
        if self.load_in_4bit:
            raise UnsupportedError(f"BitsAndBytesConfig(bnb_4bit_quant_type={self.bnb_4bit_quant_type!r}): llamacpu "
                                   f"has no NF4 format; use TorchAoConfig('int4_weight_only', group_size=128) "
                                   f"(int4_g128) or one of {FORMATS}")
        raise UnsupportedError("BitsAndBytesConfig: set load_in_8bit=True or load_in_4bit=True")


def quantization_from_config(config) -> str:
    """A quantization_config (object above, or a dict as in config.json) -> a llamacpu format name."""
    if isinstance(config, dict):
        method = config.get("quant_method")
        if method == "torchao" and isinstance(config.get("quant_type"), str):
            return TorchAoConfig(config["quant_type"], **config.get("quant_type_kwargs", {})).llamacpu_format()
        if method == "bitsandbytes":
            return BitsAndBytesConfig(**{k: v for k, v in config.items() if k != "quant_method"}).llamacpu_format()
        raise UnsupportedError(f"quantization_config {config!r}: llamacpu maps torchao int4/int8 weight-only "
                               f"and bitsandbytes 8-bit/fp4 onto its formats ({FORMATS})")
    if not hasattr(config, "llamacpu_format"):
        raise UnsupportedError(f"quantization_config: {type(config).__name__} has no llamacpu format; use "
                               f"TorchAoConfig, BitsAndBytesConfig or quantization= one of {FORMATS}")
    return config.llamacpu_format()
