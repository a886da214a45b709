"""llamacpu: Llama inference on the CPU with NumPy and Numba."""
from .config import LlamaConfig
from .errors import (CheckpointError, ConfigError, DeviceError, InputError, LlamacpuError, TokenizerError,
                     UnsupportedError)
from .model.causal_lm import (LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, ModelOutput,
                              set_num_threads)

__version__ = "0.1.0"
