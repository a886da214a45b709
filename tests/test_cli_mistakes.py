"""Common user mistakes on the command line: each exits non-zero (2 for usage, 1 for a refused value)
with one clear line on stderr and no traceback, and a mistake in the arguments is caught before any
model or tokenizer is loaded."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamacpu.checkpoint.synthetic import write_synthetic
from llamacpu.cli import main

HERE = Path(__file__).resolve().parent


class Loaded(Exception):
    """Raised by the patched loaders: reaching one means the CLI started loading."""


@pytest.fixture
def no_loading(monkeypatch):
    from llamacpu.model.causal_lm import LlamaForCausalLM
    from llamacpu.tokenizer.auto import AutoTokenizer

    def refuse(*args, **kwargs):
        raise Loaded("a model or tokenizer was loaded")

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained", classmethod(lambda cls, *a, **k: refuse()))
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: refuse()))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A real checkpoint folder (weights, config) without tokenizer files."""
    return write_synthetic(tmp_path_factory.mktemp("mistakes") / "tiny", "tiny")


# (arguments, exit code, words the one line must contain); {m} is a real model folder
MISTAKES = [
    (["genrate"], 2, ["unknown command", "did you mean generate"]),
    (["generate", "{m}", "--temprature", "0.5"], 2, ["--temprature", "did you mean --temperature"]),
    (["chat", "{m}", "--sytem", "hi"], 2, ["--sytem", "did you mean --system"]),
    (["generate", "-m", "./model.gguf"], 1, ["./model.gguf", "no such file or folder"]),
    (["generate", "models/llama.gguf"], 1, ["models/llama.gguf", "no such file or folder"]),
    (["generate", "org/../escape"], 1, ["org/../escape", "no such file or folder"]),
    (["generate", "-hf"], 2, ["-hf", "expected one argument"]),
    (["generate", "{m}", "--temp", "-1"], 1, ["--temp", ">= 0"]),
    (["generate", "{m}", "--top-p", "2"], 1, ["--top-p", "(0, 1]"]),
    (["generate", "{m}", "--min-p", "1.5"], 1, ["--min-p"]),
    (["generate", "{m}", "--top-k", "-3"], 1, ["--top-k"]),
    (["generate", "{m}", "--repeat-penalty", "0"], 1, ["--repeat-penalty", "> 0"]),
    (["generate", "{m}", "-q", "q3_kx"], 1, ["q3_kx", "did you mean"]),
    (["generate", "{m}", "-t", "0"], 1, ["-t/--threads"]),
    (["generate", "{m}", "-n", "abc"], 2, ["invalid int value", "'abc'"]),
    (["generate", "{m}", "-n", "0"], 1, ["-n/--max-new-tokens"]),
    (["generate", "{m}", "-c", "0"], 1, ["-c/--ctx-size"]),
    (["generate", "{m}", "--dtype", "float8"], 2, ["float8", "did you mean", "float16"]),
    (["generate", "{m}", "-f", "/nonexistent/prompt.txt"], 1, ["/nonexistent/prompt.txt", "no such file"]),
    (["generate", "{m}", "-f", str(HERE)], 1, ["is a folder"]),
    (["generate", "{m}", "-p", "x", "-f", __file__], 1, ["-p or -f"]),
    (["generate", "{m}", "--chat", "-p", " "], 1, ["--chat needs a prompt"]),
    (["generate", "{m}", "--stop", ""], 1, ["--stop"]),
    (["generate", "{m}", "-m", "other/model"], 1, ["two models"]),
    ([], 2, ["COMMAND"]),
    (["perplexity", "{m}"], 2, ["-f/--file"]),
    (["perplexity", "{m}", "-f", __file__, "--stride", "0"], 1, ["--stride"]),
    (["embed", "-m", "{m}"], 1, ["nothing to embed"]),
    (["quantize", "{m}", "/tmp/out", "--type", "q5"], 1, ["q5", "known"]),
    (["quantize", "/nonexistent/src", "/tmp/out", "--type", "q4_0"], 1, ["/nonexistent/src", "no such"]),
    (["quantize", "{m}", "/tmp/out.gguf", "--type", "Q4_K_M", "-t", "0"], 1, ["-t/--threads"]),
    (["bench", "{m}", "--prompt-tokens", "0"], 1, ["--prompt-tokens"]),
]


@pytest.mark.parametrize("argv, code, words", MISTAKES, ids=[" ".join(m[0]) or "(nothing)" for m in MISTAKES])
def test_mistake_is_one_clear_line_before_loading(argv, code, words, folder, no_loading, capsys):
    argv = [a.replace("{m}", str(folder)) for a in argv]
    assert main(argv) == code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("llamacpu") and "error:" in lines[0]
    assert "Traceback" not in err and "loaded" not in err and out == ""
    for w in words:
        assert w in lines[0], lines[0]


def test_a_folder_without_a_tokenizer_is_refused_before_the_weights(folder, monkeypatch, capsys):
    from llamacpu.model.causal_lm import LlamaForCausalLM

    monkeypatch.setattr(LlamaForCausalLM, "from_pretrained",
                        classmethod(lambda cls, *a, **k: (_ for _ in ()).throw(Loaded("weights loaded"))))
    assert main(["generate", str(folder), "-p", "hi"]) == 1
    err = capsys.readouterr().err
    assert "tokenizer" in err.lower() and "weights loaded" not in err and len(err.strip().splitlines()) == 1


def test_too_many_threads_run_with_a_warning(folder, no_loading, capsys):
    import numba

    # past the argument checks (it reaches the patched loader), with one warning line before
    assert main(["generate", str(folder), "-p", "hi", "-t", str(numba.config.NUMBA_NUM_THREADS + 7)]) == 1
    err = capsys.readouterr().err
    assert "warning:" in err and f"running on {numba.config.NUMBA_NUM_THREADS}" in err
    assert "a model or tokenizer was loaded" in err


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(folder, monkeypatch, capsys):
    from llamacpu.cli import generate

    monkeypatch.setattr(generate, "load", lambda *a, **k: {}["boom"])
    assert main(["generate", str(folder), "-p", "hi"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "KeyError" in err and "--debug" in err
    assert main(["generate", str(folder), "-p", "hi", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


@pytest.mark.parametrize("argv, code", [(["generate", "-m", "./missing.gguf"], 1), (["genrate"], 2),
                                        (["generate", "--temp", "-1"], 1)])
def test_in_a_fresh_process_no_traceback(argv, code, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path))
    r = subprocess.run([sys.executable, "-m", "llamacpu.cli", *argv], capture_output=True, text=True,
                       env=env, timeout=120, stdin=subprocess.DEVNULL)
    assert r.returncode == code
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr and r.stdout == ""


def test_version_and_help_show_defaults_and_examples(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("llamacpu ")
    for command in ("generate", "chat", "perplexity", "embed", "quantize", "inspect", "bench"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "--debug" in text
        if command in ("generate", "chat"):
            assert "(default: 0.95)" in text and "(default: 256)" in text and "examples:" in text


@pytest.mark.parametrize("name", ["./model.gguf", "models/llama.gguf", "org/../x", "/abs/dir", "~/m", "org/model.safetensors"])
def test_the_library_never_sends_a_local_path_to_the_hub(name, monkeypatch):
    from llamacpu import CheckpointError, hub

    monkeypatch.setattr(hub, "download", lambda *a, **k: pytest.fail("sent to the Hub"))
    with pytest.raises(CheckpointError, match="no such file or folder"):
        hub.resolve_model(name)
    assert hub.could_be_repo_id("HuggingFaceTB/SmolLM2-135M-Instruct") and hub.could_be_repo_id("org/model.v2")


@pytest.mark.parametrize("bad", [None, 3, ["a"]])
def test_from_pretrained_of_a_non_path_is_a_llamacpu_error(bad):
    from llamacpu import AutoTokenizer, LlamacpuError, LlamaForCausalLM

    for load in (LlamaForCausalLM.from_pretrained, AutoTokenizer.from_pretrained):
        with pytest.raises(LlamacpuError, match="default_model"):
            load(bad)
