"""Choosing the next token: validated generation settings, logits processors, and the sampler.

The processors run in transformers' order (repetition penalty, then temperature, top-k, top-p,
min-p), so the same settings mean the same distribution. Sampling draws from a NumPy Generator
seeded once per call: the same seed gives the same tokens on every run and any thread count
(the kernels split work by rows, never inside a dot product, so logits do not depend on threads).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import numpy as np

from ..errors import InputError


@dataclass
class GenerationConfig:
    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0  # 0 means greedy, as in llama.cpp
    top_k: int = 50  # 0 disables (transformers' default is 50)
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    eos_token_id: list[int] | None = None
    pad_token_id: int | None = None
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None
    # transformers' names for length, beams and what generate returns (llamacpu.generation.api)
    max_length: int | None = None  # prompt + new tokens; max_new_tokens wins when both are given
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0  # beam scores are sum(log p) / new_tokens ** length_penalty
    early_stopping: bool | str = False  # beam search: False (heuristic), True, or "never"
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False
    bos_token_id: int | None = None  # read from generation_config.json; informational

    def __post_init__(self):
        self.extra: dict = {}  # generation_config.json keys llamacpu does not use
        self.explicit: set = set()  # keys the file set, even to a default value (they beat pipeline defaults)
        self.validate()

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def validate(self):
        def bad(name, want):
            raise InputError(f"{name}: expected {want}, got {getattr(self, name)!r}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 0:
            bad("max_new_tokens", "an integer >= 0")
        if not isinstance(self.do_sample, (bool, np.bool_)):
            bad("do_sample", "True or False")
        if not _is_real(self.temperature) or self.temperature < 0:
            bad("temperature", "a number >= 0")
        if not _is_int(self.top_k) or self.top_k < 0:
            bad("top_k", "an integer >= 0 (0 disables it)")
        if not _is_real(self.top_p) or not 0 < self.top_p <= 1:
            bad("top_p", "a number in (0, 1]")
        if not _is_real(self.min_p) or not 0 <= self.min_p <= 1:
            bad("min_p", "a number in [0, 1]")
        if not _is_real(self.repetition_penalty) or self.repetition_penalty <= 0:
            bad("repetition_penalty", "a number > 0")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            bad("seed", "an integer >= 0 or None")
        if self.eos_token_id is not None:
            eos = [self.eos_token_id] if _is_int(self.eos_token_id) else self.eos_token_id
            if not isinstance(eos, (list, tuple)) or not all(_is_int(e) and 0 <= e < 2**63 for e in eos):
                bad("eos_token_id", "a token id or a list of them")
            self.eos_token_id = [int(e) for e in eos]
        if self.pad_token_id is not None and (not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < 2**63):
            bad("pad_token_id", "a token id")
        if isinstance(self.stop_strings, str):
            self.stop_strings = [self.stop_strings]
        if self.stop_strings is None:
            self.stop_strings = []
        if not isinstance(self.stop_strings, (list, tuple)) or not all(isinstance(s, str) and s for s in self.stop_strings):
            bad("stop_strings", "a non-empty string or a list of them")
        if self.max_length is not None and (not _is_int(self.max_length) or self.max_length < 1):
            bad("max_length", "an integer >= 1")
        for name in ("num_beams", "num_return_sequences"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                bad(name, "an integer >= 1")
        if not _is_real(self.length_penalty):
            bad("length_penalty", "a number")
        if self.early_stopping not in (True, False, "never"):
            bad("early_stopping", "True, False or 'never'")
        for name in ("return_dict_in_generate", "output_scores", "output_logits"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(name, "True or False")

    @classmethod
    def from_kwargs(cls, **kwargs) -> "GenerationConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known - set(GENERATE_NO_OPS))
        if unknown:
            raise InputError(f"generate: unknown arguments {unknown} (known: {sorted(known | set(GENERATE_NO_OPS))})")
        return cls(**{k: v for k, v in kwargs.items() if k in known and (v is not None or k in _NONE_OK)})

    # ---- transformers' GenerationConfig surface ---------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """From a generation_config.json dict: known fields are taken, the rest (transformers_version,
        _from_model_config, fields of decoding methods llamacpu lacks) are kept in `extra` unused."""
        if not isinstance(d, dict):
            raise InputError(f"generation config: expected a JSON object, found {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in d.items() if k in known and (v is not None or k in _NONE_OK)})
        config.extra = {k: v for k, v in d.items() if k not in known}
        config.explicit = {k for k in d if k in known and (d[k] is not None or k in _NONE_OK)}
        return config

    @classmethod
    def from_pretrained(cls, path) -> "GenerationConfig":
        """generation_config.json of a checkpoint folder (a missing file gives the defaults)."""
        from pathlib import Path

        from ..errors import ConfigError

        from ..limits import is_present, read_json

        file = Path(path) / "generation_config.json" if Path(path).is_dir() else Path(path)
        if not is_present(file, ConfigError, "generation_config.json"):
            return cls()
        d = read_json(file, ConfigError, "generation_config.json", expect=None)
        try:
            return cls.from_dict(d)
        except InputError as e:
            raise ConfigError(f"{file}: {e}") from None

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_diff_dict(self) -> dict:
        """The values that differ from the defaults or that the file set (what save_pretrained writes)."""
        default = type(self)()
        return {k: v for k, v in self.to_dict().items() if v != getattr(default, k) or k in self.explicit}

    def update(self, **kwargs) -> dict:
        """Set known fields (validated); returns the unknown ones, as transformers does."""
        known = {f.name for f in fields(self)}
        for k, v in kwargs.items():
            if k in known:
                setattr(self, k, v)
        self.validate()
        return {k: v for k, v in kwargs.items() if k not in known}

    def save_pretrained(self, save_directory) -> str:
        import json
        from pathlib import Path

        from ..checkpoint.write import atomic_write_text

        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        d = self.to_diff_dict()
        return atomic_write_text(folder / "generation_config.json", json.dumps(d, indent=2, sort_keys=True) + "\n")


# Accepted by generate() and ignored, because llamacpu already behaves that way: the KV cache is always
# preallocated ("static") and always used; outputs are NumPy whether or not a dict is asked for.
GENERATE_NO_OPS = ("cache_implementation", "use_cache", "synced_gpus")
_NONE_OK = ("seed", "eos_token_id", "pad_token_id", "max_length", "bos_token_id")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


# ---- logits processors: float64 [B, V] -> [B, V], in place where possible ----------------------------

def repetition_penalty(logits: np.ndarray, history: list[np.ndarray], penalty: float) -> np.ndarray:
    """CTRL's penalty [arXiv:1909.05858, eq. (1)] on every token already in the row (prompt included):
    positive logits are divided by the penalty, negative ones multiplied."""
    if penalty == 1.0:
        return logits
    for b, seen in enumerate(history):
        ids = np.unique(seen)
        z = logits[b, ids]
        logits[b, ids] = np.where(z < 0, z * penalty, z / penalty)
    return logits


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    if 0 < k < logits.shape[-1]:
        kth = np.partition(logits, -k, axis=-1)[:, -k][:, None]
        logits[logits < kth] = -np.inf
    return logits


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus sampling [arXiv:1904.09751]: keep the smallest set of top tokens whose mass reaches p
    (transformers' rule: drop tokens whose cumulative mass from the bottom is <= 1 - p)."""
    if p >= 1.0:
        return logits
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending
    probs = softmax(np.take_along_axis(logits, order, axis=-1))
    drop_sorted = np.cumsum(probs, axis=-1) <= 1 - p
    drop_sorted[:, -1] = False  # always keep the best token
    drop = np.zeros_like(drop_sorted)
    np.put_along_axis(drop, order, drop_sorted, axis=-1)
    logits[drop] = -np.inf
    return logits


def min_p_filter(logits: np.ndarray, min_p: float) -> np.ndarray:
    """min-p [arXiv:2407.01082]: drop tokens less likely than min_p x the top token's probability."""
    if min_p <= 0:
        return logits
    probs = softmax(logits)
    logits[probs < min_p * probs.max(axis=-1, keepdims=True)] = -np.inf
    return logits


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Sampler:
    """Turns the logits of one step into the next token of each row."""

    def __init__(self, config: GenerationConfig):
        self.config = config
        self.rng = np.random.default_rng(config.seed)

    def __call__(self, logits: np.ndarray, history: list[np.ndarray]) -> np.ndarray:
        c = self.config
        self.last_logits = logits  # raw, for output_logits
        z = repetition_penalty(logits.astype(np.float64), history, c.repetition_penalty)
        if c.greedy:
            self.last_scores = z  # what transformers' output_scores returns for this step
            return z.argmax(axis=-1)
        z = z / c.temperature
        z = min_p_filter(top_p_filter(top_k_filter(z, c.top_k), c.top_p), c.min_p)
        self.last_scores = z
        probs = softmax(z)
        # inverse-CDF draw, one uniform per row: reproducible and independent of the BLAS/thread setup
        u = self.rng.random(probs.shape[0])
        cdf = np.cumsum(probs, axis=-1)
        picks = (cdf <= (u * cdf[:, -1])[:, None]).sum(axis=-1)  # first index whose cdf passes u: never a masked one
        return np.minimum(picks, probs.shape[-1] - 1)
