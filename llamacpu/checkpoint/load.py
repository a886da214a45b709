"""From a path on disk to (LlamaConfig, LlamaWeights): the one entry point every front end uses.

Sources: a Hugging Face folder (config.json + safetensors, possibly sharded, possibly a llamacpu
quantized checkpoint) or a GGUF file. Weights stay memory-mapped in their stored format unless
`dtype` asks for a conversion or `quantization` for quantizing at load.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError, InputError
from ..model.llama import LayerWeights, LlamaWeights
from ..model.weights import DenseWeight
from . import hf

DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def load(path, dtype: str = "auto", quantization: str | None = None, head: str = "lm",
         check_finite: bool = True, progress: bool = False):
    """-> (config, weights, source) for a checkpoint folder or file. `head` is "lm", "score" or "none"."""
    if dtype not in DTYPE_CHOICES:
        raise InputError(f"dtype: expected one of {DTYPE_CHOICES}, got {dtype!r}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix == ".gguf":
        raise CheckpointError("GGUF loading is not wired yet")  # replaced by the GGUF loader
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a checkpoint folder (config.json + *.safetensors) or a .gguf file")
    config = LlamaConfig.from_pretrained(path)
    tensors = hf.CheckpointTensors(hf.weight_files(path))
    names = hf.validate(tensors, config, head)
    weights = build_weights(config, tensors, names, dtype, head)
    if check_finite:
        check_all_finite(weights, tensors, names)
    return config, weights, tensors


def build_weights(config: LlamaConfig, tensors: "hf.CheckpointTensors", names: dict[str, str],
                  dtype: str, head: str) -> LlamaWeights:
    def matrix(canon):
        stored = names[canon]
        return DenseWeight.from_array(tensors.get(stored), dtype, tensors.dtype(stored))

    def vector(canon):
        return tensors.get_f32(names[canon]) if canon in names else None

    layers = []
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        layers.append(LayerWeights(
            attn_norm=vector(p + "input_layernorm.weight"),
            wq=matrix(p + "self_attn.q_proj.weight"), wk=matrix(p + "self_attn.k_proj.weight"),
            wv=matrix(p + "self_attn.v_proj.weight"), wo=matrix(p + "self_attn.o_proj.weight"),
            mlp_norm=vector(p + "post_attention_layernorm.weight"),
            w_gate=matrix(p + "mlp.gate_proj.weight"), w_up=matrix(p + "mlp.up_proj.weight"),
            w_down=matrix(p + "mlp.down_proj.weight"),
            bq=vector(p + "self_attn.q_proj.bias"), bk=vector(p + "self_attn.k_proj.bias"),
            bv=vector(p + "self_attn.v_proj.bias"), bo=vector(p + "self_attn.o_proj.bias"),
            b_gate=vector(p + "mlp.gate_proj.bias"), b_up=vector(p + "mlp.up_proj.bias"),
            b_down=vector(p + "mlp.down_proj.bias"),
        ))
    embed = matrix("model.embed_tokens.weight")
    lm_head = None
    if head == "lm":
        lm_head = embed if config.tie_word_embeddings or "lm_head.weight" not in names else matrix("lm_head.weight")
    score = matrix("score.weight") if head == "score" else None
    return LlamaWeights(embed=embed, layers=layers, norm=vector("model.norm.weight"), lm_head=lm_head, score=score)


def check_all_finite(weights: LlamaWeights, tensors, names) -> None:
    """NaN/Inf in a checkpoint would silently poison every output: find it at load, name the tensor."""
    for canon, stored in names.items():
        arr = tensors.get(stored)
        dt = tensors.dtype(stored)
        if dt == "BF16":
            bad = ((arr & 0x7F80) == 0x7F80).any()  # exponent all ones: Inf or NaN
        elif dt == "F16":
            bad = ((arr.view(np.uint16) & 0x7C00) == 0x7C00).any()
        else:
            bad = not np.isfinite(arr).all()
        if bad:
            raise CheckpointError(f"tensor {stored!r} contains NaN or Inf "
                                  f"(from_pretrained(..., check_finite=False) skips this check)")
