"""Bounds for everything read from a file: the memory a reader may allocate, JSON nesting, and the
kind of file opened. Every reader goes through these helpers, so a hostile file fails the same way
everywhere: one error from the project's family, naming the file and what was expected, raised before
the allocation or the read that would have hurt.

    memory_budget()            bytes this process may still allocate: the smallest of RLIMIT_AS (less
                               what is mapped), the cgroup's memory.max (less its usage) and MemAvailable
                               (lazy=True: for zero pages touched later, such as the KV cache)
    check_allocation(n, ...)   raise before allocating n bytes that cannot fit
    open_regular(path, ...)    open for reading, refusing FIFOs, devices, sockets (a FIFO would block open)
    read_json(path, ...)       a JSON file, size- and depth-bounded (json's C parser recurses per level)
    loads_json(text, ...)      the same for JSON embedded in a file (a safetensors header)
    read_text(path, ...)       a UTF-8 text file (chat templates), size-bounded
"""
from __future__ import annotations

import json
import os
import resource
import stat
from pathlib import Path

from .errors import LlamacpuError

MAX_JSON_DEPTH = 100  # real configs and tokenizer.json nest < 10 levels; the parser's own limit is ~1000
MAX_JSON_BYTES = 1 << 30  # tokenizer.json of the largest vocabularies is ~20 MB
MAX_TEXT_BYTES = 16 << 20  # a chat template or added-tokens file


# ---- memory -------------------------------------------------------------------------------------------

def _meminfo_available() -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mapped_bytes() -> int:
    """Virtual memory this process maps now (what RLIMIT_AS counts)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cgroup_room(lazy: bool = False) -> int | None:
    """memory.max - memory.current of this process's cgroup (v2; v1's limit_in_bytes otherwise);
    memory.max alone when `lazy`."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":  # cgroup v2
            base = Path("/sys/fs/cgroup") / parts[2].lstrip("/")
            limit, usage = base / "memory.max", base / "memory.current"
        elif "memory" in parts[1].split(","):  # cgroup v1
            base = Path("/sys/fs/cgroup/memory") / parts[2].lstrip("/")
            limit, usage = base / "memory.limit_in_bytes", base / "memory.usage_in_bytes"
        else:
            continue
        try:
            raw = limit.read_text().strip()
            if raw == "max":
                return None
            room = int(raw) - (0 if lazy else int(usage.read_text().strip()))
            return room if int(raw) < 1 << 60 else None
        except (OSError, ValueError):
            return None
    return None


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def memory_budget(lazy: bool = False) -> int:
    """Bytes this process may still allocate: the smallest of what RLIMIT_AS leaves (less what is
    mapped now), what the cgroup's memory limit leaves, and the machine's available RAM.

    lazy=True is for zero pages mapped now and touched later (the KV cache fills as the text grows):
    RLIMIT_AS counts them at once, but RAM and the cgroup only as they fill, so those two are then
    compared whole (memory.max, physical RAM) rather than with what is free at this moment."""
    limits = []
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft - _mapped_bytes())
    for room in (_cgroup_room(lazy), _physical_memory() if lazy else _meminfo_available()):
        if room is not None:
            limits.append(room)
    return max(0, min(limits)) if limits else 1 << 62


def check_allocation(nbytes: int, what: str, error=LlamacpuError, hint: str = "", lazy: bool = False) -> None:
    """Raise `error` when `nbytes` for `what` cannot fit in memory_budget(lazy) (before allocating)."""
    budget = memory_budget(lazy)
    if nbytes > budget:
        ram = "the machine's RAM" if lazy else "available RAM"
        raise error(f"{what} needs {nbytes / 2**30:.2f} GiB, more than the {budget / 2**30:.2f} GiB this process "
                    f"may use (the smallest of RLIMIT_AS, the cgroup memory limit and {ram})"
                    + (f": {hint}" if hint else ""))


# ---- files --------------------------------------------------------------------------------------------

def open_regular(path, error=LlamacpuError, what: str = "file"):
    """Open `path` for binary reading after checking it is a regular file. O_NONBLOCK makes the open of
    a FIFO return at once (a plain open blocks until a writer appears); fstat on the open descriptor
    then refuses it, with no window between the check and the open."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise error(f"{path}: cannot open the {what} ({e.strerror or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                    else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
            raise error(f"{path}: the {what} is {kind}, expected a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def is_present(path, error=LlamacpuError, what: str = "file") -> bool:
    """True for a regular file, False when nothing is there; `error` when something else is (a FIFO,
    a folder, a device), so an optional file is neither skipped silently nor opened and waited on."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return False
    except OSError as e:
        raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None
    if not stat.S_ISREG(mode):
        open_regular(path, error, what).close()  # raises, naming what it is
    return True


def read_bytes(path, error=LlamacpuError, what: str = "file", max_bytes: int = MAX_JSON_BYTES) -> bytes:
    with open_regular(path, error, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{path}: the {what} is {size} bytes, more than the {max_bytes} a {what} may have")
        check_allocation(size, f"reading {path}", error)
        try:
            return f.read(size)  # not read(max_bytes): CPython allocates the requested size up front
        except OSError as e:
            raise error(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def read_text(path, error=LlamacpuError, what: str = "text file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    raw = read_bytes(path, error, what, max_bytes)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: the {what} is not UTF-8 text ({e})") from None


def json_depth(value, limit: int) -> int:
    """Nesting depth of a parsed JSON value, iteratively (stops counting past `limit`)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, (dict, list)):
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((x, d + 1) for x in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads_json(text, where: str, error=LlamacpuError, max_depth: int = MAX_JSON_DEPTH):
    """json.loads with a depth limit; every failure is `error` naming `where`."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise error(f"{where}: JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{where}: not valid JSON ({e})") from None
    except MemoryError:
        raise error(f"{where}: JSON too large for the memory this process may use") from None
    if json_depth(value, max_depth) > max_depth:
        raise error(f"{where}: JSON nested deeper than {max_depth} levels")
    return value


def read_json(path, error=LlamacpuError, what: str = "JSON file", expect: type | None = dict,
              max_depth: int = MAX_JSON_DEPTH, max_bytes: int = MAX_JSON_BYTES):
    """A JSON file: regular, at most max_bytes, UTF-8, nested at most max_depth; of type `expect`."""
    raw = read_bytes(path, error, what, max_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{path}: not valid JSON, not UTF-8 ({e})") from None
    value = loads_json(text, str(path), error, max_depth)
    if expect is not None and not isinstance(value, expect):
        name = {dict: "a JSON object", list: "a JSON array"}.get(expect, expect.__name__)
        raise error(f"{path}: expected {name}, found {type(value).__name__}")
    return value
