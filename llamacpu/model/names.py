"""The one checkpoint name table: every tensor of a Llama checkpoint, with its field in `LlamaWeights` /
`LayerWeights`, its Hugging Face name, its GGUF name (llama.cpp gguf-py `MODEL_TENSORS[MODEL_ARCH.LLAMA]`),
its shape from the config, and when it is present. The HF loader (`checkpoint.hf`), the GGUF loader
(`checkpoint.gguf`), the weight assembly (`checkpoint.load`), the quantized-checkpoint writer
(`checkpoint.quantized`) and `LlamaWeights.matrices` all derive their names and shapes from it, so a new
tensor (say q_norm / k_norm) is one row here plus its use in the forward pass.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

MATRIX, VECTOR = "matrix", "vector"  # a `Weight` in its stored format / a float32 array
# when a tensor is present: always; with config.attention_bias / mlp_bias; the LM head when it is
# not tied to the embedding; the classification head
ALWAYS, ATTENTION_BIAS, MLP_BIAS, LM_HEAD, SCORE = "always", "attention_bias", "mlp_bias", "lm_head", "score"


class TensorName(NamedTuple):
    field: str  # attribute of LlamaWeights (global) or LayerWeights (per layer)
    hf: str  # Hugging Face name; "{i}" = layer index
    gguf: str | None  # GGUF name, None where llama.cpp has none
    shape: Callable  # config (attributes as LlamaConfig) -> shape
    kind: str  # MATRIX or VECTOR
    when: str  # ALWAYS, ATTENTION_BIAS, MLP_BIAS, LM_HEAD, SCORE

    @property
    def per_layer(self) -> bool:
        return "{i}" in self.hf


def _q(c):  # query rows: n_heads * head_dim
    return c.num_attention_heads * c.head_dim


def _kv(c):  # key / value rows: n_kv_heads * head_dim
    return c.num_key_value_heads * c.head_dim


_L = "model.layers.{i}."
TABLE: tuple[TensorName, ...] = (
    TensorName("embed", "model.embed_tokens.weight", "token_embd.weight",
               lambda c: (c.vocab_size, c.hidden_size), MATRIX, ALWAYS),
    TensorName("attn_norm", _L + "input_layernorm.weight", "blk.{i}.attn_norm.weight",
               lambda c: (c.hidden_size,), VECTOR, ALWAYS),
    TensorName("wq", _L + "self_attn.q_proj.weight", "blk.{i}.attn_q.weight",
               lambda c: (_q(c), c.hidden_size), MATRIX, ALWAYS),
    TensorName("wk", _L + "self_attn.k_proj.weight", "blk.{i}.attn_k.weight",
               lambda c: (_kv(c), c.hidden_size), MATRIX, ALWAYS),
    TensorName("wv", _L + "self_attn.v_proj.weight", "blk.{i}.attn_v.weight",
               lambda c: (_kv(c), c.hidden_size), MATRIX, ALWAYS),
    TensorName("wo", _L + "self_attn.o_proj.weight", "blk.{i}.attn_output.weight",
               lambda c: (c.hidden_size, _q(c)), MATRIX, ALWAYS),
    TensorName("bq", _L + "self_attn.q_proj.bias", None, lambda c: (_q(c),), VECTOR, ATTENTION_BIAS),
    TensorName("bk", _L + "self_attn.k_proj.bias", None, lambda c: (_kv(c),), VECTOR, ATTENTION_BIAS),
    TensorName("bv", _L + "self_attn.v_proj.bias", None, lambda c: (_kv(c),), VECTOR, ATTENTION_BIAS),
    TensorName("bo", _L + "self_attn.o_proj.bias", None, lambda c: (c.hidden_size,), VECTOR, ATTENTION_BIAS),
    TensorName("mlp_norm", _L + "post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight",
               lambda c: (c.hidden_size,), VECTOR, ALWAYS),
    TensorName("w_gate", _L + "mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight",
               lambda c: (c.intermediate_size, c.hidden_size), MATRIX, ALWAYS),
    TensorName("w_up", _L + "mlp.up_proj.weight", "blk.{i}.ffn_up.weight",
               lambda c: (c.intermediate_size, c.hidden_size), MATRIX, ALWAYS),
    TensorName("w_down", _L + "mlp.down_proj.weight", "blk.{i}.ffn_down.weight",
               lambda c: (c.hidden_size, c.intermediate_size), MATRIX, ALWAYS),
    TensorName("b_gate", _L + "mlp.gate_proj.bias", None, lambda c: (c.intermediate_size,), VECTOR, MLP_BIAS),
    TensorName("b_up", _L + "mlp.up_proj.bias", None, lambda c: (c.intermediate_size,), VECTOR, MLP_BIAS),
    TensorName("b_down", _L + "mlp.down_proj.bias", None, lambda c: (c.hidden_size,), VECTOR, MLP_BIAS),
    TensorName("norm", "model.norm.weight", "output_norm.weight", lambda c: (c.hidden_size,), VECTOR, ALWAYS),
    TensorName("lm_head", "lm_head.weight", "output.weight", lambda c: (c.vocab_size, c.hidden_size), MATRIX, LM_HEAD),
    TensorName("score", "score.weight", None, lambda c: (c.num_labels, c.hidden_size), MATRIX, SCORE),
)
LAYER = tuple(t for t in TABLE if t.per_layer)
GLOBAL = tuple(t for t in TABLE if not t.per_layer)
# the matrices of a layer, in table order: what quantization and the weight census iterate over
PROJECTIONS = tuple(t.field for t in LAYER if t.kind == MATRIX)


def engine_name(t: TensorName) -> str:
    """The engine's name of a tensor: "embed", "{i}.wq" (per layer)."""
    return "{i}." + t.field if t.per_layer else t.field
