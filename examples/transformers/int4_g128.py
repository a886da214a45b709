"""Int4 weight-only quantization with group size 128, as the transformers docs write it: the
TorchAoConfig maps onto llamacpu's int4_g128 format (asymmetric 4-bit, groups of 128, fp16 scale and
min); activations stay float32. Both spellings below give the same model.

    python examples/transformers/int4_g128.py [MODEL]     # default: the embedded SmolLM2-135M-Instruct

A matrix whose width is not a multiple of 128 falls back to the next format that fits (README,
"Quantization"); the embedding and LM head use q8_0.
"""
import sys

import llamacpu
from llamacpu import AutoModelForCausalLM, AutoTokenizer, Int4WeightOnlyConfig, TorchAoConfig

model_id = sys.argv[1] if len(sys.argv) > 1 else str(llamacpu.default_model())

quantization_config = TorchAoConfig(Int4WeightOnlyConfig(group_size=128))  # transformers 5's form
# quantization_config = TorchAoConfig("int4_weight_only", group_size=128)  # the 4.x form: the same
model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto",
                                             quantization_config=quantization_config)
tokenizer = AutoTokenizer.from_pretrained(model_id)
input_ids = tokenizer("Plants create energy through a process known as", return_tensors="np").to(model.device)

output = model.generate(**input_ids, max_new_tokens=30, cache_implementation="static")
print(tokenizer.decode(output[0], skip_special_tokens=True))
print("formats:", sorted({w.dtype for w in model.weights.matrices()}))
