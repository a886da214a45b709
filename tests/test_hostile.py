"""Hostile inputs (tests/hostile.py), each run in a worker subprocess under a time and a memory limit.

Every kind must end "ok": the expected LlamacpuError naming the file or argument, or (for fault cases)
the right result, within its time and memory budget. Anything else is counted as
  crash  an exception from outside the project's family (MemoryError, RecursionError, KeyError...),
         or the worker killed (a signal, an abort);
  hang   no answer within the time limit (the worker is killed and replaced);
  wrong  no error where one was due, another error or message, a wrong result, or over budget.
The counts per kind are printed at the end of the run (tests/conftest.py).
"""
from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import hostile_tally
from hostile import CASES, TIME_SCALE

HERE = Path(__file__).parent
WORKERS = 3


def limit_for(kind: str) -> float:
    return max(30.0, 2 * TIME_SCALE * CASES[kind].budget_s)


class Worker:
    def __init__(self):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, str(HERE / "hostile_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     cwd=str(HERE.parent))
        self.ready = self.read(180) is not None

    def read(self, seconds: float):
        deadline = time.monotonic() + seconds
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                return None
            line = self.proc.stdout.readline()
            if not line:
                return None
            try:
                return json.loads(line)
            except ValueError:  # not the protocol (cannot happen with the worker's own fd; be safe)
                continue

    def run(self, kind: str) -> dict:
        t0 = time.monotonic()
        try:
            self.proc.stdin.write(kind + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self.read(limit_for(kind))
        if answer is not None:
            return answer
        if self.proc.poll() is None:  # still running: hung
            self.kill()
            return {"kind": kind, "outcome": "hang", "detail": f"no answer in {limit_for(kind):.0f} s",
                    "seconds": time.monotonic() - t0}
        code = self.proc.returncode
        return {"kind": kind, "outcome": "crash", "detail": f"worker died (exit status {code})",
                "seconds": time.monotonic() - t0}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()


@pytest.fixture(scope="session")
def hostile_results():
    """Run every case once, in WORKERS long-lived workers (one replaced after a hang or a crash)."""
    todo: queue.Queue = queue.Queue()
    for kind in sorted(CASES, key=lambda k: -CASES[k].budget_s):  # the slow ones first
        todo.put(kind)
    results: dict[str, dict] = {}

    def drain():
        worker = Worker()
        while True:
            try:
                kind = todo.get_nowait()
            except queue.Empty:
                break
            if not worker.ready:
                results[kind] = {"kind": kind, "outcome": "crash", "detail": "worker did not start"}
                continue
            results[kind] = worker.run(kind)
            if worker.proc.poll() is not None:
                worker = Worker()
        worker.close()

    threads = [threading.Thread(target=drain) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for kind, r in results.items():
        hostile_tally(kind, r["outcome"])
    return results


@pytest.mark.parametrize("kind", sorted(CASES))
def test_hostile(hostile_results, kind):
    r = hostile_results[kind]
    assert r["outcome"] == "ok", f"{kind}: {r['outcome']}: {r['detail']}"


def test_hostile_suite_is_large_enough():
    assert len(CASES) >= 70
