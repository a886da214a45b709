"""`llamacpu generate` as a script uses it: piped stdout is exactly the answer, prompts from -f FILE and
from stdin, Ctrl-C still prints the speed line, `embed` and `perplexity` end to end."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.generation.stream import TextGeneration
from llamacpu.model.pooling import embed
from llamacpu.tokenizer.llama import LlamaTokenizer


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path), LlamaTokenizer.from_pretrained(path), path


def cli(*args, stdin=None, **kw):
    return subprocess.run([sys.executable, "-m", "llamacpu.cli", *map(str, args)], input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=300, **kw)


def expected_answer(stories, question, n, chat=True):
    model, tok, _ = stories
    ids = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True) \
        if chat else tok.encode(question)
    return "".join(TextGeneration(model, tok).stream(ids, max_new_tokens=n, do_sample=False))


def test_piped_stdout_is_exactly_the_answer(stories):
    path = stories[2]
    r = cli("generate", path, "--chat", "-p", "Tell me a story.", "-n", "24", "--temp", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer(stories, "Tell me a story.", 24)
    assert "checking weights" not in r.stderr + r.stdout  # no progress bar when nobody watches
    assert r.stderr.strip().splitlines()[-1].startswith("llamacpu: prompt ")  # the speed line, on stderr


def test_prompt_from_stdin_and_from_a_file(stories, tmp_path):
    path = stories[2]
    want = expected_answer(stories, "Once upon a time", 16)
    r = cli("generate", path, "--chat", "-n", "16", "--temp", "0", stdin="Once upon a time")
    assert r.returncode == 0, r.stderr
    assert r.stdout == want
    (tmp_path / "q.txt").write_text("Once upon a time")
    r = cli("generate", path, "--chat", "-f", tmp_path / "q.txt", "-n", "16", "--temp", "0")
    assert r.stdout == want
    # without --chat, piped: the continuation only (the prompt is echoed on a terminal alone)
    r = cli("generate", path, "-n", "16", "--temp", "0", stdin="Once upon a time")
    assert r.stdout == expected_answer(stories, "Once upon a time", 16, chat=False)


def test_an_empty_pipe_with_chat_is_refused(stories):
    r = cli("generate", stories[2], "--chat", "-n", "4", stdin="")
    assert r.returncode == 1 and "--chat needs a prompt" in r.stderr and r.stdout == ""


def test_ctrl_c_ends_the_line_and_prints_the_speed_line(stories):
    proc = subprocess.Popen([sys.executable, "-m", "llamacpu.cli", "generate", str(stories[2]), "-p", "Once",
                             "-n", "450", "--temp", "0", "--ignore-eos"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # even if the suite
    # runs with SIGINT ignored (a background job of a shell without job control): Python then handles it
    first = proc.stdout.read(8)  # the reply is streaming
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert first and proc.returncode == 130
    assert out.endswith("\n")  # the interrupted text is not left open
    lines = err.strip().splitlines()
    assert "(interrupted)" in lines[-2] and "generation" in lines[-2] and lines[-1] == "llamacpu: interrupted"


def test_embed_cli_matches_the_library(stories):
    model, tok, path = stories
    r = cli("embed", path, "a cat", "a dog", "--json", "--pooling", "last")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    got = np.array([d["embedding"] for d in out["data"]], np.float32)
    np.testing.assert_allclose(got, embed(model, tok, ["a cat", "a dog"], pooling="last"), rtol=1e-5, atol=1e-6)
    r = cli("embed", path, "a cat")
    assert len(r.stdout.splitlines()) == 1 and len(r.stdout.split()) == model.config.hidden_size
