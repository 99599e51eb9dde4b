"""Comparing two results of the same task, for spot checks: exact for integers and bytes, tolerant for floats.

>>> results_match(3, 3), results_match(3, 4), results_match(0.1 + 0.2, 0.3)
(True, False, True)
>>> import numpy as np
>>> results_match(np.arange(3), np.arange(3) + 1)
False
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real

import numpy as np

from ..errors import InvalidRequest
from .hashing import _pandas

__all__ = ["results_match"]



def _is_float_kind(x) -> bool:
    return isinstance(x, (float, complex, np.floating, np.complexfloating))


def _is_number(x) -> bool:
    return isinstance(x, (Real, complex, np.number)) and not isinstance(x, (bool, np.bool_))


def _close_scalar(a, b, rtol: float, atol: float) -> bool:
    a, b = complex(a), complex(b)
    for x, y in ((a.real, b.real), (a.imag, b.imag)):
        if math.isnan(x) or math.isnan(y):
            if not (math.isnan(x) and math.isnan(y)):
                return False
        elif math.isinf(x) or math.isinf(y):
            if x != y:
                return False
        elif abs(x - y) > atol + rtol * max(abs(x), abs(y)):
            return False
    return True


def _close_arrays(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    if a.dtype.kind == "c" or b.dtype.kind == "c":
        a, b = a.astype(np.complex128), b.astype(np.complex128)
        return _close_arrays(a.real, b.real, rtol, atol) and _close_arrays(a.imag, b.imag, rtol, atol)
    a, b = a.astype(np.float64), b.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return False
    inf = np.isinf(a) | np.isinf(b)
    if not np.array_equal(a[inf], b[inf]):
        return False
    ok = ~(nan_a | inf)
    x, y = a[ok], b[ok]
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.all(np.abs(x - y) <= atol + rtol * np.maximum(np.abs(x), np.abs(y))))


def _match_arrays(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    if a.shape != b.shape:
        return False
    ka, kb = a.dtype.kind, b.dtype.kind
    if a.dtype.hasobject or b.dtype.hasobject:
        return all(_match(x, y, rtol, atol) for x, y in zip(a.reshape(-1), b.reshape(-1)))
    if (ka in "fc" or kb in "fc") and ka in "iufc" and kb in "iufc":
        return _close_arrays(a, b, rtol, atol)
    if ka in "mM" or kb in "mM":
        return a.dtype == b.dtype and np.array_equal(a.view("i8"), b.view("i8"))
    if (ka in "US") != (kb in "US") or ka == "b" and kb != "b" or kb == "b" and ka != "b":
        return False
    return bool(np.array_equal(a, b))


def _match_pandas_values(a, b, pd, rtol: float, atol: float) -> bool:
    cat_a, cat_b = isinstance(a.dtype, pd.CategoricalDtype), isinstance(b.dtype, pd.CategoricalDtype)
    if cat_a or cat_b:
        if not (cat_a and cat_b):
            return False
        ca, cb = pd.Categorical(a), pd.Categorical(b)
        return (
            ca.ordered == cb.ordered
            and _match_pandas_values(ca.categories, cb.categories, pd, 0.0, 0.0)
            and np.array_equal(np.asarray(ca.codes), np.asarray(cb.codes))
        )
    if len(a) != len(b):
        return False
    xa = np.asarray(a) if isinstance(a.dtype, np.dtype) else a.to_numpy(dtype=object)
    xb = np.asarray(b) if isinstance(b.dtype, np.dtype) else b.to_numpy(dtype=object)
    return _match_arrays(np.asarray(xa), np.asarray(xb), rtol, atol)


def _match_index(a, b, pd, rtol: float, atol: float) -> bool:
    if a.nlevels != b.nlevels or len(a) != len(b) or list(a.names) != list(b.names):
        return False
    return all(
        _match_pandas_values(a.get_level_values(i), b.get_level_values(i), pd, rtol, atol) for i in range(a.nlevels)
    )


def _match_pandas(a, b, pd, rtol: float, atol: float) -> bool | None:
    """None when neither is a pandas container."""
    kinds = (pd.DataFrame, pd.Series, pd.Index, pd.Categorical)
    if not isinstance(a, kinds) and not isinstance(b, kinds):
        return None
    if isinstance(a, pd.DataFrame):
        return (
            isinstance(b, pd.DataFrame)
            and a.shape == b.shape
            and _match_index(a.columns, b.columns, pd, 0.0, 0.0)
            and _match_index(a.index, b.index, pd, rtol, atol)
            and all(
                _match_pandas_values(a.iloc[:, i].array, b.iloc[:, i].array, pd, rtol, atol) for i in range(a.shape[1])
            )
        )
    if isinstance(a, pd.Series):
        return (
            isinstance(b, pd.Series)
            and _match(a.name, b.name, 0.0, 0.0)
            and _match_index(a.index, b.index, pd, rtol, atol)
            and _match_pandas_values(a.array, b.array, pd, rtol, atol)
        )
    if isinstance(a, pd.Index):
        return isinstance(b, pd.Index) and _match_index(a, b, pd, rtol, atol)
    if isinstance(a, pd.Categorical):
        return isinstance(b, pd.Categorical) and _match_pandas_values(a, b, pd, rtol, atol)
    return False


def _is_missing(x, pd) -> bool:
    return x is None or (pd is not None and (x is pd.NA or x is pd.NaT))


def _match(a, b, rtol: float, atol: float) -> bool:  # noqa: C901 - one branch per kind
    pd = _pandas()
    if _is_missing(a, pd) or _is_missing(b, pd):
        return a is b
    if pd is not None:
        verdict = _match_pandas(a, b, pd, rtol, atol)
        if verdict is not None:
            return verdict
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        return _match_arrays(a, b, rtol, atol)
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        return isinstance(a, (bool, np.bool_)) and isinstance(b, (bool, np.bool_)) and bool(a) == bool(b)
    if _is_number(a) and _is_number(b):
        if _is_float_kind(a) or _is_float_kind(b):
            return _close_scalar(a, b, rtol, atol)
        return bool(a == b)  # integers (and Decimals) exactly
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    if isinstance(a, (bytes, bytearray, memoryview)) or isinstance(b, (bytes, bytearray, memoryview)):
        both = isinstance(a, (bytes, bytearray, memoryview)) and isinstance(b, (bytes, bytearray, memoryview))
        return both and bytes(a) == bytes(b)
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (
            type(a) is type(b)
            and len(a) == len(b)
            and all(_match(x, y, rtol, atol) for x, y in zip(a, b))
        )
    if isinstance(a, Mapping) or isinstance(b, Mapping):
        if not (isinstance(a, Mapping) and isinstance(b, Mapping)) or set(a) != set(b):
            return False
        return all(_match(a[k], b[k], rtol, atol) for k in a)
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:
        return False


def results_match(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    """Whether two results of the same task agree, for a spot check.

    Integers, bytes, strings, booleans, datetimes and categoricals (categories,
    order and codes) must be equal; floats (Python, numpy, pandas columns) may
    differ by ``atol + rtol * max(|a|, |b|)``, with NaN equal to NaN and
    infinities equal only to themselves. Containers (lists, tuples, dicts,
    arrays, Series, DataFrames with their index and column labels) must have
    the same shape and matching elements.
    """
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, Real) or not tol >= 0 or not math.isfinite(tol):
            raise InvalidRequest(f"{name} must be a finite number of zero or more, got {tol!r}")
    return _match(a, b, float(rtol), float(atol))
