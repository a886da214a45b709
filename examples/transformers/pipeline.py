"""The Llama 2 documentation page's pipeline usage, with only the import changed (torch dtypes are
strings in llamacpu: torch.float16 -> "float16").

    python examples/transformers/pipeline.py [MODEL]      # default: the embedded SmolLM2-135M-Instruct

device=0 is the GPU when numba.cuda finds one, else the CPU (with a warning).
"""
import sys

import llamacpu
from llamacpu import pipeline

model = sys.argv[1] if len(sys.argv) > 1 else str(llamacpu.default_model())

pipe = pipeline(task="text-generation", model=model, torch_dtype="float16", device=0)
print(pipe("Plants create energy through a process known as", max_new_tokens=30, seed=0))
