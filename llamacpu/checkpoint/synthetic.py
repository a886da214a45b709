"""Random-weight Llama checkpoints of any shape, written streaming (one tensor in RAM at a time).

For the Numba warm-up, benchmarks (TinyLlama- and Llama-2-7B-shaped files) and tests of file
handling. Weights are random, so the text is noise: only shapes, speed and plumbing are real.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from .hf import expected_tensors, required_names
from .safetensors_mmap import f32_to_bf16
from .writer import write_safetensors

SHAPES = {
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "tinyllama-1.1b": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                           num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                           rms_norm_eps=1e-5),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                       rms_norm_eps=1e-5),
}


def write_synthetic(folder, shape: str | dict = "tiny", dtype: str = "F32", seed: int = 0, **overrides) -> Path:
    """Write config.json + model.safetensors with N(0, 0.02)-ish random weights (norms near 1)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = dict(SHAPES[shape] if isinstance(shape, str) else shape, **overrides)
    cfg.setdefault("architectures", ["LlamaForCausalLM"])
    cfg.setdefault("model_type", "llama")
    cfg["torch_dtype"] = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    config = LlamaConfig.from_dict(cfg)
    names = required_names(config)
    shapes = {n: s for n, (_, s) in expected_tensors(config).items() if n in names}

    def maker(name, shape, index):
        def make():
            rng = np.random.default_rng([seed, index])
            if len(shape) == 1:
                w = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
            else:
                w = rng.standard_normal(shape, dtype=np.float32) * np.float32(1.0 / np.sqrt(shape[1]))
            if dtype == "BF16":
                return f32_to_bf16(w)
            return w.astype(np.float16 if dtype == "F16" else np.float32)
        return make

    entries = [(n, dtype, s, maker(n, s, i)) for i, (n, s) in enumerate(sorted(shapes.items()))]
    write_safetensors(folder / "model.safetensors", entries, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    return folder
