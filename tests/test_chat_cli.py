"""`llamacpu chat` driven as a user would: piped stdin and a pseudo-terminal, two turns and /reset;
the second turn reuses the cached first turn instead of recomputing it."""
import os
import subprocess
import sys

import numpy as np
import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.generation.chat import ChatSession
from llamacpu.tokenizer.llama import LlamaTokenizer


@pytest.fixture(scope="module")
def stories(shared_models):
    path = shared_models / "stories260K"
    return LlamaForCausalLM.from_pretrained(path), LlamaTokenizer.from_pretrained(path), path


def test_second_turn_reuses_the_first(stories):
    model, tok, _ = stories
    chat = ChatSession(model, tok, system="You tell stories.", max_new_tokens=12, do_sample=False)
    first = "".join(chat.send("Tell me about a cat."))
    assert chat.reused_tokens == 0 and chat.prefilled_tokens > 10
    first_prompt = chat.prefilled_tokens
    second = "".join(chat.send("And then?"))
    assert first and second
    # everything before the new user message was in the cache: only the new turn was computed
    assert chat.reused_tokens >= first_prompt
    whole = tok.apply_chat_template(chat.messages[:-1], add_generation_prompt=True)
    assert chat.reused_tokens + chat.prefilled_tokens == len(whole)


def test_reused_cache_gives_the_same_reply_as_a_fresh_run(stories):
    model, tok, _ = stories
    chat = ChatSession(model, tok, max_new_tokens=10, do_sample=False)
    "".join(chat.send("Hi"))
    reply = "".join(chat.send("Tell me more"))
    fresh = ChatSession(model, tok, max_new_tokens=10, do_sample=False)
    fresh.messages = list(chat.messages[:-2])
    again = "".join(fresh.send("Tell me more"))
    assert again == reply


def test_interrupted_reply_keeps_the_session(stories):
    model, tok, _ = stories
    chat = ChatSession(model, tok, max_new_tokens=30, do_sample=False)
    gen = chat.send("Once upon a time")
    next(gen)
    gen.close()  # what Ctrl-C does to the loop: the generator stops mid-reply
    assert chat.messages[-1]["role"] == "assistant"
    assert "".join(chat.send("Go on"))  # still usable


def run_chat(path, stdin_text):
    return subprocess.run([sys.executable, "-m", "llamacpu.cli", "chat", str(path), "--temp", "0", "-n", "16"],
                          input=stdin_text, capture_output=True, text=True, timeout=300)


def test_chat_cli_piped_two_turns_and_reset(stories):
    _, _, path = stories
    out = run_chat(path, "Tell me a story.\nWhat happened next?\n/reset\nHello\n/exit\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("> ") >= 4
    assert "(conversation reset)" in out.stdout
    speed = [l for l in out.stderr.splitlines() if "generation" in l and "reused" in l]
    assert len(speed) == 3
    reused = [int(l.split("reused ")[1].split()[0]) for l in speed]
    # turn 2 reuses turn 1; after /reset only the template's opening tokens can match
    assert reused[0] == 0 and reused[1] > 20 and reused[2] < 12


def test_chat_cli_in_a_pseudo_terminal(stories, tmp_path):
    pexpect = pytest.importorskip("pexpect")
    _, _, path = stories
    env = dict(os.environ, PYTHONUNBUFFERED="1", TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1", NO_COLOR="1")
    child = pexpect.spawn(sys.executable, ["-m", "llamacpu.cli", "chat", str(path), "--temp", "0", "-n", "8",
                                           "--history-file", str(tmp_path / "h")],
                          encoding="utf-8", timeout=120, env=env)
    child.expect(r"\x1b\[\?2004h")  # the line editor is up (tests/test_chat_terminal.py drives it key by key)
    child.send("Tell me a story.\r")
    child.expect("generation 8 tokens")
    child.expect(r"\x1b\[\?2004h")
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
