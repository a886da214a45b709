"""Embedding llamacpu in another Python app: a tiny line-oriented "answer service" that keeps one
model loaded, answers each question from stdin as a stream, and can be stopped mid-answer.

    python examples/embed_in_app.py "What is 2+2?" "Name a color."
    printf 'What is 2+2?\nName a color.\n' | python examples/embed_in_app.py
    python examples/embed_in_app.py            # on a terminal: type questions, Ctrl-D to end
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


def questions():
    """The arguments; else lines from a pipe; else, on a terminal, what the user types."""
    if len(sys.argv) > 1:
        yield from sys.argv[1:]
    elif not sys.stdin.isatty():
        yield from sys.stdin
    else:
        print("Ask a question (Ctrl-D to end).", file=sys.stderr)
        while True:
            try:
                yield input("question> ")
            except EOFError:
                return


if __name__ == "__main__":
    service = AnswerService()
    for line in questions():
        if line.strip():
            print(f"Q: {line.strip()}\nA: ", end="")
            for piece in service.answer(line.strip()):
                print(piece, end="", flush=True)
            print()
