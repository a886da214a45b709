"""The Llama 2 documentation page's AutoModel usage, with only the import changed (torch dtypes are
strings; return_tensors="np" where the page has "pt").

    python examples/transformers/automodel.py [MODEL]     # default: the embedded SmolLM2-135M-Instruct

device_map="auto" picks the GPU when numba.cuda finds one, else the CPU; attn_implementation and
cache_implementation are accepted and change nothing (one exact attention kernel, a static cache).
"""
import sys

import llamacpu
from llamacpu import AutoModelForCausalLM, AutoTokenizer

model_id = sys.argv[1] if len(sys.argv) > 1 else str(llamacpu.default_model())

tokenizer = AutoTokenizer.from_pretrained(model_id)
model = AutoModelForCausalLM.from_pretrained(model_id, torch_dtype="float16", device_map="auto",
                                             attn_implementation="sdpa")
input_ids = tokenizer("Plants create energy through a process known as", return_tensors="np").to(model.device)

output = model.generate(**input_ids, max_new_tokens=30, cache_implementation="static")
print(tokenizer.decode(output[0], skip_special_tokens=True))
