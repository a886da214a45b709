"""Hugging Face Llama checkpoints: config.json + safetensors (one file or sharded), memory-mapped.

Every tensor is checked (name, dtype, shape) against the config before any kernel runs. The one table
in `llamacpu.model.names` maps checkpoint names to the engine's layout (`llamacpu.model.llama.LlamaWeights`).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..config import LlamaConfig
from ..errors import CheckpointError
from ..limits import read_json
from ..model.names import ALWAYS, ATTENTION_BIAS, LM_HEAD, MLP_BIAS, SCORE, TABLE, engine_name
from ..quant import get_format
from .safetensors_mmap import SafetensorsFile, bf16_to_f32

# checkpoint name (with {i} = layer index) -> (engine name, expected shape from the config), from the one
# name table (llamacpu.model.names)
NAME_TABLE = {t.hf: (engine_name(t), t.shape) for t in TABLE}
IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # buffers some old checkpoints saved
FLOAT_DTYPES = ("F32", "F16", "BF16")


def expected_tensors(config: LlamaConfig) -> dict[str, tuple[str, tuple]]:
    """checkpoint name -> (engine name, shape) for every tensor this config requires or allows."""
    out = {}
    for pattern, (engine, shape) in NAME_TABLE.items():
        layers = range(config.num_hidden_layers) if "{i}" in pattern else [None]
        for i in layers:
            out[pattern.format(i=i)] = (engine.format(i=i), shape(config))
    return out


def required_names(config: LlamaConfig, head: str = "lm") -> set[str]:
    """Checkpoint names that must be present for this config and head ("lm", "score" or "none")."""
    need = {ALWAYS}
    if config.attention_bias:
        need.add(ATTENTION_BIAS)
    if config.mlp_bias:
        need.add(MLP_BIAS)
    if head == "lm" and not config.tie_word_embeddings:
        need.add(LM_HEAD)
    if head == "score":
        need.add(SCORE)
    return {t.hf.format(i=i) for t in TABLE if t.when in need
            for i in (range(config.num_hidden_layers) if t.per_layer else [None])}


def weight_files(path: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: sharded (index json) or single."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, CheckpointError, "shard index").get("weight_map")
        try:
            files = sorted(set(weight_map.values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{index}: corrupt shard index ({e})") from None
        paths = []
        for f in files:
            p = path / f
            if not isinstance(f, str) or Path(f).name != f or not p.is_file():
                raise CheckpointError(f"{index}: shard {f!r} is missing")
            paths.append(p)
        return paths
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(path.glob("*.safetensors"))
    if others:
        return others
    found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pth"))
    hint = f" (found {', '.join(found)}: PyTorch pickles are not read; convert to safetensors)" if found else ""
    raise CheckpointError(f"no model.safetensors weights in {path}{hint}")


class CheckpointTensors:
    """All tensors of a checkpoint, validated, as read-only memory-mapped NumPy views."""

    def __init__(self, files: list[Path]):
        self.files = [SafetensorsFile(f) for f in files]
        self.where = {}
        for f in self.files:
            for name in f.keys():
                if name in self.where:
                    raise CheckpointError(f"tensor {name!r} appears in both {self.where[name].path} and {f.path}")
                self.where[name] = f
        self.metadata = {k: v for f in self.files for k, v in f.metadata.items()}

    def names(self):
        return self.where.keys()

    def dtype(self, name) -> str:
        return self.where[name].tensors[name][0]

    def shape(self, name) -> tuple:
        return self.where[name].tensors[name][1]

    def get(self, name) -> np.ndarray:
        return self.where[name].get(name)

    def get_f32(self, name) -> np.ndarray:
        """A float32 copy (small tensors: norms, biases)."""
        arr, dt = self.get(name), self.dtype(name)
        return np.array(bf16_to_f32(arr) if dt == "BF16" else arr, dtype=np.float32)


def canonical_names(tensors: CheckpointTensors) -> dict[str, str]:
    """checkpoint name as found -> canonical HF name. A bare `LlamaModel` checkpoint saves
    `layers.0...` without the `model.` prefix; accept both."""
    out = {}
    for name in tensors.names():
        if IGNORED.match(name):
            continue
        canon = name if name.startswith(("model.", "lm_head.", "score.")) else "model." + name
        out[canon] = name
    return out


def validate(tensors: CheckpointTensors, config: LlamaConfig, head: str = "lm",
             quantized: dict | None = None) -> dict[str, str]:
    """Check names, dtypes and shapes against the config. Returns canonical -> stored name.
    `quantized`: {stored name: (format, (rows, cols))} for a llamacpu quantized checkpoint, whose
    matrices are stored as uint8 blocks [rows, bytes_per_row]."""
    quantized = quantized or {}
    names = canonical_names(tensors)
    if config.num_hidden_layers * 9 > len(names):  # before building a name table from an absurd count
        raise CheckpointError(f"num_hidden_layers={config.num_hidden_layers} needs at least "
                              f"{9 * config.num_hidden_layers} tensors; the checkpoint has {len(names)}")
    expected = expected_tensors(config)
    unknown = sorted(set(names) - set(expected))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise CheckpointError(f"unexpected tensors for this config: {', '.join(unknown[:5])}{more} "
                              f"(num_hidden_layers={config.num_hidden_layers}, bias flags, architecture?)")
    missing = sorted(required_names(config, head) - set(names))
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"missing tensors: {', '.join(missing[:5])}{more}")
    for canon, stored in names.items():
        shape = expected[canon][1]
        if stored in quantized:
            fmt, logical = quantized[stored]
            blocks_shape = (logical[0], get_format(fmt).bytes_per_row(logical[1])) if logical[1] % get_format(fmt).block_size == 0 else None
            if logical != shape or tensors.shape(stored) != blocks_shape or tensors.dtype(stored) != "U8":
                raise CheckpointError(f"tensor {stored!r}: {fmt} blocks {tensors.dtype(stored)} {list(tensors.shape(stored))} "
                                      f"for a {list(logical)} matrix; expected U8 {list(blocks_shape or ())} for {list(shape)}")
            continue
        if tensors.shape(stored) != shape:
            raise CheckpointError(f"tensor {stored!r}: shape {list(tensors.shape(stored))}, "
                                  f"expected {list(shape)} from config.json")
        if tensors.dtype(stored) not in FLOAT_DTYPES:
            raise CheckpointError(f"tensor {stored!r}: dtype {tensors.dtype(stored)}, expected one of {FLOAT_DTYPES}")
    return names
