"""Write one forward pass as a page to open in the browser: the tokens, the residual stream layer by
layer, every head's attention map, the logit lens grid and the next token (llamacpu.inspect.html).

    python examples/inspect_html.py [MODEL] [--prompt TEXT] [--out pass.html]   (default: SmolLM2-135M-Instruct)

The same as `llamacpu inspect MODEL --prompt TEXT --html pass.html`. The page needs no network: open it
from disk, on any machine.
"""
import argparse
import time

import numpy as np

from llamacpu import LlamaForCausalLM
from llamacpu.hub import resolve_model
from llamacpu.tokenizer.auto import AutoTokenizer

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("model", nargs="?", help="folder, .gguf file or Hub repo id (default: the embedded SmolLM2)")
p.add_argument("--prompt", default="The capital of France is Paris. The capital of Germany is Berlin. "
                                    "The capital of Italy is")
p.add_argument("--out", default="pass.html")
args = p.parse_args()

path = resolve_model(args.model)
model = LlamaForCausalLM.from_pretrained(path)
tok = AutoTokenizer.from_pretrained(path)
ids = np.array([tok.encode(args.prompt)])

start = time.perf_counter()
trace = model.trace(ids)                    # every intermediate of one forward pass
page = trace.to_html(args.out, tok)         # the page: data and scripts inlined
took = time.perf_counter() - start
print(f"{ids.shape[1]} tokens -> {page} ({page.stat().st_size / 2**20:.2f} MiB) in {took:.2f} s; open it in a browser")
