"""Tables of a bench/run.py run: `summarize(run)` computes the derived numbers (GB/s, ratios),
`render_markdown(run)` writes the report that bench/README.md pastes. Standard library only."""
from __future__ import annotations

GOAL_DECODE_VS_LLAMACPP = 1.0  # issue 12
GOAL_PREFILL_VS_LLAMACPP = 1.2
GOAL_DECODE_VS_TRANSFORMERS = 3.0
PEER_FORMAT = {"f16-as-bf16": "f16"}


def _rate(r: dict, kind: str, n) -> float | None:
    v = r.get(kind, {}).get(str(n), {})
    return v.get("tok_s")


def _bandwidth(run: dict) -> float | None:
    vals = [run.get(k, {}).get("read_gbps") for k in ("bandwidth_start", "bandwidth_end")]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def summarize(run: dict) -> dict:
    """rows (one per measurement), ratios against llama.cpp and transformers."""
    bw = _bandwidth(run)
    rows = []
    for r in run["results"]:
        row = {k: r.get(k) for k in ("engine", "format", "shape", "error", "peak_rss_mb", "startup_s",
                                     "weight_bytes", "decode_bytes", "load_s", "first_token_s", "others_cores")}
        row["prefill"] = {k: v.get("tok_s") for k, v in r.get("prefill", {}).items()}
        row["prefill_skipped"] = {k: v["skipped"] for k, v in r.get("prefill", {}).items() if "skipped" in v}
        row["decode"] = {k: v.get("tok_s") for k, v in r.get("decode", {}).items()}
        row["decode_truncated"] = {k: v["truncated"] for k, v in r.get("decode", {}).items() if "truncated" in v}
        first_p = next(iter(r.get("prefill", {}).values()), {})
        row["ttft_s"] = first_p.get("ttft_s")
        row["prefill_8_tok_s"] = r.get("prefill_8_tok_s")
        cold = r.get("cold") or {}
        row["cold_startup_s"] = cold.get("startup_s") if "error" not in cold else None
        row["cold_warmup_steps_s"] = cold.get("warmup_steps_s") if "error" not in cold else None
        row["warmup_steps_s"] = r.get("warmup_steps_s")
        row["cold_error"] = cold.get("error")
        decode_first = next(iter(row["decode"].values()), None)
        row["bandwidth_gbps"] = r.get("bandwidth_before_gbps") or bw  # measured just before, else the run's
        if decode_first and r.get("decode_bytes"):
            row["decode_gbps"] = r["decode_bytes"] * decode_first / 1e9
            row["bandwidth_pct"] = 100 * row["decode_gbps"] / row["bandwidth_gbps"] if row["bandwidth_gbps"] else None
        rows.append(row)

    def find(engine, fmt, shape):
        return next((x for x in rows if x["engine"] == engine and x["format"] == fmt and x["shape"] == shape
                     and not x.get("error")), None)

    vs_llamacpp, vs_transformers = [], []
    for row in rows:
        if row["engine"] != "llamacpu" or row.get("error"):
            continue
        # llamacpu-only variants (f16-as-bf16: the F16 file loaded with dtype="bfloat16") against the
        # llama.cpp row of the file they load
        peer = find("llama.cpp", PEER_FORMAT.get(row["format"], row["format"]), row["shape"])
        if peer:
            entry = {"shape": row["shape"], "format": row["format"], "decode": {}, "prefill": {}}
            for kind in ("decode", "prefill"):
                for n, v in row[kind].items():
                    p = peer[kind].get(n)
                    entry[kind][n] = v / p if v and p else None
            vs_llamacpp.append(entry)
        for label in ("fp32", "bf16"):
            peer = find("transformers", label, row["shape"])
            if peer:
                vs_transformers.append({"shape": row["shape"], "format": row["format"], "peer": label,
                                        "decode": {n: (v / peer["decode"][n] if v and peer["decode"].get(n) else None)
                                                   for n, v in row["decode"].items()}})
    return {"bandwidth_gbps": bw, "rows": rows, "vs_llamacpp": vs_llamacpp, "vs_transformers": vs_transformers}


def _f(x, digits=None) -> str:
    if x is None:
        return "—"
    if digits is not None:
        return f"{x:.{digits}f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _ratio(x, goal) -> str:
    if x is None:
        return "—"
    return f"{x:.2f}" + (" ✓" if x >= goal else "")


def render_markdown(run: dict) -> str:
    s = run["summary"]
    m = run["machine"]
    rows = s["rows"]
    prompts = sorted({int(k) for r in rows for k in list(r["prefill"]) + list(r["prefill_skipped"])})
    news = sorted({int(k) for r in rows for k in r["decode"]})
    out = []
    commit = m.get("git_commit", "?")
    dirty = m.get("llamacpu_uncommitted_files")
    out.append(f"### Run of {run['date']}, llamacpu at commit {commit}"
               + (f" plus {dirty} uncommitted files under llamacpu/" if dirty else ""))
    out.append("")
    bs, be = run.get("bandwidth_start", {}), run.get("bandwidth_end", {})
    loads = [r.get("load_avg_after") for r in run["results"] if r.get("load_avg_after") is not None]
    out.append(f"- Machine: {m.get('cpu', '?')}, {m.get('cpus')} cores"
               + (", AVX-512 VNNI" if m.get("avx512_vnni") else "") + f", {m.get('mem_gib', '?')} GiB; "
               f"{run['threads']} threads for every engine.")
    out.append(f"- Memory bandwidth (bench/bandwidth.py: reading a 1 GB array, the faster of a {run['threads']}-thread "
               f"Numba reduction and a NumPy sum, best of {bs.get('reps', '?')} passes): {_f(bs.get('read_gbps'))} "
               f"GB/s at the start, {_f(be.get('read_gbps'))} GB/s at the end, and before every measurement (5 passes: "
               f"\"bw then\" below, which its percentage uses).")
    la0, la1 = run.get("load_avg_start", [None])[0], run.get("load_avg_end", [None])[0]
    out.append(f"- Load average (1 min): {_f(la0)} at the start, {_f(la1)} at the end"
               + (f", {_f(min(loads))}–{_f(max(loads))} after each measurement" if loads else "")
               + f" (2 cores: anything above ~2 means other processes shared the CPU). "
               f"Wall time {_f(run.get('wall_s', 0) / 60)} min.")
    out.append(f"- Versions: numba {m.get('numba')}, numpy {m.get('numpy')}; "
               + "; ".join(r["version"] if r["engine"] != "llamacpu" else f"llamacpu {r['version']}"
                           for r in _unique_versions(run["results"])) + ".")
    rounds = run.get("settings", {}).get("rounds") or 1
    if rounds > 1:
        out.append(f"- Every measurement ran {rounds} times, every other round in reverse order (A B … B A); each "
                   f"number below is the best of its rounds (start-up the fastest, RSS and others' CPU the worst), "
                   f"every round is in the JSON.")
    out.append("")
    out.append("#### Speed (tokens/s; higher is better)")
    out.append("")
    head = (["engine", "format", "shape"] + [f"prefill @{p}" for p in prompts] + [f"decode @{n}" for n in news]
            + [f"GB/s @{news[0]}" if news else "GB/s", "bw then GB/s", "weights GB", "peak RSS GB", f"TTFT @{prompts[0]} s"
               if prompts else "TTFT s", "start warm s", "start cold s", "others' CPU"])
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['engine']} | {r['format']} | {r['shape']} | error: {r['error'][:120]} |"
                       + " |" * (len(head) - 4))
            continue
        cells = [r["engine"], r["format"], r["shape"]]
        for p in prompts:
            k = str(p)
            cells.append("skipped*" if k in r["prefill_skipped"] else _f(r["prefill"].get(k)))
        for n in news:
            k = str(n)
            cells.append(_f(r["decode"].get(k)) + ("†" if k in r["decode_truncated"] else ""))
        gb = r.get("decode_gbps")
        cells.append(f"{_f(gb)} ({_f(r.get('bandwidth_pct'), 0)}%)" if gb else "—")
        cells.append(_f(r.get("bandwidth_gbps")))
        wb = r.get("weight_bytes")
        cells.append(_f(wb / 1e9) if wb else "—")
        cells.append(_f(r["peak_rss_mb"] / 1024) if r.get("peak_rss_mb") else "—")
        cells.append(_f(r.get("ttft_s")))
        cells.append(_start(r.get("startup_s"), r.get("warmup_steps_s")))
        cells.append(_start(r.get("cold_startup_s"), r.get("cold_warmup_steps_s")) if r["engine"] == "llamacpu"
                     else "n/a")
        cells.append(_f(r.get("others_cores"), 2))
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append("GB/s = bytes one decode step reads (every matrix once, one row of the embedding table) × decode "
               "tok/s, and in brackets its share of the bandwidth measured just before that process (bw then). TTFT = prefill of the prompt plus its first token, in a warm process. Start = from launching "
               "the process to the first token of an 8-token prompt (imports, load, kernels, prefill), and in "
               "brackets the two decode steps after it (the decode kernels' first calls); cold = llamacpu's Numba "
               "cache emptied before that process, warm = the next process. Peers have no kernel cache: their "
               "start is always \"warm\". Others' CPU = cores' worth of CPU that other processes on the machine "
               "used during that measurement (of 2): above ~0.2 the numbers of that row are disturbed.")
    skipped = [(r, k, v) for r in rows for k, v in r["prefill_skipped"].items()]
    if skipped:
        out.append("")
        for r, k, v in skipped:
            rate = r.get("prefill_8_tok_s")
            out.append(f"\\* {r['engine']} {r['format']} {r['shape']} prefill @{k}: skipped, {v}"
                       + (f" (an 8-token prompt ran at {_f(rate)} tok/s)" if rate else "") + ".")
    truncated = [(r, k, v) for r in rows for k, v in r["decode_truncated"].items()]
    for r, k, v in truncated:
        out.append(f"† {r['engine']} {r['format']} {r['shape']} decode @{k}: {v}.")

    if s["vs_llamacpp"]:
        out.append("")
        out.append(f"#### llamacpu ÷ llama.cpp, same weights and threads (goal: decode ≥ {GOAL_DECODE_VS_LLAMACPP:.2f}, "
                   f"prefill ≥ {GOAL_PREFILL_VS_LLAMACPP:.2f}; ✓ = met)")
        out.append("")
        h = ["shape", "format"] + [f"decode @{n}" for n in news] + [f"prefill @{p}" for p in prompts]
        out.append("| " + " | ".join(h) + " |")
        out.append("|" + "---|" * len(h))
        for e in s["vs_llamacpp"]:
            cells = [e["shape"], e["format"]]
            cells += [_ratio(e["decode"].get(str(n)), GOAL_DECODE_VS_LLAMACPP) for n in news]
            cells += [_ratio(e["prefill"].get(str(p)), GOAL_PREFILL_VS_LLAMACPP) for p in prompts]
            out.append("| " + " | ".join(cells) + " |")
    if s["vs_transformers"]:
        out.append("")
        out.append(f"#### llamacpu ÷ transformers (PyTorch CPU), decode (goal ≥ {GOAL_DECODE_VS_TRANSFORMERS:.0f}; ✓ = met)")
        out.append("")
        peers = [p for p in ("fp32", "bf16") if any(e["peer"] == p for e in s["vs_transformers"])]
        h = ["shape", "llamacpu format"] + [f"vs {p} @{n}" for p in peers for n in news]
        out.append("| " + " | ".join(h) + " |")
        out.append("|" + "---|" * len(h))
        keys = []
        for e in s["vs_transformers"]:
            if (e["shape"], e["format"]) not in keys:
                keys.append((e["shape"], e["format"]))
        for shape, fmt in keys:
            cells = [shape, fmt]
            for p in peers:
                e = next((x for x in s["vs_transformers"] if x["shape"] == shape and x["format"] == fmt
                          and x["peer"] == p), None)
                cells += [_ratio(e["decode"].get(str(n)) if e else None, GOAL_DECODE_VS_TRANSFORMERS) for n in news]
            out.append("| " + " | ".join(cells) + " |")
    if run.get("logit_checks"):
        out.append("")
        out.append("#### Logit check (last position of an 8-token prompt; random weights, so only agreement matters)")
        out.append("")
        out.append("| shape | engines | max abs diff | ÷ max logit | correlation | same argmax | top-5 overlap |")
        out.append("|---|---|---|---|---|---|---|")
        for c in run["logit_checks"]:
            out.append(f"| {c['shape']} | {c['what']} | {c['max_abs_diff']:.3g} | {c['rel_to_max_logit']:.3g} | "
                       f"{c['correlation']:.5f} | {'yes' if c['same_argmax'] else 'no'} | {c['top5_overlap']}/5 |")
    if run.get("notes"):
        out.append("")
        out.append("Notes: " + " ".join(n.rstrip(".") + "." for n in run["notes"]))
    return "\n".join(out) + "\n"


def _unique_versions(results):
    seen, out = set(), []
    for r in results:
        key = (r.get("engine"), r.get("version"))
        if r.get("version") and key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _start(first, steps) -> str:
    if first is None:
        return "—"
    return _f(first) + (f" (+{_f(steps)})" if steps is not None else "")
