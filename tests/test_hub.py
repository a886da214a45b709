"""Hugging Face repo ids resolve through huggingface_hub's standard cache, offline, against a cache
folder built here (the Hub itself is never contacted)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "mha_f32"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

SCRIPT = """
import sys
import numpy as np
from llamacpu import LlamaForCausalLM, CheckpointError
from llamacpu.hub import resolve_model
path = resolve_model(sys.argv[1])
print("resolved", path)
m = LlamaForCausalLM.from_pretrained(path)
print("logits", m(np.array([[1, 2, 3]])).logits.shape)
try:
    resolve_model("someone/not-cached")
except CheckpointError as e:
    print("error", e)
"""


def build_cache(root: Path, repo: str):
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    folder = root / ("models--" + repo.replace("/", "--"))
    snap = folder / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in FIXTURE.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            shutil.copy(f, snap / f.name)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)


def run(tmp_path, *args):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    return subprocess.run([sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def test_repo_id_resolves_offline_from_the_cache(tmp_path):
    build_cache(tmp_path / "hub", "llamacpu-test/tiny")
    out = run(tmp_path, "llamacpu-test/tiny")
    assert out.returncode == 0, out.stderr
    assert f"snapshots/{COMMIT}" in out.stdout
    assert "logits (1, 3, 128)" in out.stdout
    # offline and not cached: one clear message naming the repo and what to do, no network traceback
    error = [l for l in out.stdout.splitlines() if l.startswith("error")][0]
    assert "someone/not-cached" in error and "HF_HUB_OFFLINE" in error
    assert "Traceback" not in out.stderr


def test_revision_suffix_and_cli_message(tmp_path):
    build_cache(tmp_path / "hub", "llamacpu-test/tiny")
    out = run(tmp_path, f"llamacpu-test/tiny@{COMMIT}")
    assert out.returncode == 0, out.stderr
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    cli = subprocess.run([sys.executable, "-m", "llamacpu.cli", "generate", "nobody/nothing", "-n", "2"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 1
    assert "nobody/nothing" in cli.stderr and "Traceback" not in cli.stderr


def test_repo_colon_quant_picks_the_matching_gguf(tmp_path, llama3_gguf):
    """org/name:Q4_K_M (llama.cpp's -hf form) picks that file of a GGUF repository, case-insensitively;
    a split model's first part; a missing quantization is one clear error listing what is there."""
    from llamacpu.hub import pick_gguf

    names = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m.q8_0.gguf", "big/m-Q5_K_M-00002-of-00002.gguf",
             "big/m-Q5_K_M-00001-of-00002.gguf"]
    assert pick_gguf(names, "Q4_K_M") == "m-Q4_K_M.gguf"
    assert pick_gguf(names, "q8_0") == "m.q8_0.gguf"
    assert pick_gguf(names, "Q5_K_M") == "big/m-Q5_K_M-00001-of-00002.gguf"
    assert pick_gguf(names, "Q4_K") is None and pick_gguf(names, "Q6_K") is None

    folder = tmp_path / "hub" / "models--llamacpu-test--gguf"
    snap = folder / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(COMMIT)
    llama3 = llama3_gguf
    shutil.copy(llama3, snap / "tiny-Q8_0.gguf")
    shutil.copy(llama3, snap / "tiny-F32.gguf")

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"))
    code = ("from llamacpu.hub import resolve_model; from llamacpu import CheckpointError\n"
            "print(resolve_model('llamacpu-test/gguf:q8_0').name)\n"
            "from llamacpu import LlamaForCausalLM\n"
            "m = LlamaForCausalLM.from_pretrained('llamacpu-test/gguf:Q8_0')\n"
            "print(m.config.eos_token_ids[-1] == 280 and m.name_or_path == 'llamacpu-test/gguf:Q8_0')\n"
            "try:\n    resolve_model('llamacpu-test/gguf:Q2_K')\nexcept CheckpointError as e:\n    print('error', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "tiny-Q8_0.gguf"
    assert lines[1] == "True"  # from_pretrained takes the same form
    assert lines[2].startswith("error") and "Q2_K" in lines[2]
    # the CLI takes the same form as MODEL and as llama.cpp's -hf, through the same resolver
    replies = []
    for how in ([str(snap / "tiny-Q8_0.gguf")], ["-hf", "llamacpu-test/gguf:Q8_0"], ["llamacpu-test/gguf:q8_0"]):
        cli = subprocess.run([sys.executable, "-m", "llamacpu.cli", "generate", *how, "-p", "Hello", "-n", "3",
                              "--temp", "0", "--ignore-eos", "--quiet", "--no-echo"],
                             capture_output=True, text=True, env=env, timeout=300)
        assert cli.returncode == 0, cli.stderr
        replies.append(cli.stdout)
    assert replies[0].strip() and replies[1] == replies[0] and replies[2] == replies[0]  # the same file
    cli = subprocess.run([sys.executable, "-m", "llamacpu.cli", "generate", "-hf", "llamacpu-test/gguf:Q2_K", "-n", "1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert cli.returncode == 1 and "Q2_K" in cli.stderr and "Traceback" not in cli.stderr


def test_repo_spec_parts():
    from llamacpu.hub import split_repo_spec

    assert split_repo_spec("org/name") == ("org/name", None, None)
    assert split_repo_spec("org/name:Q4_K_M") == ("org/name", None, "Q4_K_M")
    assert split_repo_spec("org/name@v1") == ("org/name", "v1", None)
    assert split_repo_spec("org/name@v1:q8_0") == ("org/name", "v1", "q8_0")
    assert split_repo_spec("org/name:Q8_0@v1") == ("org/name", "v1", "Q8_0")
    assert split_repo_spec("model:v2") == ("model:v2", None, None)  # no "/" before the colon: not a quant suffix
