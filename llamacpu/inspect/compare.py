"""Find the first tensor where our forward pass and transformers' LlamaForCausalLM part ways.

transformers is the reference for behaviour; its intermediates are caught with forward hooks on its
modules and named as in our Trace. torch and transformers are imported only here, only when asked:
llamacpu itself never needs them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from ..errors import UnsupportedError
from .recompute import relative_error
from .trace import Trace


def missing_packages() -> list:
    return [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]


def reference_tensors(path, input_ids: np.ndarray) -> dict:
    """Run transformers (float32, eager attention) on `input_ids` [B, T] -> name -> float32 array."""
    import torch
    import transformers

    given, extra = Path(path), {}
    if given.is_file() and given.suffix == ".gguf":  # transformers dequantizes GGUF weights to float32
        path, extra = given.parent, {"gguf_file": given.name}
    try:
        # dtype=float32 is the whole cast: .float() is refused on a model loaded from GGUF
        hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                               **extra).eval()
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds (ValueError, OSError, ImportError...)
        raise UnsupportedError(f"transformers could not load {given} for the comparison: {type(e).__name__}: {e}") from e
    got: dict[str, np.ndarray] = {}

    def output_of(name):
        def hook(module, args, output):
            got[name] = (output[0] if isinstance(output, tuple) else output).detach().float().numpy()
        return hook

    def input_of(name):
        def hook(module, args):
            got[name] = args[0].detach().float().numpy()
        return hook

    base, hooks = hf.model, []
    hooks.append(base.embed_tokens.register_forward_hook(output_of("embed")))
    for i, layer in enumerate(base.layers):
        p, at, mlp = f"layers.{i}.", layer.self_attn, layer.mlp
        for module, name in [(layer.input_layernorm, "attn_norm"), (at.q_proj, "q"), (at.k_proj, "k"),
                             (at.v_proj, "v"), (at.o_proj, "o_proj"), (layer.post_attention_layernorm, "mlp_norm"),
                             (mlp.gate_proj, "gate"), (mlp.up_proj, "up"), (mlp.down_proj, "down"), (layer, "resid_mlp")]:
            hooks.append(module.register_forward_hook(output_of(p + name)))
        hooks.append(at.o_proj.register_forward_pre_hook(input_of(p + "attn_out")))
        hooks.append(layer.post_attention_layernorm.register_forward_pre_hook(input_of(p + "resid_attn")))
        hooks.append(mlp.down_proj.register_forward_pre_hook(input_of(p + "act")))
    hooks.append(base.norm.register_forward_hook(output_of("final_norm")))
    try:
        with torch.no_grad():
            out = hf(torch.from_numpy(np.asarray(input_ids, np.int64)), output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    for i, a in enumerate(out.attentions or ()):
        got[f"layers.{i}.attn_probs"] = a.detach().float().numpy()
    got["logits"] = out.logits.detach().float().numpy()
    return got


def first_divergence(trace: Trace, reference: dict, rtol: float = 1e-4):
    """Walk the trace in computation order -> (name, its relative error, tensors compared) for the
    first tensor with max|Δ| > rtol * max|reference|, or (None, the largest error, compared)."""
    worst, compared = 0.0, 0
    for name, ours in trace.items():
        if name not in reference:
            continue  # e.g. q_rope: transformers rotates inside a function, not a module
        ref = reference[name]
        compared += 1
        err = relative_error(ours, ref.reshape(ours.shape)) if ref.size == ours.size else float("inf")
        if not err <= rtol:
            return name, err, compared
        worst = max(worst, err)
    return None, worst, compared
