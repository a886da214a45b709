"""Every script in examples/ (examples/transformers/ included) runs as a newcomer runs it from a fresh
clone: copied into a folder with no ../shared beside it, so models come from the embedded
SmolLM2-135M-Instruct (llamacpu.default_model())."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# script -> (stdin, what its output must show); a script not listed must run with no input and exit 0
EXPECT = {
    "chat.py": (None, ["assistant:", "reused"]),
    "embed_in_app.py": ("What is 2+2?\nName a color.\n", ["Q: What is 2+2?", "Q: Name a color."]),
    "inspect_html.py": (None, ["tokens -> pass.html", "open it in a browser"]),
    "generate.py": (None, ["greedy:  The three primary colors are", "sampled: The three primary colors are"]),
    "pipeline.py": (None, ["generated_text", "Once upon a time"]),
    "stream.py": (None, ["prompt tokens at"]),
    "walkthrough_stories260k.py": (None, ["layer 29:", "max |ours - engine| / max |engine|"]),
    # the transformers docs' snippets with only the import changed
    "transformers/automodel.py": (None, ["Plants create energy through a process known as"]),
    "transformers/pipeline.py": (None, ["generated_text", "Plants create energy through a process known as"]),
    "transformers/int4_g128.py": (None, ["Plants create energy", "formats:", "'int4_g128'"]),
    "transformers/chat_cli.sh": ("What is 2+2?\n", ["> "]),
}
SCRIPTS = sorted(str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.suffix in (".py", ".sh"))


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory):
    root = tmp_path_factory.mktemp("clone") / "llamacpu"
    shutil.copytree(EXAMPLES, root / "examples")
    assert not (root.parent / "shared").exists()
    try:
        import llamacpu

        llamacpu.default_model()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"the embedded default model is not installed ({e}); make test installs it")
    return root


@pytest.mark.parametrize("script", SCRIPTS)
def test_example_runs_from_a_fresh_clone(script, fresh_clone):
    stdin, words = EXPECT.get(script, (None, []))
    # shell scripts find `python` and `llamacpu` on PATH, as in an activated venv
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    cmd = ["sh" if script.endswith(".sh") else sys.executable, f"examples/{script}"]
    r = subprocess.run(cmd, cwd=fresh_clone, input=stdin, env=env,
                       stdin=subprocess.DEVNULL if stdin is None else None,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    for w in words:
        assert w in r.stdout, r.stdout[-2000:]
    if script.endswith("chat_cli.sh"):  # the REPL answered the question before stdin ended
        answer = r.stdout.split("> ", 1)[1].split("\n> ")[0]
        assert len(answer.strip()) > 5, r.stdout[-2000:]
    if script == "embed_in_app.py":
        answers = [line for line in r.stdout.splitlines() if line.startswith("A: ")]
        assert len(answers) == 2 and all(len(a) > 5 for a in answers)
