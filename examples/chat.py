"""A scripted two-turn chat. The second turn reuses the KV cache of the first instead of recomputing
the history (see `reused_tokens`). For an interactive chat: `llamacpu chat [MODEL]`.

    python examples/chat.py [MODEL]
"""
import sys

from llamacpu import LlamaForCausalLM
from llamacpu.generation.chat import ChatSession
from llamacpu.hub import resolve_model
from llamacpu.tokenizer.auto import AutoTokenizer

path = resolve_model(sys.argv[1] if len(sys.argv) > 1 else None)
model = LlamaForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)

chat = ChatSession(model, tok, system="You are a concise assistant.", max_new_tokens=60, do_sample=False)
for question in ["What is the capital of France?", "And of Italy?"]:
    print("user:", question)
    print("assistant:", "".join(chat.send(question)))
    print(f"  (reused {chat.reused_tokens} cached tokens, computed {chat.prefilled_tokens})")
