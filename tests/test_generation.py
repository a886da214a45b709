"""Generation on the real stories260K model: each parameter's effect, streaming, stop strings,
errors, the golden text through the API and the CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from llamacpu import InputError, LlamaForCausalLM
from llamacpu.generation.pipeline import pipeline
from llamacpu.generation.stream import TextGeneration, TextStreamer, stream
from llamacpu.tokenizer.llama import LlamaTokenizer


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path), LlamaTokenizer.from_pretrained(path), path


@pytest.fixture(scope="module")
def golden(shared_models):
    d = shared_models / "stories260K"
    return json.loads((d / "golden.json").read_text()), (d / "golden.txt").read_text()


PROMPT = "Once upon a time, there was a little dog"


def test_golden_ids_through_the_api(stories, golden):
    model, tok, _ = stories
    ids = model.generate(np.array([[1]]), max_new_tokens=256, do_sample=False)
    assert ids[0].tolist() == golden[0]["ids"]
    assert tok.decode(ids[0, 1:]) == golden[1].rstrip("\n")


def test_golden_text_through_the_cli(stories, golden):
    _, _, path = stories
    out = subprocess.run([sys.executable, "-m", "llamacpu.cli", "generate", str(path), "--prompt", "",
                          "--max-new-tokens", "256", "--temperature", "0"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout == golden[1].rstrip("\n")  # piped: the text exactly, no added newline
    assert "generation 256 tokens at" in out.stderr  # the closing speed line


def gen(model, tok, **kw):
    ids = np.array([tok.encode(PROMPT)])
    return model.generate(ids, **kw)[0, ids.shape[1]:]


def test_greedy_equals_top_k_1_and_cold_temperature(stories):
    model, tok, _ = stories
    greedy = gen(model, tok, max_new_tokens=40)
    np.testing.assert_array_equal(gen(model, tok, max_new_tokens=40, do_sample=True, top_k=1, seed=3), greedy)
    np.testing.assert_array_equal(gen(model, tok, max_new_tokens=40, do_sample=True, temperature=1e-4, seed=5), greedy)
    np.testing.assert_array_equal(gen(model, tok, max_new_tokens=40, do_sample=True, temperature=0), greedy)


def test_seed_reproduces_and_seeds_differ(stories):
    model, tok, _ = stories
    a = gen(model, tok, max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0, seed=1)
    b = gen(model, tok, max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0, seed=1)
    c = gen(model, tok, max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_reproduces_across_processes_and_threads(stories):
    _, _, path = stories
    code = ("import numpy as np, sys; from llamacpu import LlamaForCausalLM, set_num_threads;"
            "set_num_threads(int(sys.argv[2])); m = LlamaForCausalLM.from_pretrained(sys.argv[1]);"
            "print(m.generate(np.array([[1, 403]]), max_new_tokens=30, do_sample=True, seed=11,"
            " temperature=0.9)[0].tolist())")
    outs = {n: subprocess.run([sys.executable, "-c", code, str(path), str(n)], capture_output=True, text=True,
                              timeout=300).stdout for n in (1, 2)}
    assert outs[1] == outs[2] and outs[1].startswith("[")


def test_top_p_and_min_p_narrow_the_choice(stories):
    """With a tiny nucleus or a strict min-p, sampling can only pick the top token: greedy."""
    model, tok, _ = stories
    greedy = gen(model, tok, max_new_tokens=30)
    for kw in ({"top_p": 1e-6}, {"min_p": 1.0}):
        np.testing.assert_array_equal(gen(model, tok, max_new_tokens=30, do_sample=True, top_k=0, seed=9, **kw), greedy)


def test_repetition_penalty_lowers_repeats(stories):
    model, tok, _ = stories
    def repeats(ids):
        return len(ids) - len(set(ids.tolist()))
    plain = gen(model, tok, max_new_tokens=120)
    penalised = gen(model, tok, max_new_tokens=120, repetition_penalty=1.5)
    assert repeats(penalised) < repeats(plain)


def test_eos_stops_and_several_eos_ids(stories):
    model, tok, _ = stories
    greedy = gen(model, tok, max_new_tokens=30)
    stop_id = int(greedy[5])
    out = gen(model, tok, max_new_tokens=30, eos_token_id=[999999 % 512, stop_id])
    assert out[-1] == stop_id and len(out) == list(greedy).index(stop_id) + 1


def test_stop_strings_cut_exactly(stories):
    model, tok, _ = stories
    full = "".join(stream(model, tok, PROMPT, max_new_tokens=60))
    stop = full[10:14]
    cut = "".join(stream(model, tok, PROMPT, max_new_tokens=60, stop_strings=[stop, "zzzz"]))
    assert cut == full[: full.index(stop) + len(stop)]
    ids = model.generate(np.array([tok.encode(PROMPT)]), max_new_tokens=60, stop_strings=[stop], tokenizer=tok)
    assert stop in tok.decode(ids[0, len(tok.encode(PROMPT)):]) and ids.shape[1] < len(tok.encode(PROMPT)) + 60
    out = pipeline("text-generation", model=model, tokenizer=tok)(PROMPT, max_new_tokens=60, stop_strings=[stop],
                                                                  do_sample=False)  # greedy, as `stream` is
    assert out == [{"generated_text": PROMPT + cut}]


def test_streaming_pieces_join_to_the_full_text(stories):
    model, tok, _ = stories
    ids = tok.encode(PROMPT)
    pieces = list(TextGeneration(model, tok).stream(ids, max_new_tokens=80, do_sample=True, seed=4))
    full = model.generate(np.array([ids]), max_new_tokens=80, do_sample=True, seed=4)[0]
    assert "".join(pieces) == tok.decode(full, skip_special_tokens=True)[len(PROMPT):]
    assert len(pieces) > 10 and not any("\ufffd" in p for p in pieces)


def test_text_streamer_callback(stories):
    model, tok, _ = stories
    got = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            got.append(text)

    ids = model.generate(np.array([tok.encode(PROMPT)]), max_new_tokens=20, streamer=Collect(tok, skip_prompt=True))
    assert "".join(got) == tok.decode(ids[0], skip_special_tokens=True)[len(PROMPT):]


def test_batched_left_padded_generation_equals_single(stories):
    model, tok, _ = stories
    prompts = ["Once upon a time", "The cat sat on the mat and"]
    tok.pad_token = tok.unk_token
    tok.padding_side = "left"
    enc = tok(prompts, padding=True, return_tensors="np")
    batch = model.generate(enc["input_ids"], attention_mask=enc["attention_mask"], max_new_tokens=20)
    for b, p in enumerate(prompts):
        single = model.generate(np.array([tok.encode(p)]), max_new_tokens=20)[0]
        np.testing.assert_array_equal(batch[b, -20:], single[-20:])


@pytest.mark.parametrize("kw", [
    {"temperature": -1.0}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"max_new_tokens": -1},
    {"min_p": 2.0}, {"repetition_penalty": 0.0}, {"seed": -3}, {"stop_strings": [""]},
    {"eos_token_id": "x"}, {"temperature": float("nan")}, {"bogus": 1},
])
def test_invalid_parameters_raise_value_error(stories, kw):
    model, tok, _ = stories
    with pytest.raises(ValueError):
        model.generate(np.array([[1]]), do_sample=True, **kw)
    with pytest.raises(InputError):
        list(stream(model, tok, "Hi", do_sample=True, **kw))


def test_pipeline_returns_prompt_and_continuation(stories):
    model, tok, path = stories
    pipe = pipeline("text-generation", model=str(path))
    out = pipe(PROMPT, max_new_tokens=20, do_sample=False)
    assert out[0]["generated_text"].startswith(PROMPT) and len(out[0]["generated_text"]) > len(PROMPT)
    a = pipe(PROMPT, max_new_tokens=20, do_sample=True, seed=7)
    assert a == pipe(PROMPT, max_new_tokens=20, do_sample=True, seed=7)
