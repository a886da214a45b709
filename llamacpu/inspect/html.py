"""One forward pass as a self-contained HTML page a student opens in the browser.

    model.trace(ids).to_html("pass.html")            # or: llamacpu inspect MODEL --prompt TEXT --html pass.html

The page walks the pass in the order of docs/ARCHITECTURE.md: the tokens, the residual stream layer by
layer, every head's attention map (with the causal / padding mask), the logit lens grid, and the next
token. Everything is inlined (no network at view time): the numbers as JSON in a <script> element,
arrays as base64 little-endian float32, so the page holds the trace's values exactly; the style and the
drawing code come from report/page.css and report/page.js beside this module.
jinja2 (already a dependency, for chat templates) fills the page skeleton and escapes the text.
"""
from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from ..errors import InputError
from . import lens
from .tokens import token_labels
from .mask import render_mask

ASSETS = Path(__file__).with_name("report")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "ARCHITECTURE.md"  # present in a source checkout
DATA_ID = "llamacpu-data"
MAX_ATTENTION_BYTES = 8 << 20  # above this the attention maps are stored as 8-bit (1/255 steps)

# The panels in the order of the forward pass: (id, title, what the student is looking at, the code that
# computed it, the lines of docs/ARCHITECTURE.md that explain it (matched by their start)).
PANELS = [
    ("tokens", "1. The tokens",
     "The prompt as the model sees it: one box per token id, in order. A leading space belongs to the token "
     "(byte-level and SentencePiece vocabularies both fold it in); hover a token for its raw vocabulary piece "
     "and id, click it to follow that position in the panels below.",
     "tokenizer.encode (llamacpu/tokenizer/), the embedding x = E[token]: CPUBackend.embed",
     ["  tokenizer/", "| embedding |"]),
    ("residual", "2. The residual stream, layer by layer",
     "Each layer reads the residual stream x and adds two updates to it: x + attention(RMSNorm(x)), then "
     "+ MLP(RMSNorm(x)). The bars are L2 norms at the selected token: the stream after the embedding and "
     "after each layer, and the size of what each layer's attention block (o_proj) and MLP block (down) added.",
     "inspect/lens.py: residual_norms, update_norms over the trace's embed, o_proj, down, resid_mlp",
     ["| output proj. |", "| SwiGLU MLP |"]),
    ("attention", "3. Attention, head by head",
     "Row t of a heatmap is where the query at token t looks: softmax(q K^T / sqrt(d) + M) over the keys "
     "(columns), so each row sums to 1. M is the mask (hatched cells: a later token, or padding). Pick a layer "
     "with the slider or the overview, a head with its thumbnail; hover a cell for its value.",
     "kernels/attention.py:attention (the probabilities recorded by attention_probs_ref as attn_probs)",
     ["| attention |", "`inspect/visualizer.py:AttentionMaskVisualizer`"]),
    ("lens", "4. The logit lens",
     "What the model would predict if it stopped after each layer: the final RMSNorm and the LM head applied "
     "to the residual stream at every layer (rows) and position (columns). Each cell is the top token and its "
     "probability; hover for the top 5. The last row is the model's own prediction for the next token.",
     "inspect/lens.py:logit_lens_top (RMSNorm: kernels/rmsnorm.py, head: model/llama.py:LlamaCore.head)",
     ["| final norm |", "| head |"]),
    ("next", "5. The next token",
     "The model's output at the last position: softmax of the logits, the most likely next tokens. Greedy "
     "decoding picks the first; sampling draws from this distribution.",
     "model/llama.py:LlamaCore.head -> logits; generation/sampling.py:Sampler picks from them",
     ["| head |"]),
]


def encode_array(a: np.ndarray, dtype: str = "float32", scale: float | None = None) -> dict:
    """An array as {"dtype", "shape", "b64"} (little-endian bytes): exact for float32; with scale, the
    values / scale rounded into uint8 (the page multiplies back)."""
    a = np.asarray(a)
    if scale is not None:
        a = np.clip(np.rint(np.nan_to_num(a, nan=0.0) / scale), 0, 255)
    raw = np.ascontiguousarray(a.astype(np.dtype(dtype).newbyteorder("<")))
    out = {"dtype": dtype, "shape": list(a.shape), "b64": base64.b64encode(raw.tobytes()).decode("ascii")}
    if scale is not None:
        out["scale"] = scale
    return out


def decode_array(entry: dict) -> np.ndarray:
    """The inverse of encode_array (uint8 entries come back as float32 values)."""
    a = np.frombuffer(base64.b64decode(entry["b64"]), np.dtype(entry["dtype"]).newbyteorder("<"))
    a = a.reshape(entry["shape"])
    return a.astype(np.float32) * np.float32(entry["scale"]) if "scale" in entry else a


def read_data(page: str) -> dict:
    """The data inlined in a page written by write_html."""
    m = re.search(rf'<script type="application/json" id="{DATA_ID}">(.*?)</script>', page, re.S)
    if m is None:
        raise InputError("not a llamacpu report page: no inlined data found")
    return json.loads(m.group(1))


def doc_lines(patterns: list, docs: Path = DOCS) -> list:
    """[(line number, text)] of docs/ARCHITECTURE.md for each pattern (the first line starting with it,
    leading spaces ignored for a table row); [] without the file (an installed package has no docs/)."""
    try:
        lines = docs.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    found = []
    for pat in patterns:
        for n, line in enumerate(lines, 1):
            if line.startswith(pat) or (pat.startswith("`") and line.lstrip().startswith(pat)):
                found.append((n, line))
                break
    return found


def report_data(model, trace, tokenizer=None, row: int = 0, top_k: int = 10, lens_k: int = 5,
                max_attention_bytes: int = MAX_ATTENTION_BYTES) -> dict:
    """Everything the page shows, as JSON-ready values (arrays through encode_array)."""
    if trace.input_ids is None or "logits" not in trace:
        raise InputError("to_html needs a whole traced pass with logits: use model.trace(ids)")
    if trace.start != 0:
        raise InputError("to_html needs the trace of a whole prompt (model.trace(ids)), not a decode step")
    B, T = trace.input_ids.shape
    if not 0 <= row < B:
        raise InputError(f"row {row} is outside the batch of {B}")
    for name, k in (("top_k", top_k), ("lens_k", lens_k)):
        if not 1 <= k <= min(100, model.config.vocab_size):
            raise InputError(f"{name} must be between 1 and {min(100, model.config.vocab_size)}, not {k}")
    cfg, L = model.config, trace.num_layers
    H = cfg.num_attention_heads
    attention = np.stack([trace[f"layers.{i}.attn_probs"][row] for i in range(L)])  # [L, H, T, T]
    if attention.size > 8 * max_attention_bytes:
        raise InputError(f"a page for {T} tokens would hold {attention.size / 2**20:.1f} MiB of attention maps even "
                         f"at 8 bits ({L} layers x {H} heads x {T}^2); use a shorter prompt")
    # 8-bit only for long prompts: a short prompt keeps the trace's float32 values exactly
    att = (encode_array(attention) if attention.size * 4 <= max_attention_bytes else
           encode_array(attention, "uint8", scale=1 / 255))
    mask = trace.attention_mask[row].astype(np.uint8)
    ids = trace.input_ids[row]
    tokens = token_labels(tokenizer, ids)
    for t, m in zip(tokens, mask):
        t["pad"] = not m
    lens_ids, lens_probs = lens.logit_lens_top(model, trace, lens_k, row=row)  # [L + 1, T, k]
    final = lens.top_tokens(trace["logits"][row, -1], top_k)
    seen = sorted({int(i) for i in lens_ids.ravel()} | {i for i, _ in final})
    positions = np.arange(T)
    resid = np.stack([lens.residual_norms(trace, p, row) for p in positions], 1)  # [L + 1, T]
    updates = np.stack([lens.update_norms(trace, p, row) for p in positions], 1)  # [L, T, 2]
    return {
        "model": {"name": Path(str(getattr(model, "name_or_path", "model"))).name, "layers": L,
                  "hidden": cfg.hidden_size, "heads": H, "kv_heads": cfg.num_key_value_heads,
                  "head_dim": cfg.head_dim, "vocab": cfg.vocab_size},
        "row": row, "tokens": tokens, "mask": mask.tolist(),
        "vocab": {str(t["id"]): t for t in token_labels(tokenizer, seen)},
        "residual_norm": encode_array(resid), "attn_update": encode_array(updates[..., 0]),
        "mlp_update": encode_array(updates[..., 1]), "attention": att,
        "entropy": encode_array(lens.attention_entropy(trace, row)),
        "lens_ids": encode_array(lens_ids, "int32"), "lens_probs": encode_array(lens_probs),
        "next": [{"id": i, "p": p} for i, p in final],
    }


def render(model, trace, tokenizer=None, **kwargs) -> str:
    """The page as a string (see write_html)."""
    import jinja2
    from markupsafe import Markup

    data = report_data(model, trace, tokenizer, **kwargs)
    lens_ids, lens_probs = decode_array(data["lens_ids"]), decode_array(data["lens_probs"])
    L = data["model"]["layers"]
    quoted = lambda t: dict(t, q=json.dumps(t["text"], ensure_ascii=False),  # noqa: E731
                            qp=json.dumps(t["piece"], ensure_ascii=False))
    vocab = {int(i): quoted(t) for i, t in data["vocab"].items()}
    lens_rows = [("embedding" if i == 0 else f"after layer {i - 1}",
                  [{"tok": vocab[int(lens_ids[i, t, 0])], "p": float(lens_probs[i, t, 0]),
                    "top": [(vocab[int(j)], float(q)) for j, q in zip(lens_ids[i, t], lens_probs[i, t])]}
                   for t in range(len(data["tokens"]))]) for i in range(L + 1)]
    labels = [("<pad>" if t["pad"] else t["text"]) for t in data["tokens"]]
    panels = [dict(id=pid, title=title, what=what, code=code, docs=doc_lines(pats))
              for pid, title, what, code, pats in PANELS]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    page = env.from_string((ASSETS / "page.html.j2").read_text(encoding="utf-8"))
    # the JSON sits in a <script>: "</" must not end it early
    blob = json.dumps(data, separators=(",", ":"), ensure_ascii=False).replace("</", "<\\/")
    return page.render(
        d=data, tokens=[quoted(t) for t in data["tokens"]], panels={p["id"]: p for p in panels},
        lens_rows=lens_rows, next=[
            (vocab[n["id"]], n["p"]) for n in data["next"]],
        mask_grid=render_mask(labels, data["mask"]),
        doc_refs=sorted({ln for p in panels for ln in p["docs"]}), data_id=DATA_ID,
        data_json=Markup(blob),
        css=Markup((ASSETS / "page.css").read_text(encoding="utf-8")),
        js=Markup((ASSETS / "page.js").read_text(encoding="utf-8")))


def write_html(path, model, trace, tokenizer=None, **kwargs) -> Path:
    """Write the page to `path` (through a temporary file beside it, renamed at the end, so an existing
    file is never left half-written). Returns the path."""
    path = Path(path)
    page = render(model, trace, tokenizer, **kwargs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(page)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
