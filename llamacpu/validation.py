"""Argument checks for the public entry points, done before any conversion.

`np.asarray` on a user's value is itself a conversion that can fail or lie: a ragged list becomes an
object array (or a ValueError from NumPy), `[1.5]` becomes a float array that `int()` silently
truncates, `2**70` becomes an object array, `True` becomes token 1. These helpers look at the value as
given and raise InputError naming the argument and what was expected; only then is it converted.
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import InputError

INT64_MAX = (1 << 63) - 1


def is_int(v) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def int_arg(value, name: str, low: int | None = None, high: int | None = None) -> int:
    """An integer argument in [low, high] (either bound optional) -> int."""
    if not is_int(value):
        raise InputError(f"{name}: expected an integer, got {value!r:.60}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise InputError(f"{name}: expected an integer in {span}, got {value}")
    return value


def token_ids(value, name: str = "input_ids", max_ndim: int = 2, allow_empty: bool = False) -> np.ndarray:
    """Integer ids as an int64 array of up to `max_ndim` dimensions. Accepts an integer ndarray or
    (nested) lists/tuples of Python/NumPy integers with equal row lengths; refuses floats, bools,
    strings, objects, ragged rows and values outside int64, naming `name`."""
    if not isinstance(value, (np.ndarray, list, tuple, str, bytes)) and hasattr(value, "__array__"):
        value = np.asarray(value)  # an array-like (a tensor of another library) converts with its own dtype
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu":
            raise InputError(f"{name}: expected integers (token ids), got an array of dtype {value.dtype}")
        if value.ndim > max_ndim:
            raise InputError(f"{name}: expected at most {max_ndim} dimensions, got shape {value.shape}")
        if value.dtype == np.uint64 and value.size and value.max() > INT64_MAX:
            raise InputError(f"{name}: token id {int(value.max())} does not fit in int64")
        out = value.astype(np.int64, copy=False)
    elif is_int(value):
        out = np.array([_checked(value, name)], np.int64)
    elif isinstance(value, (list, tuple)):
        rows = value if value and all(isinstance(r, (list, tuple, np.ndarray)) for r in value) else None
        if rows is not None and max_ndim >= 2:
            flat = [token_ids(r, f"{name}[{i}]", 1, allow_empty=True) for i, r in enumerate(rows)]
            lengths = {len(r) for r in flat}
            if len(lengths) > 1:
                raise InputError(f"{name}: rows have different lengths {sorted(lengths)}; pad them "
                                 f"(tokenizer(..., padding=True)) and pass an attention_mask")
            out = np.stack(flat) if flat else np.zeros((0, 0), np.int64)
        else:
            bad = [v for v in value if not is_int(v)][:1]
            if bad:
                bad = bad[0]
                raise InputError(f"{name}: expected integers (token ids), found {bad!r:.60} "
                                 f"({type(bad).__name__})")
            out = np.array([_checked(v, name) for v in value], np.int64)
    else:
        raise InputError(f"{name}: expected a list or an integer array of token ids, got {type(value).__name__}")
    if not allow_empty and out.size == 0:
        raise InputError(f"{name}: expected at least one token id, got shape {out.shape}")
    return out


def _checked(v, name: str) -> int:
    v = int(v)
    if not -INT64_MAX - 1 <= v <= INT64_MAX:
        raise InputError(f"{name}: token id {v} does not fit in int64")
    return v


def real_arg(value, name: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
        raise InputError(f"{name}: expected a finite number, got {value!r:.60}")
    return float(value)
