"""One exception family for everything llamacpu refuses.

Every error a user can provoke (bad files, bad arguments, bad token ids) is raised at the boundary as
a subclass of `LlamacpuError`, with a message saying what was expected and what was found. Kernels are
only called after validation, because Numba does not bounds-check.
"""


class LlamacpuError(Exception):
    """Base class of every error llamacpu raises on purpose."""


class ConfigError(LlamacpuError, ValueError):
    """config.json (or GGUF hyperparameters) is missing, malformed or unsupported."""


class CheckpointError(LlamacpuError):
    """Weights are missing, truncated, corrupt, or do not match the config."""


class TokenizerError(LlamacpuError):
    """Tokenizer files are missing or corrupt, or ids/tokens are unknown."""


class InputError(LlamacpuError, ValueError):
    """Bad call arguments: token ids out of range, wrong shapes, prompt longer than the context,
    invalid generation or sampling values."""


class UnsupportedError(LlamacpuError):
    """A real but unsupported thing: an architecture, tensor type or format we do not implement."""


class DeviceError(LlamacpuError):
    """The requested device (e.g. CUDA) is not available."""
