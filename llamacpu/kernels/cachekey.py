"""Numba's on-disk cache, keyed on every kernel source of the package, not only the kernel's own file.

Numba checks a cached kernel against its own source file alone, but our kernels inline helpers from
other modules (`quant/common.py`, `quant/vnni.py`, each format's decoder in `quant/kernels.py`,
`kernels/simd.py`...): an edit there would leave stale machine code in the cache. Installed first (from
llamacpu/__init__.py, before any kernel is defined), this locator adds a digest of all the .py files in
llamacpu/kernels and llamacpu/quant to the stamp of every cached function of the package, so an edit to
any of them recompiles them all on the next run (`make warm`) instead of running old code.
"""
from __future__ import annotations

import hashlib
import os

from numba.core import caching

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # .../llamacpu
_WATCHED = ("kernels", "quant")


def _digest() -> str:
    h = hashlib.sha256()
    for sub in _WATCHED:
        folder = os.path.join(_PACKAGE, sub)
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                h.update(name.encode())
                with open(os.path.join(folder, name), "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


SOURCES_DIGEST = _digest()


class _KeyedOnSources:
    """Mixin: for the package's own files, the stamp also holds SOURCES_DIGEST."""

    @classmethod
    def from_function(cls, py_func, py_file):
        if not os.path.abspath(py_file).startswith(_PACKAGE + os.sep):
            return None
        return super().from_function(py_func, py_file)

    def get_source_stamp(self):
        return super().get_source_stamp(), SOURCES_DIGEST


class _UserProvided(_KeyedOnSources, caching.UserProvidedCacheLocator):  # NUMBA_CACHE_DIR set
    pass


class _InTree(_KeyedOnSources, caching.InTreeCacheLocator):  # __pycache__ next to the source
    pass


class _UserWide(_KeyedOnSources, caching.UserWideCacheLocator):  # read-only install: ~/.cache
    pass


def install() -> None:
    """Put the keyed locators first in Numba's list (idempotent)."""
    classes = caching.CacheImpl._locator_classes
    for cls in (_UserWide, _InTree, _UserProvided):
        if cls not in classes:
            classes.insert(0, cls)


install()
