"""`llamacpu chat` in a pseudo-terminal, driven key by key with pexpect as a person would type: line
editing and history, multi-line messages, type-ahead while a reply streams, the length marker, context
shift, /save and /load, Ctrl-C mid-reply. Every check reads the conversation back with /save (what the
model was really sent), not just the screen. stories260K with greedy sampling keeps each test to seconds."""
import json
import os
import signal
import sys

import pytest

from llamacpu import LlamaForCausalLM
from llamacpu.generation.chat import ChatSession
from llamacpu.tokenizer.llama import LlamaTokenizer

pexpect = pytest.importorskip("pexpect")

PROMPT = r"\x1b\[\?2004h"  # prompt_toolkit turns bracketed paste on as each prompt starts
SPEED = r"generation \d+ tokens at"  # the speed line closes every reply
LEFT, UP, ESC_ENTER = "\x1b[D", "\x1b[A", "\x1b\r"


@pytest.fixture(scope="module")
def model_path(shared_models):
    return shared_models / "stories260K"


def sigint_default():
    """In the child: SIGINT back to its default, so Python installs its KeyboardInterrupt handler even when the
    test suite itself was started with SIGINT ignored (a background job of a shell without job control)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn(path, tmp_path, *flags, colour=False):
    env = dict(os.environ, TERM="xterm", PROMPT_TOOLKIT_NO_CPR="1")
    env.pop("NO_COLOR", None)
    if not colour:
        env["NO_COLOR"] = "1"
    child = pexpect.spawn(sys.executable, ["-m", "llamacpu.cli", "chat", str(path), "--temp", "0",
                                           "--history-file", str(tmp_path / "history"), *flags],
                          encoding="utf-8", timeout=120, env=env, dimensions=(40, 200), preexec_fn=sigint_default)
    child.expect(PROMPT)
    return child


def say(child, keys):
    """Send keys, wait for the reply's speed line and the next prompt; -> everything shown meanwhile."""
    child.send(keys)
    child.expect(SPEED)
    shown = child.before
    child.expect(PROMPT)
    return shown


def saved(child, path):
    child.send(f"/save {path}\r")
    child.expect("saved")
    child.expect(PROMPT)
    return json.loads(path.read_text())["messages"]


def finish(child):
    child.send("/exit\r")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_line_editing_history_and_the_length_marker(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "6")
    shown = say(child, "Hello wrld" + LEFT * 3 + "o\r")  # cursor back over "rld", insert the missing "o"
    assert "[reply cut at the 6-token limit" in shown  # -n 6 stops every reply mid-way, and says so
    say(child, UP + "\r")  # Up recalls the previous message
    say(child, "Bye" + UP + UP + "\r")  # Up from a typed line walks history (the line is replaced)
    messages = saved(child, tmp_path / "c.json")
    finish(child)
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Hello world"] * 3
    assert "Hello world" in (tmp_path / "history").read_text()  # kept for the next session


def test_multiline_input_three_ways(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "4")
    say(child, '"""\r' + "first line\r" + "second line\r" + '"""\r')  # an Ollama-style block
    say(child, "one" + ESC_ENTER + "two\r")  # Esc Enter inserts a new line
    say(child, "\x1b[200~pasted one\npasted two\x1b[201~" + "\r")  # bracketed paste: one message
    users = [m["content"] for m in saved(child, tmp_path / "c.json") if m["role"] == "user"]
    finish(child)
    assert users == ["first line\nsecond line", "one\ntwo", "pasted one\npasted two"]


def test_type_ahead_during_a_reply_is_discarded(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "250", "--ignore-eos")
    # keys typed in the same burst as Enter, and keys typed once the reply is streaming
    child.send("Tell me a story.\rtyped too early\r")
    child.expect(r"\x1b\[K")  # the thinking marker is erased: the first piece is out
    child.send("typed while streaming\r")
    child.expect(SPEED)
    reply_screen = child.before
    child.expect(PROMPT)
    say(child, "And then?\r")
    messages = saved(child, tmp_path / "c.json")
    finish(child)
    assert [m["content"] for m in messages if m["role"] == "user"] == ["Tell me a story.", "And then?"]
    assert "typed" not in reply_screen  # not echoed into the reply either
    assert "typed" not in messages[1]["content"]


def test_ctrl_c_stops_a_reply_then_a_normal_turn(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "400", "--ignore-eos")
    child.send("Tell me a long story.\r")
    child.expect(r"\x1b\[K")  # streaming
    child.sendintr()
    child.expect(r"\[stopped\]")
    child.expect(r"generation (\d+) tokens at")  # the speed line of the part that was generated
    assert 0 < int(child.match.group(1)) < 400
    child.expect(PROMPT)
    child.sendline("/reset")
    child.expect(PROMPT)
    shown = say(child, "Hi\r")
    messages = saved(child, tmp_path / "c.json")
    finish(child)
    assert "[stopped]" not in shown
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert len(messages[1]["content"]) > 100  # the turn after Ctrl-C ran to its full length


def test_context_shift_keeps_the_system_prompt(model_path, tmp_path):
    system = "You tell stories about cats."
    child = spawn(model_path, tmp_path, "-c", "128", "-n", "16", "--system", system)
    shown = "".join(say(child, f"{q}\r") for q in ["Tell me a story.", "What did the dog do?", "Who is Lily?"])
    messages = saved(child, tmp_path / "c.json")
    finish(child)
    assert "[context full: dropped the oldest 1 turn, kept the system prompt]" in shown
    assert messages[0] == {"role": "system", "content": system}
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[0] != "Tell me a story." and users[-1] == "Who is Lily?"  # the oldest turn went

    # the reply after the shift is what the model says to [system, kept turns, question]; without the
    # system prompt it would have said something else: the system prompt still steers the reply
    model = LlamaForCausalLM.from_pretrained(model_path, max_context=128)
    tok = LlamaTokenizer.from_pretrained(model_path)
    fresh = ChatSession(model, tok, system=system, max_new_tokens=16, do_sample=False)
    fresh.messages = messages[:-2]
    assert "".join(fresh.send(users[-1])) == messages[-1]["content"]
    bare = ChatSession(model, tok, max_new_tokens=16, do_sample=False)
    bare.messages = messages[1:-2]
    assert "".join(bare.send(users[-1])) != messages[-1]["content"]


def test_save_then_load_in_a_new_session(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "8", "--system", "Be brief.")
    say(child, "Tell me a story.\r")
    say(child, "What happened next?\r")
    first = saved(child, tmp_path / "a.json")
    finish(child)

    child = spawn(model_path, tmp_path, "-n", "8")
    child.send(f"/load {tmp_path / 'a.json'}\r")
    child.expect("loaded 5 messages")
    child.expect(PROMPT)
    assert saved(child, tmp_path / "b.json") == first  # the round trip is exact
    say(child, "And then?\r")
    after = saved(child, tmp_path / "c.json")
    finish(child)
    assert after[:5] == first and after[5] == {"role": "user", "content": "And then?"}
    # the reply continues the loaded conversation exactly as an unbroken session would
    model = LlamaForCausalLM.from_pretrained(model_path)
    tok = LlamaTokenizer.from_pretrained(model_path)
    session = ChatSession(model, tok, max_new_tokens=8, do_sample=False)
    session.load(tmp_path / "a.json")
    assert "".join(session.send("And then?")) == after[6]["content"]


def test_colour_on_a_terminal_unless_no_color(model_path, tmp_path):
    child = spawn(model_path, tmp_path, "-n", "2", colour=True)
    shown = say(child, "Hi\r")
    finish(child)
    assert "\x1b[2m" in shown  # the dim thinking marker and notices
    child = spawn(model_path, tmp_path, "-n", "2")  # NO_COLOR=1
    shown = say(child, "Hi\r")
    finish(child)
    assert "\x1b[2m" not in shown and "thinking" in shown
