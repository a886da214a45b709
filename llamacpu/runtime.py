"""Process-wide execution settings for the Numba kernels: the threading layer and its lock.

Numba runs `prange` loops on one of three threading layers (numba.readthedocs.io, "The Threading
Layers"). What an empty 2-element `prange` costs per launch from Python on a 2-core Zen 4 (numba 0.68):

| layer     | per launch | thread-safe | fork-safe | where it comes from |
| --------- | ---------- | ----------- | --------- | ------------------- |
| tbb       | ~1.6 us    | yes         | yes       | the `tbb` wheel (Linux x86_64, Windows amd64) |
| omp (GNU) | ~1.3 us    | yes         | no: a forked child is killed on its next parallel call | libgomp |
| workqueue | ~125 us    | no: aborts on a concurrent launch | yes | built into Numba |

A decode token launches a few hundred kernels, so under workqueue the launches alone cost tens of
milliseconds per token on a 30-layer model. We use TBB wherever it loads and fall back to workqueue
(always present, fork-safe) elsewhere, for example on macOS and Linux aarch64 where no tbb wheel exists;
OpenMP is never chosen for you because it kills forked children. NUMBA_THREADING_LAYER in the
environment overrides the choice (you then own that layer's caveats); `threading_layer()` says which
layer runs, and `llamacpu bench` prints it.

pip's `tbb` wheel puts libtbb.so.12 in `<prefix>/lib`, which the dynamic loader does not search, so
Numba's own import of its TBB pool fails unless the library is already loaded: we load it first, by
path, with RTLD_GLOBAL.

Every forward chunk holds `KERNEL_LOCK`. The layer itself no longer needs it under TBB, but the model's
workspace buffers and the static cache are shared by the callers of one model, so launches stay
serialized per process: several Python threads generate at once (interleaving token by token), two
models live in one process, and a forked child keeps working.
"""
import ctypes
import glob
import os
import sys
import threading

import numba

KERNEL_LOCK = threading.RLock()


def _load_tbb() -> bool:
    """Load pip's libtbb.so.12 into the process (RTLD_GLOBAL) so that Numba's TBB pool can link to it."""
    if sys.platform == "win32":
        return True  # the wheel puts tbb12.dll next to python.exe's DLLs, where Windows finds it
    candidates = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libtbb.so.12*")))
    if not candidates:  # a --user or otherwise relocated install: ask the package's own file list
        try:
            from importlib.metadata import PackageNotFoundError, distribution
            dist = distribution("tbb")
            candidates = [str(dist.locate_file(f)) for f in dist.files or () if f.name.startswith("libtbb.so.12")]
        except (ImportError, PackageNotFoundError):
            return False
    for path in candidates:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            return True
        except OSError:
            continue
    return False


def _choose_layer() -> str:
    if "NUMBA_THREADING_LAYER" in os.environ:
        return os.environ["NUMBA_THREADING_LAYER"]
    if _load_tbb():
        try:  # Numba's own checks: the library's interface version, then its pool linking against it
            from numba.np.ufunc.parallel import _check_tbb_version_compatible
            _check_tbb_version_compatible()
            from numba.np.ufunc import tbbpool  # noqa: F401
            return "tbb"
        except (ImportError, OSError):
            pass
    return "workqueue"


numba.config.THREADING_LAYER = _choose_layer()


def threading_layer() -> str:
    """The Numba threading layer that runs (or will run) the parallel kernels of this process."""
    try:
        return numba.threading_layer()  # known once a parallel kernel has run
    except ValueError:
        return numba.config.THREADING_LAYER


# Fork while another thread is inside a kernel: the child would inherit KERNEL_LOCK held by a thread that
# does not exist there (and the threading layer's pool mid-job), and hang on its first forward pass. So
# os.fork() waits for the running kernel chunk to finish (each holds the lock for one forward chunk),
# forks between chunks, and the child starts with the lock free: it works. A fork from inside a kernel
# section of the same thread (not possible from Python code) would not wait (the lock is reentrant).
def _before_fork():
    KERNEL_LOCK.acquire()


def _after_fork():
    KERNEL_LOCK.release()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork, after_in_child=_after_fork)
