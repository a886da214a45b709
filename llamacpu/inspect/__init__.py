"""Look inside a forward pass (see docs/ARCHITECTURE.md and examples/walkthrough_stories260k.py).

    tr = model.trace(ids)             # Trace: "embed", "layers.3.q_rope", ..., "logits" -> arrays
    tr.shapes()
    recompute(model, tr)              # the same pass in plain NumPy, from the trace and the weights
    lens.logit_lens(model, tr)        # what each layer would predict
    AttentionMaskVisualizer(tok)("Once upon a time")
    tr.to_html("pass.html")           # the pass as one self-contained page (llamacpu.inspect.html)

`llamacpu inspect MODEL --prompt TEXT` prints the per-layer table (llamacpu.cli.inspect).
"""
from . import lens
from .recompute import recompute, recompute_errors
from .trace import Recorder, Trace, trace, tracing
from .visualizer import AttentionMaskVisualizer

__all__ = ["AttentionMaskVisualizer", "Recorder", "Trace", "lens", "recompute",
           "recompute_errors", "trace", "tracing"]
