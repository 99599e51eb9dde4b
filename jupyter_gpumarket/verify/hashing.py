"""Deterministic hashes of Dask task results and key sets (what execution receipts commit to).

:func:`hash_result` feeds a canonical, type-tagged, length-prefixed encoding
of a value into keccak-256, so the same result hashes the same in every
process, on every machine and under every Python hash seed (``dask.base.tokenize``
is not used: it falls back to pickling, which is neither stable across versions
nor across processes for every type, and pandas' parquet bytes carry writer
metadata). :func:`results_hash` folds ``{key: result}`` into one hash and
:func:`hash_task_keys` a set of keys, both order-free.

>>> hash_result(6) == hash_result(6) != hash_result(6.0)
True
>>> results_hash({"a": 1, "b": 2}) == combine_result_hashes({"b": hash_result(2), "a": hash_result(1)})
True
>>> hash_task_keys(["x", ("y", 0)]) == hash_task_keys([("y", 0), "x"])
True
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import struct
from collections.abc import Iterable, Mapping
from numbers import Integral

import numpy as np
from eth_hash.auto import keccak

from ..errors import InvalidRequest

__all__ = [
    "combine_result_hashes",
    "encode_key",
    "hash_result",
    "hash_task_keys",
    "result_hashes",
    "results_hash",
]

_UINT64_MAX = 2**64 - 1
_UINT256_MAX = 2**256 - 1

# Domain-separation prefixes: a result hash can never equal a key-set or results hash.
_RESULT_PREFIX = b"GpuMarket/result/v1"
_KEYS_PREFIX = b"GpuMarket/task-keys/v1"
_RESULTS_PREFIX = b"GpuMarket/results/v1"

# --------------------------------------------------------------------------- canonical encoding


def _u64(n: int) -> bytes:
    return n.to_bytes(8, "big")


def _blob(data: bytes) -> bytes:
    return _u64(len(data)) + data


def _canon_float(x: float) -> float:
    """One bit pattern per value: every NaN the same, -0.0 as 0.0."""
    return math.nan if math.isnan(x) else x + 0.0


class _Sink:
    """Collects the encoding into a keccak hasher (streaming, for big arrays)."""

    def __init__(self) -> None:
        self.h = keccak.new(b"")

    def write(self, data) -> None:
        self.h.update(data)

    def digest(self) -> bytes:
        return self.h.digest()


class _Bytes:
    """Collects the encoding into bytes (for small values that must be sorted: keys)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> None:
        self.parts.append(bytes(data))

    def value(self) -> bytes:
        return b"".join(self.parts)


def encode_key(value) -> bytes:
    """The canonical encoding of a Dask key (or any hashable value), as bytes."""
    out = _Bytes()
    _encode(out, value)
    return out.value()


def _pandas():
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is installed with dask[dataframe]
        return None
    return pd


def _encode_array(out, a: np.ndarray) -> None:
    dt = a.dtype
    if dt.names is not None or dt.kind == "V":
        raise InvalidRequest(
            f"cannot hash a structured numpy array (dtype {dt}); return plain arrays or a DataFrame"
        )
    shape = b"".join(_u64(d) for d in a.shape)
    if dt.hasobject:
        out.write(b"o" + _u64(a.ndim) + shape)
        for item in a.reshape(-1, order="C"):
            _encode(out, item)
        return
    le = dt.newbyteorder("<")
    a = np.ascontiguousarray(a, dtype=le)
    if dt.kind in "fc":
        a = _canon_float_array(a)
    out.write(b"a" + _blob(le.str.encode()) + _u64(a.ndim) + shape)
    flat = a.reshape(-1).view(np.uint8)
    out.write(_u64(flat.size))
    out.write(memoryview(flat))


def _canon_float_array(a: np.ndarray) -> np.ndarray:
    """Canonical NaN and +0.0 for float/complex arrays (little-endian, contiguous)."""
    parts = a.view(np.dtype(f"<f{a.dtype.itemsize // 2}")) if a.dtype.kind == "c" else a
    nan = np.isnan(parts)
    if nan.any() or (parts == 0).any():
        parts = np.where(nan, parts.dtype.type(np.nan), parts + parts.dtype.type(0))
        parts = np.ascontiguousarray(parts, dtype=parts.dtype)
        return parts.view(a.dtype) if a.dtype.kind == "c" else parts
    return a


def _encode_pandas_values(out, values, pd) -> None:
    """The values of a Series or Index: numpy-backed, categorical or extension."""
    dtype = values.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        cat = pd.Categorical(values)
        out.write(b"C" + (b"\x01" if cat.ordered else b"\x00"))
        _encode_pandas_values(out, cat.categories, pd)
        _encode_array(out, np.asarray(cat.codes))
    elif isinstance(dtype, np.dtype):
        _encode_array(out, np.asarray(values))
    else:  # extension arrays: nullable ints, strings, tz-aware datetimes, ...
        out.write(b"E" + _blob(str(dtype).encode()))
        _encode_array(out, np.asarray(values.to_numpy(dtype=object), dtype=object))


def _encode_index(out, index, pd) -> None:
    out.write(b"X" + _u64(index.nlevels))
    _encode(out, list(index.names))
    if isinstance(index, pd.MultiIndex):
        for level in range(index.nlevels):
            _encode_pandas_values(out, index.get_level_values(level), pd)
    else:
        _encode_pandas_values(out, index, pd)


def _encode(out, value) -> None:  # noqa: C901 - one branch per supported type
    if value is None:
        out.write(b"N")
    elif isinstance(value, np.ndarray):
        _encode_array(out, value)
    elif isinstance(value, np.generic):  # before float/str: np.float64 and np.str_ subclass them
        _encode_array(out, np.asarray(value))
    elif isinstance(value, bool):
        out.write(b"T" if value else b"F")
    elif isinstance(value, int):
        n = int(value)
        out.write(b"i" + _blob(n.to_bytes(n.bit_length() // 8 + 1, "big", signed=True)))
    elif isinstance(value, float):
        out.write(b"f" + struct.pack(">d", _canon_float(value)))
    elif isinstance(value, complex):
        out.write(b"c" + struct.pack(">dd", _canon_float(value.real), _canon_float(value.imag)))
    elif isinstance(value, str):
        out.write(b"s" + _blob(value.encode("utf-8", "surrogatepass")))
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.write(b"b" + _blob(bytes(value)))
    elif isinstance(value, (list, tuple)):
        out.write((b"l" if isinstance(value, list) else b"t") + _u64(len(value)))
        for item in value:
            _encode(out, item)
    elif isinstance(value, Mapping):
        entries = sorted(encode_key(k) + hash_result(v) for k, v in value.items())
        out.write(b"d" + _u64(len(entries)))
        for entry in entries:
            out.write(entry)
    elif isinstance(value, (set, frozenset)):
        items = sorted(encode_key(v) for v in value)
        out.write(b"S" + _u64(len(items)))
        for item in items:
            out.write(_blob(item))
    elif isinstance(value, decimal.Decimal):
        out.write(b"m" + _blob(str(value).encode()))
    else:
        pd = _pandas()
        if pd is not None and _encode_pandas(out, value, pd):
            return
        if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
            tz = getattr(value, "tzinfo", None)
            out.write(b"D" + _blob(value.isoformat().encode()) + _blob(str(tz).encode()))
        elif isinstance(value, _dt.timedelta):
            out.write(b"e" + encode_key(value.days) + encode_key(value.seconds) + encode_key(value.microseconds))
        else:
            raise InvalidRequest(
                f"cannot hash a result of type {type(value).__module__}.{type(value).__qualname__}; "
                "supported: None, bool, int, float, complex, str, bytes, list, tuple, dict, set, Decimal, "
                "datetime, numpy arrays and scalars, pandas DataFrame/Series/Index/Categorical"
            )


def _encode_pandas(out, value, pd) -> bool:
    if isinstance(value, pd.DataFrame):
        out.write(b"P" + _u64(value.shape[1]))
        _encode_index(out, value.columns, pd)
        _encode_index(out, value.index, pd)
        for i in range(value.shape[1]):
            _encode_pandas_values(out, value.iloc[:, i].array, pd)
    elif isinstance(value, pd.Series):
        out.write(b"R")
        _encode(out, value.name)
        _encode_index(out, value.index, pd)
        _encode_pandas_values(out, value.array, pd)
    elif isinstance(value, pd.Index):
        _encode_index(out, value, pd)
    elif isinstance(value, pd.Categorical):
        _encode_pandas_values(out, value, pd)
    elif value is pd.NA:
        out.write(b"A")
    elif value is pd.NaT:
        out.write(b"n")
    elif isinstance(value, pd.Timestamp):
        out.write(b"p" + _blob(value.isoformat().encode()) + _blob(str(value.tz).encode()))
    elif isinstance(value, pd.Timedelta):
        out.write(b"q" + _blob(value.isoformat().encode()))
    elif isinstance(value, pd.api.extensions.ExtensionArray):
        _encode_pandas_values(out, value, pd)
    else:
        return False
    return True


# --------------------------------------------------------------------------- hashes


def hash_result(value) -> bytes:
    """keccak-256 of the canonical encoding of one task's result (32 bytes).

    Ints, bytes and strings hash by value; numpy arrays by dtype, shape and
    little-endian C-order bytes (every NaN alike, -0.0 as 0.0); pandas objects
    by index, column labels, dtypes and values. Equal in every process.
    """
    out = _Sink()
    out.write(_RESULT_PREFIX)
    _encode(out, value)
    return out.digest()


def _iter_keys(keys) -> list:
    if isinstance(keys, (str, bytes, bytearray)) or not isinstance(keys, Iterable):
        raise InvalidRequest(f"task keys must be a collection of Dask keys (a list or set), got {type(keys).__name__}")
    return list(keys)


def hash_task_keys(keys: Iterable) -> bytes:
    """keccak-256 over the set of Dask keys (str, bytes, int or tuples of them), order-free."""
    encoded = sorted({encode_key(k) for k in _iter_keys(keys)})
    return keccak(_KEYS_PREFIX + _u64(len(encoded)) + b"".join(_blob(e) for e in encoded))


def _as_mapping(results) -> Mapping:
    if not isinstance(results, Mapping):
        raise InvalidRequest(f"results must be a mapping of Dask key to result, got {type(results).__name__}")
    return results


def result_hashes(results: Mapping) -> dict:
    """``{key: hash_result(value)}``: what a spot check compares one task at a time."""
    return {k: hash_result(v) for k, v in _as_mapping(results).items()}


def combine_result_hashes(hashes: Mapping) -> bytes:
    """The results hash from per-task hashes (as :func:`result_hashes` returns them)."""
    entries = []
    for key, digest in _as_mapping(hashes).items():
        digest = _bytes32("result hash", digest)
        entries.append(_blob(encode_key(key)) + digest)
    entries.sort()
    return keccak(_RESULTS_PREFIX + _u64(len(entries)) + b"".join(entries))


def results_hash(results: Mapping) -> bytes:
    """keccak-256 over ``{key: result}``: each key with its result's hash, sorted by key."""
    return combine_result_hashes(result_hashes(results))


def _bytes32(name: str, value) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value.removeprefix("0x"))
        except ValueError:
            raise InvalidRequest(f"{name} {value!r} is not hex") from None
    if not isinstance(value, (bytes, bytearray)) or len(value) != 32:
        raise InvalidRequest(f"{name} must be 32 bytes, got {value!r}")
    return bytes(value)


def _uint(name: str, value, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) <= top:
        raise InvalidRequest(f"{name} must be an integer in [0, {top}], got {value!r}")
    return int(value)
