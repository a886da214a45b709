"""llamacpu: Llama inference on the CPU with NumPy and Numba."""
from . import runtime  # first: picks the Numba threading layer before any kernel runs
from .kernels import cachekey  # before any kernel is defined: cache keyed on all kernel sources
from .config import LlamaConfig
from .errors import (CheckpointError, ConfigError, DeviceError, InputError, LlamacpuError, TokenizerError,
                     UnsupportedError)
from .generation.pipeline import pipeline
from .generation.sampling import GenerationConfig
from .generation.stream import TextStreamer, stream
from .hub import default_model
from .model.auto import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification
from .model.causal_lm import (LlamaForCausalLM, LlamaForSequenceClassification, LlamaModel, ModelOutput,
                              set_num_threads)
from .model.hf_surface import set_seed
from .model.outputs import (BaseModelOutputWithPast, CausalLMOutputWithPast, GenerateBeamDecoderOnlyOutput,
                            GenerateDecoderOnlyOutput, SequenceClassifierOutputWithPast)
from .quantization_config import BitsAndBytesConfig, Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig
from .tokenizer.auto import AutoTokenizer
from .tokenizer.fast import LlamaTokenizerFast
from .tokenizer.llama import LlamaTokenizer

__version__ = "0.1.0"
