"""llamacpu against llama.cpp and transformers, on this machine, in one run: `make bench`.

    .venv/bin/python bench/run.py [--shapes tinyllama-1.1b,llama-2-7b] [--formats f16,q8_0,q4_0,q4_k,int4_g128]
        [--prompt-tokens 128,512] [--new-tokens 64,256] [--threads N] [--peers llamacpp,transformers]
        [--peer-python PATH] [--json FILE] [--workdir bench/out] [--plot FILE] [--quick]

What happens (see bench/README.md for a full run and its reading):
  1. Model files (checkpoints.py), made once and kept in --workdir: random weights in the real shapes,
     F16 safetensors, llamacpu quantized checkpoints, and GGUF files of the same tensors for llama.cpp.
  2. Memory bandwidth (bandwidth.py), at the start and at the end of the run.
  3. For every shape and format, each in a fresh process (measure.py): llamacpu on its checkpoint,
     llama.cpp (llama-cpp-python) on the GGUF file, transformers (fp32 and bf16) on the F16 folder.
     Peers run under --peer-python (another venv), so torch and llama_cpp never enter .venv; a peer
     that does not import there is skipped with a note. Same threads, prompts and token counts.
  4. Cold versus warm start of llamacpu: the Numba cache of these runs lives in WORKDIR/numba-cache
     (NUMBA_CACHE_DIR), so it can be emptied without touching the package's own cache, which other
     processes use. Per format: emptied, one start-up process (cold: kernels compile), then the
     measurement process (warm: kernels load from the cache).
  5. Logit check: the last-position logits of one 8-token prompt from every engine; llama.cpp's on each
     GGUF file against llamacpu's on the same file and on its own checkpoint (random weights: a check
     that the files say the same thing, not an accuracy measure).
  6. Tables (markdown, printed and written to WORKDIR/report.md), --json with everything, a plot.

The llama-2-7b shape is measured in Q4_0 only, for the first prompt size and the first decode length.
A benchmark reports, it asserts nothing; a measurement that fails is reported as such.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import checkpoints  # noqa: E402
from report import render_markdown, summarize  # noqa: E402

FORMATS = ["f16", "f16-as-bf16", "q8_0", "q4_0", "q4_k", "int4_g128"]
# llamacpu-only rows: the F16 checkpoint loaded with dtype="bfloat16" (weights rounded to bf16 at load,
# prefill on vdpbf16ps): speed over bit-exactness, compared with llama.cpp on the same F16 file.
LLAMACPU_ONLY = {"f16-as-bf16": ("f16", ["--dtype", "bfloat16"])}
SHAPE_7B = "llama-2-7b"
QUICK_SHAPE = dict(vocab_size=32000, hidden_size=256, intermediate_size=768, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5)
DEFAULT_PEER_PYTHON = ROOT.parent / "benchenv" / "bin" / "python"
PEER_IMPORTS = {"llamacpp": "import llama_cpp", "transformers": "import torch, transformers"}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def csv(s: str) -> list[str]:
    return [v.strip() for v in s.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=f"tinyllama-1.1b,{SHAPE_7B}", help=f"tinyllama-1.1b and/or {SHAPE_7B} (Q4_0 only)")
    p.add_argument("--formats", default=",".join(FORMATS))
    p.add_argument("--layers", type=int, default=None,
                   help="smoke runs: the shapes with only this many layers (files under <shape>-<N>L)")
    p.add_argument("--prompt-tokens", default="128,512")
    p.add_argument("--new-tokens", default="64,256")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--peers", default="llamacpp,transformers", help="comma list; empty for llamacpu alone")
    p.add_argument("--peer-python", default=os.environ.get("BENCH_PEER_PYTHON") or
                   (str(DEFAULT_PEER_PYTHON) if DEFAULT_PEER_PYTHON.exists() else sys.executable),
                   help="python of the venv holding llama-cpp-python / torch+transformers (default ../benchenv)")
    p.add_argument("--json", help="write every number and setting here (default WORKDIR/results.json)")
    p.add_argument("--workdir", default=str(HERE / "out"), help="model files and logs, reused between runs")
    p.add_argument("--plot", help="decode-speed PNG (default bench/decode_speed.png; with --quick WORKDIR/...)")
    p.add_argument("--reps", type=int, default=2, help="prefill repetitions (best kept)")
    p.add_argument("--budget-s", type=float, default=120.0,
                   help="seconds one prefill size / one decode run may take before it is skipped / cut short")
    p.add_argument("--rounds", type=int, default=None,
                   help="measure everything this many times, every other round in reverse order; best kept "
                        "(default 2; 1 with --quick)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start (empty Numba cache) processes")
    p.add_argument("--quiet-wait", type=float, default=20.0,
                   help="before each measurement, wait up to this many seconds for other processes to leave "
                        "the CPU (< 0.25 cores busy over 2 s); 0 = do not wait")
    p.add_argument("--quick", action="store_true", help="a tiny shape and few tokens: a smoke test of the harness")
    args = p.parse_args(argv)
    if args.quick:
        args.shapes, args.prompt_tokens, args.new_tokens = "quick", "16,32", "8,16"
        args.reps, args.budget_s, args.quiet_wait = 1, min(args.budget_s, 30.0), min(args.quiet_wait, 5.0)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    return args


# ---- environment -----------------------------------------------------------------------------------

def machine_info() -> dict:
    info = {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        for line in cpuinfo.splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        flags = next((l for l in cpuinfo.splitlines() if l.startswith("flags")), "")
        info["avx512_vnni"] = "avx512_vnni" in flags
        mem = Path("/proc/meminfo").read_text().splitlines()[0]
        info["mem_gib"] = round(int(mem.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                            text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "llamacpu"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["llamacpu_uncommitted_files"] = len(dirty.splitlines()) if dirty else 0
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import numba
        import numpy

        info["numba"], info["numpy"] = numba.__version__, numpy.__version__
    except ImportError:
        pass
    return info


def peer_status(peers: list[str], python: str) -> dict[str, str | None]:
    """peer -> None when importable under `python`, else the reason it is skipped."""
    out = {}
    for peer in peers:
        if peer not in PEER_IMPORTS:
            out[peer] = f"unknown peer {peer!r} (known: {', '.join(PEER_IMPORTS)})"
            continue
        try:
            r = subprocess.run([python, "-c", PEER_IMPORTS[peer]], capture_output=True, text=True, timeout=300)
            out[peer] = None if r.returncode == 0 else \
                f"not importable in {python}: {(r.stderr.strip().splitlines() or ['?'])[-1]}"
        except (OSError, subprocess.SubprocessError) as e:
            out[peer] = f"{python}: {e}"
    return out


def child_env(threads: int, numba_cache: Path) -> dict:
    env = dict(os.environ)
    env.update(NUMBA_NUM_THREADS=str(threads), NUMBA_CACHE_DIR=str(numba_cache), OMP_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), TQDM_DISABLE="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    return env


def cpu_busy_s() -> float | None:
    """CPU-seconds all processes have spent busy since boot (/proc/stat), or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def others_cpu(seconds: float) -> float | None:
    """Cores' worth of CPU that other processes used over the next `seconds`."""
    b0, t0 = cpu_busy_s(), time.time()
    if b0 is None:
        return None
    time.sleep(seconds)
    return (cpu_busy_s() - b0) / (time.time() - t0)


def wait_for_quiet(max_wait: float, threshold: float = 0.25) -> float | None:
    """Wait (at most max_wait s) for a 2-second window in which other processes use < threshold cores.
    The machine is shared: a measurement next to a busy neighbour measures the neighbour. Returns the
    last window's load."""
    deadline = time.time() + max_wait
    load = others_cpu(2.0) if max_wait > 0 else None
    while load is not None and load >= threshold and time.time() < deadline:
        load = others_cpu(2.0)
    return load


def run_child(python: str, argv: list[str], env: dict, out_json: Path, log_path: Path, timeout: float,
              quiet_wait: float = 0.0, measure_bandwidth: bool = False) -> dict:
    """Run measure.py in a fresh process; its JSON result, or {"error": ...}. Also records how much CPU
    other processes took meanwhile (`others_cores`: cores' worth, averaged over the measurement) and,
    with measure_bandwidth, the memory bandwidth just before (this VM's wanders by tens of percent)."""
    out_json.unlink(missing_ok=True)
    before_load = wait_for_quiet(quiet_wait)
    bw = bandwidth(int(env.get("NUMBA_NUM_THREADS", "2")), env, reps=5) if measure_bandwidth else {}
    env = dict(env, BENCH_T0=repr(time.time()))
    cmd = [python, str(HERE / "measure.py"), *argv, "--out", str(out_json)]
    busy0, mine0, t0 = cpu_busy_s(), children_cpu_s(), time.time()
    with open(log_path, "w") as logf:
        logf.write(" ".join(cmd) + "\n")
        logf.flush()
        try:
            r = subprocess.run(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT, timeout=timeout, cwd=ROOT)
            rc = r.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    elapsed = time.time() - t0
    res = json.loads(out_json.read_text()) if out_json.is_file() else {}
    if rc != 0 and "error" not in res:
        tail = log_path.read_text().strip().splitlines()[-3:]
        res["error"] = f"exit {rc}: " + " | ".join(tail) if rc != "timeout" else f"timed out after {timeout:.0f} s"
    res["log"] = str(log_path)
    res["load_avg_after"] = os.getloadavg()[0]
    res["others_cores_before"] = before_load
    if bw.get("read_gbps"):
        res["bandwidth_before_gbps"] = bw["read_gbps"]
    if busy0 is not None and elapsed > 0:
        others = (cpu_busy_s() - busy0 - (children_cpu_s() - mine0)) / elapsed
        res["others_cores"] = max(0.0, others)
    return res


def bandwidth(threads: int, env: dict, reps: int = 11) -> dict:
    r = subprocess.run([sys.executable, str(HERE / "bandwidth.py"), "--json", "--threads", str(threads),
                        "--reps", str(reps)], env=env, capture_output=True, text=True, timeout=600)
    try:
        return json.loads(r.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": r.stderr.strip()[-500:]}


def clear_numba_cache(cache: Path) -> None:
    """Empty the benchmark's own Numba cache folder (only *.nbi/*.nbc files, only under it)."""
    if cache.is_dir():
        for f in cache.rglob("*"):
            if f.is_file() and f.suffix in (".nbi", ".nbc"):
                f.unlink()
    cache.mkdir(parents=True, exist_ok=True)


# ---- the run ---------------------------------------------------------------------------------------

def plan_shapes(args) -> list[dict]:
    """[{shape, cfg, formats, prompts, news, ctx, streaming}] for the requested shapes."""
    from llamacpu.checkpoint.synthetic import SHAPES

    formats, prompts, news = csv(args.formats), [int(v) for v in csv(args.prompt_tokens)], \
        [int(v) for v in csv(args.new_tokens)]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise SystemExit(f"unknown formats {unknown}; choose from {FORMATS}")
    plans = []
    for shape in csv(args.shapes):
        if shape == "quick":
            plans.append(dict(shape=shape, cfg=QUICK_SHAPE, formats=formats, prompts=prompts, news=news,
                              streaming=False, transformers=True))
        elif shape == SHAPE_7B:
            plans.append(dict(shape=shape, cfg=SHAPES[shape], formats=[f for f in formats if f == "q4_0"],
                              prompts=prompts[:1], news=news[:1], streaming=True, transformers=False))
        elif shape in SHAPES:
            plans.append(dict(shape=shape, cfg=SHAPES[shape], formats=formats, prompts=prompts, news=news,
                              streaming=False, transformers=True))
        else:
            raise SystemExit(f"unknown shape {shape!r}; choose from {sorted(SHAPES)} or 'quick'")
        if args.layers and shape != "quick":
            plans[-1]["cfg"] = dict(plans[-1]["cfg"], num_hidden_layers=args.layers)
            plans[-1]["shape"] = f"{shape}-{args.layers}L"
    for p in plans:
        p["ctx"] = min(p["cfg"]["max_position_embeddings"],
                       max(256, 1 << (max(p["prompts"] + [16]) + max(p["news"]) + 32 - 1).bit_length()))
    return plans


def prepare(plan: dict, workdir: Path, want_gguf: bool, notes: list) -> dict:
    """{fmt: {"llamacpu": folder, "gguf": file or None}} plus "f16_folder" for transformers."""
    shape, cfg = plan["shape"], plan["cfg"]
    files = {}
    if not plan["streaming"]:
        files["f16_folder"] = checkpoints.f16_checkpoint(workdir, shape, cfg)
    for fmt in plan["formats"]:
        if fmt in LLAMACPU_ONLY:
            files[fmt] = {"llamacpu": checkpoints.f16_checkpoint(workdir, shape, cfg), "gguf": None}
            continue
        if fmt == "f16":
            src = checkpoints.f16_checkpoint(workdir, shape, cfg)
        else:
            src = checkpoints.quantized_checkpoint(workdir, shape, fmt, streaming=plan["streaming"], shape_cfg=cfg)
        gguf = None
        if want_gguf:
            gguf = checkpoints.gguf_file(workdir, shape, fmt, cfg, source=src)
            if gguf is None:
                notes.append(f"{shape} {fmt}: ggml has no such type, llama.cpp not measured")
        files[fmt] = {"llamacpu": src, "gguf": gguf}
    return files


def main(argv=None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    numba_cache = workdir / "numba-cache"
    env = child_env(args.threads, numba_cache)
    started = time.time()
    notes: list[str] = []
    run = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "machine": machine_info(), "threads": args.threads,
           "settings": {k: v for k, v in vars(args).items()}, "load_avg_start": os.getloadavg(), "notes": notes}
    log(f"machine: {run['machine'].get('cpu')} x{run['machine']['cpus']}, load average {run['load_avg_start']}")

    peers = peer_status(csv(args.peers), args.peer_python)
    run["peers"] = {k: (v or "ok") for k, v in peers.items()}
    for k, v in peers.items():
        if v:
            notes.append(f"peer {k} skipped: {v}")
            log(f"peer {k} skipped: {v}")
    has_llamacpp = peers.get("llamacpp", "x") is None
    has_transformers = peers.get("transformers", "x") is None

    plans = plan_shapes(args)
    for plan in plans:
        if plan["shape"] == SHAPE_7B and not plan["formats"]:
            notes.append(f"{SHAPE_7B}: measured in q4_0 only, which --formats does not include")
        plan["files"] = prepare(plan, workdir, has_llamacpp, notes)

    log("memory bandwidth ...")
    run["bandwidth_start"] = bandwidth(args.threads, env)
    log(f"  {run['bandwidth_start'].get('read_gbps', float('nan')):.1f} GB/s read")

    jobs = []  # the measurements, in round-1 order; `before` runs once, ahead of the job, in round 1
    for plan in plans:
        shape = plan["shape"]
        common = ["--threads", str(args.threads), "--ctx", str(plan["ctx"]),
                  "--prompt-tokens", ",".join(map(str, plan["prompts"])),
                  "--new-tokens", ",".join(map(str, plan["news"])),
                  "--reps", str(args.reps), "--budget-s", str(args.budget_s)]
        timeout = args.budget_s * (len(plan["prompts"]) + len(plan["news"]) + 2) + 600
        logits_dir = workdir / "logits"
        logits_dir.mkdir(exist_ok=True)
        for fmt in plan["formats"]:
            files = plan["files"][fmt]
            tag = f"{shape}.{fmt}"
            cold = None
            dtype = LLAMACPU_ONLY.get(fmt, (None, []))[1]
            if not args.no_cold and shape != SHAPE_7B:
                cold = ["--engine", "llamacpu", "--model", str(files["llamacpu"]), "--startup-only", *dtype, *common]
            jobs.append(dict(engine="llamacpu", format=fmt, shape=shape, tag=f"{tag}.llamacpu", python=sys.executable,
                             timeout=timeout, cold=cold, extra={},
                             argv=["--engine", "llamacpu", "--model", str(files["llamacpu"]), *dtype,
                                   "--logits", str(logits_dir / f"{tag}.llamacpu.npy"), *common]))
            if files["gguf"] is not None:
                wb, db = gguf_bytes(files["gguf"])
                same_file = ["--engine", "llamacpu", "--model", str(files["gguf"]), "--startup-only",
                             "--logits", str(logits_dir / f"{tag}.llamacpu-gguf.npy"), *common]
                jobs.append(dict(engine="llama.cpp", format=fmt, shape=shape, tag=f"{tag}.llamacpp",
                                 python=args.peer_python, timeout=timeout, after=same_file,
                                 extra=dict(weight_bytes=wb, decode_bytes=db),
                                 argv=["--engine", "llamacpp", "--model", str(files["gguf"]),
                                       "--logits", str(logits_dir / f"{tag}.llamacpp.npy"), *common]))
        if plan["transformers"] and has_transformers and "f16_folder" in plan["files"]:
            for dtype, label in (("float32", "fp32"), ("bfloat16", "bf16")):
                tag = f"{shape}.transformers-{label}"
                wb, db = st_bytes(plan["files"]["f16_folder"], 4 if label == "fp32" else 2)
                jobs.append(dict(engine="transformers", format=label, shape=shape, tag=tag, python=args.peer_python,
                                 timeout=timeout, extra=dict(weight_bytes=wb, decode_bytes=db),
                                 argv=["--engine", "transformers", "--dtype", dtype,
                                       "--model", str(plan["files"]["f16_folder"]),
                                       "--logits", str(logits_dir / f"{tag}.npy"), *common]))
        elif "transformers" in csv(args.peers) and not plan["transformers"]:
            notes.append(f"{shape}: transformers not measured (F16 is 13.5 GB on disk, 27 GB in fp32: over this "
                         f"machine's RAM)")

    # Rounds: this VM's memory bandwidth drifts by up to 1.7x within minutes, so every measurement is
    # repeated, the second round in reverse order (A B ... B A), and each engine keeps its best.
    rounds = {id(j): [] for j in jobs}
    for rnd in range(1, args.rounds + 1):
        for job in (jobs if rnd % 2 else list(reversed(jobs))):
            name = f"{job['engine']} {job['format']} {job['shape']}"
            if rnd == 1 and job.get("cold"):
                clear_numba_cache(numba_cache)
                log(f"{name}: cold start (empty Numba cache)")
                job["cold_result"] = run_child(sys.executable, job["cold"], env, logs / f"{job['tag']}.cold.json",
                                               logs / f"{job['tag']}.cold.log", job["timeout"])
            log(f"{name}: measuring (round {rnd} of {args.rounds})")
            r = run_child(job["python"], job["argv"], env, logs / f"{job['tag']}.r{rnd}.json",
                          logs / f"{job['tag']}.r{rnd}.log", job["timeout"], args.quiet_wait, True)
            r.update(job["extra"], round=rnd)
            rounds[id(job)].append(r)
            log("  " + one_line(r))
            if rnd == 1 and job.get("after"):
                log("llamacpu on the same GGUF file: logits")
                g = run_child(sys.executable, job["after"], env, logs / f"{job['tag']}-file.llamacpu.json",
                              logs / f"{job['tag']}-file.llamacpu.log", job["timeout"])
                if "error" in g:
                    notes.append(f"llamacpu could not run {job['after'][3]}: {g['error']}")
    run["results"] = []
    for job in jobs:
        best = best_of_rounds(rounds[id(job)])
        best.update(engine=job["engine"], format=job["format"], shape=job["shape"], cold=job.get("cold_result"))
        run["results"].append(best)

    log("memory bandwidth again ...")
    run["bandwidth_end"] = bandwidth(args.threads, env)
    run["load_avg_end"] = os.getloadavg()
    run["wall_s"] = time.time() - started
    run["logit_checks"] = logit_checks(workdir / "logits", plans)
    run["summary"] = summarize(run)
    md = render_markdown(run)
    (workdir / "report.md").write_text(md)
    print(md)
    json_path = Path(args.json) if args.json else workdir / "results.json"
    json_path.write_text(json.dumps(run, indent=1, default=str))
    log(f"wrote {json_path}")
    plot_path = Path(args.plot) if args.plot else (workdir if args.quick else HERE) / "decode_speed.png"
    plot(run, plot_path, args.peer_python, workdir)
    log(f"done in {run['wall_s'] / 60:.1f} min; report {workdir / 'report.md'}")
    return 0


def best_of_rounds(results: list[dict]) -> dict:
    """One row from several rounds of the same measurement: each speed its best, start-up its fastest,
    memory and disturbance their worst; every round kept under "rounds"."""
    ok = [r for r in results if "error" not in r]
    if not ok:
        return dict(results[-1], rounds=results)
    best = dict(max(ok, key=lambda r: next(iter(r.get("decode", {}).values()), {}).get("tok_s", 0)))
    for kind in ("prefill", "decode"):
        merged = {}
        for r in ok:
            for n, v in r.get(kind, {}).items():
                if "tok_s" in v and v["tok_s"] > merged.get(n, {}).get("tok_s", -1):
                    merged[n] = v
                elif n not in merged:
                    merged[n] = v
        best[kind] = merged
    for key, pick in (("startup_s", min), ("warmup_steps_s", min), ("peak_rss_mb", max), ("others_cores", max),
                      ("bandwidth_before_gbps", max)):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if vals:
            best[key] = pick(vals)
    best["rounds"] = results
    return best


def one_line(r: dict) -> str:
    if "error" in r:
        return f"ERROR {r['error']}"
    pre = ", ".join(f"prefill@{k} {v['tok_s']:.1f}" if "tok_s" in v else f"prefill@{k} skipped"
                    for k, v in r.get("prefill", {}).items())
    dec = ", ".join(f"decode@{k} {v['tok_s']:.1f}" for k, v in r.get("decode", {}).items())
    return f"{pre}; {dec} tok/s; start {r.get('startup_s', 0):.1f} s; RSS {r.get('peak_rss_mb', 0):.0f} MB"


def gguf_bytes(path: Path) -> tuple[int, int]:
    """(weight bytes, bytes one decode step reads: every tensor but only one row of token_embd)."""
    from gguf import GGUFReader

    weights = decode = 0
    for t in GGUFReader(str(path)).tensors:
        n = int(t.n_bytes)
        weights += n
        decode += n // int(t.shape[-1]) if t.name == "token_embd.weight" else n  # ggml shape: rows last
    return weights, decode


def st_bytes(folder: Path, itemsize: int) -> tuple[int, int]:
    """The same for a float checkpoint held at `itemsize` bytes per weight (transformers fp32 / bf16)."""
    from llamacpu.checkpoint.hf import CheckpointTensors, weight_files

    t = CheckpointTensors(weight_files(Path(folder)))
    weights = decode = 0
    for name in t.names():
        shape = t.shape(name)
        n = 1
        for d in shape:
            n *= d
        weights += n * itemsize
        decode += (shape[-1] if name.endswith("embed_tokens.weight") else n) * itemsize
    return weights, decode


def logit_checks(folder: Path, plans: list[dict]) -> list[dict]:
    """Compare the saved last-position logits pairwise where two engines read the same weights."""
    import numpy as np

    def load(name):
        f = folder / f"{name}.npy"
        return np.load(f) if f.is_file() else None

    out = []
    for plan in plans:
        s = plan["shape"]
        pairs = []
        for fmt in plan["formats"]:
            pairs += [(f"{s}.{fmt}.llamacpp", f"{s}.{fmt}.llamacpu-gguf", f"llama.cpp vs llamacpu, same {fmt} GGUF"),
                      (f"{s}.{fmt}.llamacpp", f"{s}.{fmt}.llamacpu", f"llama.cpp GGUF vs llamacpu checkpoint ({fmt})")]
        if "f16" in plan["formats"]:
            pairs += [(f"{s}.transformers-fp32", f"{s}.f16.llamacpu", "transformers fp32 vs llamacpu f16"),
                      (f"{s}.transformers-bf16", f"{s}.f16.llamacpu", "transformers bf16 vs llamacpu f16")]
        for a_name, b_name, what in pairs:
            a, b = load(a_name), load(b_name)
            if a is None or b is None:
                continue
            scale = float(np.abs(b).max()) or 1.0
            out.append({"shape": s, "what": what, "max_abs_diff": float(np.abs(a - b).max()),
                        "rel_to_max_logit": float(np.abs(a - b).max()) / scale,
                        "correlation": float(np.corrcoef(a, b)[0, 1]),
                        "same_argmax": bool(int(np.argmax(a)) == int(np.argmax(b))),
                        "top5_overlap": len(set(np.argsort(a)[-5:]) & set(np.argsort(b)[-5:]))})
    return out


def plot(run: dict, path: Path, peer_python: str, workdir: Path) -> None:
    """bench/plot.py under whichever python has matplotlib (this one, else the peers')."""
    data = workdir / "last_run.json"
    data.write_text(json.dumps(run, default=str))
    for python in (sys.executable, peer_python):
        ok = subprocess.run([python, "-c", "import matplotlib"], capture_output=True).returncode == 0
        if ok:
            r = subprocess.run([python, str(HERE / "plot.py"), str(data), str(path)], capture_output=True, text=True)
            if r.returncode == 0:
                log(f"plot: {path}")
            else:
                log(f"plot failed: {r.stderr.strip()[-300:]}")
            return
    log("plot skipped: matplotlib is importable in neither python")


if __name__ == "__main__":
    sys.exit(main())
