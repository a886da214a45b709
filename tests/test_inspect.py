"""llamacpu.inspect: traces that reproduce the logits, the logit lens, the attention-mask
visualizer, and `llamacpu inspect` run as a user runs it."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.inspect import AttentionMaskVisualizer, lens, recompute, recompute_errors, tracing
from llamacpu.inspect.compare import first_divergence
from llamacpu.inspect.trace import LAYER_STEPS
from llamacpu.inspect.visualizer import render

FIXTURES = Path(__file__).parent / "fixtures" / "parity"
PROMPT_IDS = np.array([[1, 403, 407, 261, 378]])  # stories260K: "<s> Once upon a time"


@pytest.fixture(scope="module")
def stories(shared_models):
    return LlamaForCausalLM.from_pretrained(shared_models / "stories260K")


@pytest.fixture(scope="module")
def gqa():
    return LlamaForCausalLM.from_pretrained(FIXTURES / "gqa_f16")


def fixture_case(name):
    ref = dict(np.load(FIXTURES / name / "reference.npz"))
    return LlamaForCausalLM.from_pretrained(FIXTURES / name), ref["input_ids"], ref["attention_mask"]


def check_recompute(model, ids, mask=None):
    tr = model.trace(ids, mask)
    for chain in (False, True):  # each step from the traced inputs; the whole pass from the ids alone
        errors = recompute_errors(model, tr, chain=chain)
        assert set(errors) == set(tr)
        worst = max(errors, key=errors.get)
        assert errors[worst] <= 1e-4, f"chain={chain}: {worst} differs by {errors[worst]:.2g}"
    keep = tr.attention_mask.astype(bool)  # padding positions are undefined
    logits = model(ids, attention_mask=mask).logits
    again = recompute(model, tr, chain=True)["logits"]
    assert np.abs(again[keep] - logits[keep]).max() <= 1e-4 * np.abs(logits[keep]).max()
    np.testing.assert_array_equal(tr["logits"][keep], logits[keep])


def test_trace_recomputes_logits_stories260k(stories):
    check_recompute(stories, PROMPT_IDS)


@pytest.mark.parametrize("case", ["gqa_f16", "mha_f32", "bias", "padded_batch"])
def test_trace_recomputes_logits_fixtures(case):
    check_recompute(*fixture_case(case))


def test_trace_names_and_shapes(gqa):
    cfg = gqa.config
    B, T, H, KV, hd = 2, 6, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    D, I, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    tr = gqa.trace(np.arange(B * T).reshape(B, T) % V)
    L = cfg.num_hidden_layers
    assert list(tr) == ["embed"] + [f"layers.{i}.{s}" for i in range(L) for s in LAYER_STEPS] + ["final_norm", "logits"]
    assert tr.num_layers == L and len(tr) == 3 + L * len(LAYER_STEPS)
    per_step = {"q": (B, T, H, hd), "q_rope": (B, T, H, hd), "k": (B, T, KV, hd), "k_rope": (B, T, KV, hd),
                "v": (B, T, KV, hd), "attn_scores": (B, H, T, T), "attn_probs": (B, H, T, T),
                "attn_out": (B, T, H, hd), "gate": (B, T, I), "up": (B, T, I), "act": (B, T, I)}
    shapes = tr.shapes()
    for s in LAYER_STEPS:
        assert shapes[f"layers.1.{s}"] == per_step.get(s, (B, T, D)), s
    assert shapes["embed"] == shapes["final_norm"] == (B, T, D) and shapes["logits"] == (B, T, V)
    assert all(a.dtype == np.float32 for a in tr.values())
    probs = tr["layers.0.attn_probs"]
    np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)
    assert (np.triu(probs[0, 0], 1) == 0).all()  # causal: nothing from later tokens
    assert tr.layer(1)["q_rope"] is tr["layers.1.q_rope"]
    with pytest.raises(KeyError, match="shapes"):
        tr["layers.9.q"]


def test_tracing_leaves_the_model_as_it_was(gqa):
    ids = np.array([[1, 5, 9, 14, 3]])
    before = gqa(ids).logits.copy()
    tr = gqa.trace(ids)
    assert gqa.tracer is None
    np.testing.assert_array_equal(gqa(ids).logits, before)
    np.testing.assert_array_equal(tr["logits"], before)
    with pytest.raises(Exception):
        gqa.trace([[10 ** 6]])  # a bad id is refused before anything runs
    assert gqa.tracer is None


def test_tracing_context_records_each_generation_step(gqa):
    with tracing(gqa) as rec:
        out = gqa.generate(np.array([[1, 2, 3, 4]]), max_new_tokens=3, do_sample=False)
    assert gqa.tracer is None and len(rec.traces) == 3  # the prefill, then one per decode step
    assert [t["layers.0.attn_probs"].shape[2:] for t in rec.traces] == [(4, 4), (1, 5), (1, 6)]
    assert [int(t["logits"].argmax()) for t in rec.traces] == out[0, 4:].tolist()


def test_logit_lens_ends_at_the_models_output(stories):
    tr = stories.trace(PROMPT_IDS)
    L, T = tr.num_layers, PROMPT_IDS.shape[1]
    lens_logits = lens.logit_lens(stories, tr)  # [L + 1, B, vocab]
    assert lens_logits.shape == (L + 1, 1, stories.config.vocab_size)
    np.testing.assert_allclose(lens_logits[-1, 0], tr["logits"][0, -1], rtol=1e-4, atol=1e-4)
    ent = lens.attention_entropy(tr)
    assert ent.shape == (L, stories.config.num_attention_heads)
    assert (ent >= 0).all() and (ent <= np.log2(T)).all()
    assert lens.residual_norms(tr).shape == (L + 1,) and lens.update_norms(tr).shape == (L, 2)


def test_first_divergence_names_the_first_changed_tensor(gqa):
    tr = gqa.trace(np.array([[1, 2, 3]]))
    reference = {n: a.copy() for n, a in tr.items() if not n.endswith(("_rope", "attn_scores"))}
    assert first_divergence(tr, reference)[0] is None
    reference["layers.1.up"] *= 1.01
    reference["final_norm"] += 1
    name, err, _ = first_divergence(tr, reference)
    assert name == "layers.1.up" and err == pytest.approx(0.01 / 1.01, rel=1e-3)


# ---- the attention-mask visualizer --------------------------------------------------------------------

CAUSAL_4 = """\
■: may attend   ⬚: masked (causal: later tokens; padding: pad tokens)
            0 1 2 3
'<s>'   : 0 ■ ⬚ ⬚ ⬚
'▁Once' : 1 ■ ■ ⬚ ⬚
'▁upon' : 2 ■ ■ ■ ⬚
'▁a'    : 3 ■ ■ ■ ■"""

LEFT_PADDED = """\
■: may attend   ⬚: masked (causal: later tokens; padding: pad tokens)
row 0
          0 1 2
'<s>' : 0 ■ ⬚ ⬚
'▁a'  : 1 ■ ■ ⬚
'▁b'  : 2 ■ ■ ■
row 1 (2 padding)
            0 1 2
'<pad>' : 0 ⬚ ⬚ ⬚
'<pad>' : 1 ⬚ ⬚ ⬚
'<s>'   : 2 ⬚ ⬚ ■"""


def test_visualizer_causal_mask():
    assert render([["<s>", "▁Once", "▁upon", "▁a"]], [[1, 1, 1, 1]]) == CAUSAL_4


def test_visualizer_left_padded_batch():
    tokens = [["<s>", "▁a", "▁b"], ["<pad>", "<pad>", "<s>"]]
    assert render(tokens, [[1, 1, 1], [0, 0, 1]]) == LEFT_PADDED


def test_visualizer_two_digit_positions_and_color():
    text = render([[f"t{i}" for i in range(11)]], [[1] * 11], color=True)
    lines = text.splitlines()
    assert lines[1].rstrip().endswith("1") and lines[2].endswith("0 1 2 3 4 5 6 7 8 9 0")
    assert lines[-1].startswith("'t10' : 10 ■") and "\033[92m■\033[0m" in lines[-1]


def test_visualizer_with_a_tokenizer_pads_on_the_left(shared_models, stories):
    from llamacpu.tokenizer.auto import AutoTokenizer

    vis = AttentionMaskVisualizer(AutoTokenizer.from_pretrained(shared_models / "stories260K"), stories)
    ids, mask, tokens = vis.encode(["Once upon a time", "Once"])
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 1, 1]]
    assert tokens[1] == ["<pad>", "<pad>", "<pad>", "<s>", "▁Once"]
    assert vis.render("Once upon a") == CAUSAL_4


def test_visualizer_heatmaps(tmp_path, gqa):
    pytest.importorskip("matplotlib")
    from llamacpu.inspect.visualizer import save_heatmaps

    tr = gqa.trace(np.array([[1, 2, 3, 4]]))
    paths = save_heatmaps(tr, [["a", "b", "c", "d"]], tmp_path)
    assert [p.name for p in paths] == ["layer_00.png", "layer_01.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


# ---- `llamacpu inspect` as a user runs it -------------------------------------------------------------

def inspect_cli(*args, stdin=""):
    return subprocess.run([sys.executable, "-m", "llamacpu.cli", "inspect", *args], input=stdin,
                          capture_output=True, text=True, timeout=120)


def test_inspect_cli_names_every_layer(shared_models):
    r = inspect_cli(str(shared_models / "stories260K"), "--prompt", "Once upon a time")
    assert r.returncode == 0, r.stderr
    rows = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("layer ")]
    assert rows == ["0", "1", "2", "3", "4"]
    assert "' Once'" in r.stdout and "'▁Once'" not in r.stdout and "next token: ','" in r.stdout


def test_inspect_cli_step_with_piped_stdin(shared_models):
    # two Enters, then end of input: it pauses twice, then runs on to the end
    r = inspect_cli(str(shared_models / "stories260K"), "--prompt", "Once upon a time", "--step", stdin="\n\n")
    assert r.returncode == 0, r.stderr
    assert [f"layer {i} moved the residual" in r.stdout for i in range(5)] == [True] * 5
    assert r.stdout.count("lens gained:") == 5 and "next token:" in r.stdout
    assert r.stderr.count("[Enter") == 3


@pytest.mark.skipif(all(importlib.util.find_spec(m) for m in ("torch", "transformers")),
                    reason="torch and transformers are installed: the comparison would run")
def test_inspect_cli_compare_transformers_without_torch():
    r = inspect_cli(str(FIXTURES / "gqa_f16"), "--compare-transformers")
    assert r.returncode == 1
    assert "needs torch and transformers" in r.stderr and "pip install" in r.stderr
