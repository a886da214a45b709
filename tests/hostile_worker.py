"""Runs hostile cases (tests/hostile.py) one after another, under a memory limit, for test_hostile.py.

Protocol: one case kind per line on stdin; one JSON line per case on stdout:
    {"kind": ..., "outcome": "ok" | "crash" | "wrong", "detail": ..., "seconds": ..., "peak_mb": ...}
A hang is seen by the parent (no answer within its time limit: it kills this process and starts
another); so is a crash that kills the process (a signal, an abort). The memory limit is RLIMIT_AS:
what the process maps after its imports plus HEADROOM, so a reader that trusts a declared size gets
MemoryError (a "crash") instead of swapping the machine.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

HEADROOM = 1536 << 20  # bytes of address space a case may add


def peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (Linux >= 4.0)
    except OSError:
        pass


def rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_one(kind: str, ctx, cases) -> dict:
    from hostile import TIME_SCALE

    from llamacpu.errors import LlamacpuError

    c = cases[kind]
    ctx.tmp = Path(tempfile.mkdtemp(dir=ctx.root, prefix="case-"))
    cwd = os.getcwd()
    peak_rss_reset()
    base = rss_kb("VmRSS")
    t0 = time.monotonic()
    outcome, detail = "ok", ""
    try:
        c.run(ctx)
        if c.expect is not None:
            outcome, detail = "wrong", f"no error (expected {c.expect.__name__})"
    except AssertionError as e:
        outcome, detail = "wrong", f"assertion: {e}"[:300]
    except BaseException as e:  # noqa: B036 - KeyboardInterrupt is a case outcome here
        message = f"{type(e).__name__}: {e}"[:400]
        if c.expect is not None and isinstance(e, c.expect) and re.search(c.match, str(e), re.S):
            outcome, detail = "ok", message
        elif isinstance(e, LlamacpuError):
            outcome, detail = "wrong", f"{message} (expected {c.expect.__name__ if c.expect else 'success'} " \
                                       f"matching {c.match!r})"
        else:
            outcome, detail = "crash", message + " | " + "".join(traceback.format_tb(e.__traceback__)[-2:])[-500:]
    seconds = time.monotonic() - t0
    peak_mb = max(0, rss_kb("VmHWM") - base) / 1024
    os.chdir(cwd)
    if outcome == "ok" and seconds > c.budget_s * TIME_SCALE:
        outcome, detail = "wrong", f"took {seconds:.2f} s, budget {c.budget_s} s x {TIME_SCALE:g} ({detail})"
    if outcome == "ok" and peak_mb > c.budget_mb:
        outcome, detail = "wrong", f"peak memory +{peak_mb:.0f} MB, budget {c.budget_mb} MB ({detail})"
    shutil.rmtree(ctx.tmp, ignore_errors=True)
    return {"kind": kind, "outcome": outcome, "detail": detail, "seconds": round(seconds, 3),
            "peak_mb": round(peak_mb, 1)}


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    os.environ["HF_HUB_OFFLINE"] = "1"
    import hostile  # noqa: E402 - after sys.path

    root = Path(tempfile.mkdtemp(prefix="hostile-"))
    ctx = hostile.Ctx(root)
    ctx.model  # fixtures and kernel compilation before the limit, so cases measure themselves
    ctx.tok
    with open("/proc/self/statm") as f:
        mapped = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + HEADROOM, resource.RLIM_INFINITY))
    # the protocol gets its own descriptor; fd 1 goes to stderr, so prints of the cases and of C code
    # (Numba's TBB pool warns on fork with printf) cannot break it
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    print(json.dumps({"ready": True}), file=out, flush=True)
    try:
        for line in sys.stdin:
            kind = line.rstrip("\n")
            if kind:
                print(json.dumps(run_one(kind, ctx, hostile.CASES)), file=out, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
