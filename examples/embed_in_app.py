"""Embedding llamacpu in another Python app: a tiny line-oriented "answer service" that keeps one
model loaded, answers each question from stdin as a stream, and can be stopped mid-answer.

    printf 'What is 2+2?\nName a color.\n' | python examples/embed_in_app.py
"""
import sys

from llamacpu import LlamaForCausalLM
from llamacpu.generation.stream import TextGeneration
from llamacpu.hub import resolve_model
from llamacpu.tokenizer.auto import AutoTokenizer


class AnswerService:
    """Load once, answer many times. Each call is independent (a fresh KV cache)."""

    def __init__(self, model_path=None, max_new_tokens=48):
        path = resolve_model(model_path)
        self.model = LlamaForCausalLM.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_new_tokens = max_new_tokens

    def answer(self, question: str):
        """A generator of text pieces: the caller decides how to show them, or stops early."""
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
        yield from TextGeneration(self.model, self.tokenizer).stream(ids, max_new_tokens=self.max_new_tokens)


if __name__ == "__main__":
    service = AnswerService()
    for line in sys.stdin:
        if line.strip():
            print(f"Q: {line.strip()}\nA: ", end="")
            for piece in service.answer(line.strip()):
                print(piece, end="", flush=True)
            print()
