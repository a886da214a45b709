"""RoPE inverse frequencies, and how each scaling type stretches them past the trained context.

Follows transformers' `modeling_rope_utils` so that logits match:
  default  theta_i = base^(-2i/d)                                  [arXiv:2104.09864, eq. (15)]
  linear   positions interpolated: theta_i / factor                [arXiv:2306.15595]
  dynamic  NTK-aware: base grows with the sequence length          (transformers `_compute_dynamic_ntk_parameters`)
  llama3   low frequencies / factor, high kept, smooth in between  (Llama 3.1 release)
  factors  a GGUF's rope_freqs.weight: theta_i / factors[i], as llama.cpp applies it (the file's
           precomputed llama3 factors; set as `config.rope_freq_factors` by the GGUF loader)
All arithmetic in float32, as transformers does it.
"""
import math

import numpy as np

from ..config import LlamaConfig


def default_inv_freq(base: float, dim: int) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    return (np.float32(1.0) / (np.float32(base) ** exponents)).astype(np.float32)


def inv_freq(config: LlamaConfig, seq_len: int | None = None) -> np.ndarray:
    """float32 [head_dim / 2]. `seq_len` matters only for dynamic scaling: the longest sequence seen."""
    dim, base, rs = config.head_dim, config.rope_theta, config.rope_scaling or {}
    factors = getattr(config, "rope_freq_factors", None)
    if factors is not None:  # a GGUF's rope_freqs.weight (Llama 3.1+): llama.cpp divides by it as stored
        return (default_inv_freq(base, dim) / factors).astype(np.float32)
    kind = config.rope_type
    if kind == "linear":
        return (default_inv_freq(base, dim) / np.float32(rs["factor"])).astype(np.float32)
    if kind == "dynamic":
        trained = config.max_position_embeddings
        factor = rs["factor"]
        seq_len = seq_len if seq_len is not None and seq_len > trained else trained
        base = base * ((factor * seq_len / trained) - (factor - 1)) ** (dim / (dim - 2))
        return default_inv_freq(base, dim)
    if kind == "llama3":
        freq = default_inv_freq(base, dim)
        factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old_ctx = rs["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = np.float32(2 * math.pi) / freq
        scaled = np.where(wavelen > low_wavelen, freq / np.float32(factor), freq)
        smooth = (np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    return default_inv_freq(base, dim)


class RopeFrequencies:
    """The frequencies in force for one cached sequence.

    Under dynamic scaling transformers recomputes them on each forward call from the longest
    position seen so far (growing, never shrinking within a sequence), and keys already cached keep
    the rotation they got; we do the same so that generation matches it token for token.
    """

    def __init__(self, config: LlamaConfig):
        self.config = config
        self.reset()

    def reset(self):
        self.seq_len = self.config.max_position_embeddings
        self.table = inv_freq(self.config)

    def for_positions(self, max_position: int) -> np.ndarray:
        if self.config.rope_type == "dynamic" and max_position + 1 > self.seq_len:
            self.seq_len = max_position + 1
            self.table = inv_freq(self.config, self.seq_len)
        return self.table
