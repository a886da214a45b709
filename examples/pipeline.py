"""pipeline("text-generation"), as in the transformers docs.

    python examples/pipeline.py [MODEL]
"""
import sys

from llamacpu import pipeline

pipe = pipeline("text-generation", model=sys.argv[1] if len(sys.argv) > 1 else None)
print(pipe("Once upon a time", max_new_tokens=40, do_sample=True, seed=0, stop_strings=["."]))
messages = [{"role": "user", "content": "Name one planet."}]
print(pipe(messages, max_new_tokens=20)[0]["generated_text"][-1])
