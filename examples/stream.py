"""Stream a reply token by token: pieces never split a UTF-8 character and stop at a stop string.

    python examples/stream.py [MODEL]
"""
import sys

from llamacpu import LlamaForCausalLM
from llamacpu.generation.stream import TextGeneration
from llamacpu.hub import resolve_model
from llamacpu.tokenizer.auto import AutoTokenizer

path = resolve_model(sys.argv[1] if len(sys.argv) > 1 else None)
model = LlamaForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)

ids = tok.apply_chat_template([{"role": "user", "content": "Write a haiku about the sea."}],
                              add_generation_prompt=True)
run = TextGeneration(model, tok)
for piece in run.stream(ids, max_new_tokens=60, do_sample=True, temperature=0.7, seed=1):
    print(piece, end="", flush=True)
s = run.stats
print(f"\n[{s.prompt_tokens} prompt tokens at {s.prompt_tps:.0f} tok/s, {s.new_tokens} new at {s.gen_tps:.1f} tok/s]")
