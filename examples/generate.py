"""Greedy and sampled continuations with the transformers-style API.

    python examples/generate.py [MODEL]      (default: the embedded SmolLM2-135M-Instruct)
"""
import sys

import numpy as np

from llamacpu import LlamaForCausalLM
from llamacpu.hub import resolve_model
from llamacpu.tokenizer.auto import AutoTokenizer

path = resolve_model(sys.argv[1] if len(sys.argv) > 1 else None)
model = LlamaForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)

ids = np.array([tok.encode("The three primary colors are")])
greedy = model.generate(ids, max_new_tokens=30, do_sample=False)
print("greedy: ", tok.decode(greedy[0], skip_special_tokens=True))
sampled = model.generate(ids, max_new_tokens=30, do_sample=True, temperature=0.8, top_p=0.95, seed=42)
print("sampled:", tok.decode(sampled[0], skip_special_tokens=True))
