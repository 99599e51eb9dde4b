"""Signed execution receipts (proof of execution) and the hashes they commit to.

For each computation on a lease the provider signs an EIP-712
``ExecutionReceipt`` for the market contract: the lease, a sequence number,
the hash of the task keys it ran, the hash of their results and the time
window. The tenant checks each one locally (:class:`ReceiptBook`: right
provider, right lease, increasing sequence), keeps them, and the whole book
folds into one 32-byte Merkle root (sorted-pair keccak, as OpenZeppelin's
``MerkleProof``) that a provider can post on chain per lease in one cheap
transaction; any single receipt is then proven with :meth:`ReceiptBook.proof`.

The hashes are deterministic across processes, machines and Python hash
seeds: :func:`hash_result` feeds a canonical, type-tagged, length-prefixed
encoding of the value into keccak-256 (``dask.base.tokenize`` is not used: it
falls back to pickling, which is neither stable across versions nor across
processes for every type, and pandas' parquet bytes carry writer metadata).

>>> from jupyter_gpumarket.chain.accounts import Signer
>>> provider = Signer.from_key("0x" + "22" * 32)
>>> domain = ReceiptDomain(chain_id=31337, market="0x" + "11" * 20)
>>> results = {("sum-abc", 0): 6, ("sum-abc", 1): 15}
>>> receipt = ExecutionReceipt.for_results(7, 1, results, started_at=1_700_000_000, finished_at=1_700_000_002)
>>> signed = receipt.sign(provider, domain)
>>> signed.signer(domain) == provider.address, signed.covers(results)
(True, True)
>>> book = ReceiptBook(lease_id=7, provider=provider.address, domain=domain)
>>> book.accept(signed) == receipt
True
>>> ReceiptBook.verify_proof(receipt.struct_hash(), book.proof(0), book.merkle_root())
True
"""

from __future__ import annotations

import datetime as _dt
import decimal
import math
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from ..errors import InvalidRequest, NotAuthorized, NotFound
from .heartbeat import HeartbeatDomain

__all__ = [
    "EXECUTION_RECEIPT_TYPES",
    "ExecutionReceipt",
    "ReceiptBook",
    "ReceiptDomain",
    "SignedReceipt",
    "combine_result_hashes",
    "hash_result",
    "hash_task_keys",
    "merkle_proof",
    "merkle_root",
    "result_hashes",
    "results_hash",
    "results_match",
    "verify_merkle_proof",
]

#: The market's EIP-712 domain (name "GpuMarket", version "1"): the same one heartbeats use.
#: A heartbeat's signature cannot pass as a receipt's: the type hashes differ.
ReceiptDomain = HeartbeatDomain

EXECUTION_RECEIPT_TYPES = {
    "ExecutionReceipt": [
        {"name": "leaseId", "type": "uint256"},
        {"name": "seq", "type": "uint64"},
        {"name": "taskKeysHash", "type": "bytes32"},
        {"name": "resultsHash", "type": "bytes32"},
        {"name": "startedAt", "type": "uint64"},
        {"name": "finishedAt", "type": "uint64"},
    ]
}
EXECUTION_RECEIPT_TYPE = (
    "ExecutionReceipt(uint256 leaseId,uint64 seq,bytes32 taskKeysHash,bytes32 resultsHash,uint64 startedAt,uint64 finishedAt)"
)
EXECUTION_RECEIPT_TYPEHASH = keccak(EXECUTION_RECEIPT_TYPE.encode())

ZERO_ROOT = b"\x00" * 32
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


def _encode_key(value) -> bytes:
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
        entries = sorted(_encode_key(k) + hash_result(v) for k, v in value.items())
        out.write(b"d" + _u64(len(entries)))
        for entry in entries:
            out.write(entry)
    elif isinstance(value, (set, frozenset)):
        items = sorted(_encode_key(v) for v in value)
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
            out.write(b"e" + _encode_key(value.days) + _encode_key(value.seconds) + _encode_key(value.microseconds))
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
    encoded = sorted({_encode_key(k) for k in _iter_keys(keys)})
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
        entries.append(_blob(_encode_key(key)) + digest)
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


# --------------------------------------------------------------------------- receipts


@dataclass(frozen=True)
class ExecutionReceipt:
    """What a provider signs for one computation on a lease."""

    lease_id: int
    seq: int
    task_keys_hash: bytes
    results_hash: bytes
    started_at: int  # unix seconds, provider's clock
    finished_at: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "lease_id", _uint("lease_id", self.lease_id, _UINT256_MAX))
        object.__setattr__(self, "seq", _uint("seq", self.seq, _UINT64_MAX))
        object.__setattr__(self, "task_keys_hash", _bytes32("task_keys_hash", self.task_keys_hash))
        object.__setattr__(self, "results_hash", _bytes32("results_hash", self.results_hash))
        object.__setattr__(self, "started_at", _uint("started_at", self.started_at, _UINT64_MAX))
        object.__setattr__(self, "finished_at", _uint("finished_at", self.finished_at, _UINT64_MAX))
        if self.finished_at < self.started_at:
            raise InvalidRequest(f"receipt finished at {self.finished_at}, before it started at {self.started_at}")

    @classmethod
    def for_results(cls, lease_id: int, seq: int, results: Mapping, started_at: int, finished_at: int) -> "ExecutionReceipt":
        """The receipt for ``{key: result}`` computed between the two times."""
        results = _as_mapping(results)
        return cls(lease_id, seq, hash_task_keys(results.keys()), results_hash(results), started_at, finished_at)

    def message(self) -> dict:
        return {
            "leaseId": self.lease_id,
            "seq": self.seq,
            "taskKeysHash": self.task_keys_hash,
            "resultsHash": self.results_hash,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }

    def as_tuple(self) -> tuple[int, int, bytes, bytes, int, int]:
        """The contract's ``ExecutionReceipt`` struct."""
        return (self.lease_id, self.seq, self.task_keys_hash, self.results_hash, self.started_at, self.finished_at)

    def struct_hash(self) -> bytes:
        """EIP-712 ``hashStruct``: the Merkle leaf for this receipt."""
        words = b"".join(
            v if isinstance(v, bytes) else v.to_bytes(32, "big") for v in self.as_tuple()
        )
        return keccak(EXECUTION_RECEIPT_TYPEHASH + words)

    def covers(self, results: Mapping) -> bool:
        """Whether ``{key: result}`` is exactly what this receipt commits to."""
        results = _as_mapping(results)
        return hash_task_keys(results.keys()) == self.task_keys_hash and results_hash(results) == self.results_hash

    def sign(self, signer, domain: HeartbeatDomain) -> "SignedReceipt":
        signature = signer.sign_typed_data(domain.as_dict(), EXECUTION_RECEIPT_TYPES, self.message()).signature
        return SignedReceipt(self, bytes(signature))


@dataclass(frozen=True)
class SignedReceipt:
    receipt: ExecutionReceipt
    signature: bytes

    def signer(self, domain: HeartbeatDomain) -> str:
        encoded = encode_typed_data(domain.as_dict(), EXECUTION_RECEIPT_TYPES, self.receipt.message())
        return Account.recover_message(encoded, signature=self.signature)

    def covers(self, results: Mapping) -> bool:
        return self.receipt.covers(results)

    def to_json(self) -> dict:
        r = self.receipt
        return {
            "lease_id": r.lease_id,
            "seq": r.seq,
            "task_keys_hash": "0x" + r.task_keys_hash.hex(),
            "results_hash": "0x" + r.results_hash.hex(),
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "signature": "0x" + self.signature.hex(),
        }

    @classmethod
    def from_json(cls, data: dict) -> "SignedReceipt":
        try:
            receipt = ExecutionReceipt(
                int(data["lease_id"]),
                int(data["seq"]),
                _bytes32("task_keys_hash", data["task_keys_hash"]),
                _bytes32("results_hash", data["results_hash"]),
                int(data["started_at"]),
                int(data["finished_at"]),
            )
            signature = bytes.fromhex(str(data["signature"]).removeprefix("0x"))
        except KeyError as e:
            raise InvalidRequest(f"receipt JSON lacks {e.args[0]!r}") from None
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidRequest):
                raise
            raise InvalidRequest(f"receipt JSON is malformed: {e}") from None
        return cls(receipt, signature)


# --------------------------------------------------------------------------- Merkle tree


def _hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    levels = [list(leaves)]
    while len(levels[-1]) > 1:
        level = levels[-1]
        up = [_hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            up.append(level[-1])  # an odd node moves up unchanged
        levels.append(up)
    return levels


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """Sorted-pair keccak Merkle root of 32-byte leaves, in order; 32 zero bytes when empty."""
    leaves = [_bytes32("leaf", leaf) for leaf in leaves]
    if not leaves:
        return ZERO_ROOT
    return _levels(leaves)[-1][0]


def merkle_proof(leaves: Iterable[bytes], index: int) -> list[bytes]:
    """Sibling hashes from leaf ``index`` up to the root (OpenZeppelin ``MerkleProof.verify`` order)."""
    leaves = [_bytes32("leaf", leaf) for leaf in leaves]
    if isinstance(index, bool) or not isinstance(index, Integral) or not 0 <= index < len(leaves):
        raise NotFound(f"no receipt at index {index!r}; the book holds {len(leaves)}")
    proof = []
    i = int(index)
    for level in _levels(leaves)[:-1]:
        sibling = i ^ 1
        if sibling < len(level):
            proof.append(level[sibling])
        i //= 2
    return proof


def verify_merkle_proof(leaf: bytes, proof: Iterable[bytes], root: bytes) -> bool:
    """``MerkleProof.verify(proof, root, leaf)``: fold the leaf with each sibling, sorted pairs."""
    try:
        computed = _bytes32("leaf", leaf)
        for sibling in proof:
            computed = _hash_pair(computed, _bytes32("proof element", sibling))
        return computed == _bytes32("root", root)
    except InvalidRequest:
        return False


# --------------------------------------------------------------------------- tenant's book


class ReceiptBook:
    """Tenant-side store of one lease's execution receipts.

    Accepts only receipts signed by the lease's provider, for this lease, with
    a sequence number above the last one (forgeries, replays and receipts of
    another lease are refused with :class:`NotAuthorized`), and folds them into
    one Merkle root.
    """

    def __init__(self, lease_id: int, provider: str, domain: HeartbeatDomain) -> None:
        self.lease_id = _uint("lease_id", lease_id, _UINT256_MAX)
        try:
            self.provider = to_checksum_address(provider)
        except (ValueError, TypeError):
            raise InvalidRequest(f"provider {provider!r} is not an address") from None
        self.domain = domain
        self._receipts: list[SignedReceipt] = []

    def accept(self, signed: SignedReceipt) -> ExecutionReceipt:
        r = signed.receipt
        if r.lease_id != self.lease_id:
            raise NotAuthorized(f"receipt is for lease {r.lease_id}, not {self.lease_id}")
        try:
            signer = signed.signer(self.domain)
        except Exception:
            raise NotAuthorized(f"receipt for lease {self.lease_id} has a malformed signature") from None
        if signer != self.provider:
            raise NotAuthorized(f"receipt for lease {self.lease_id} signed by {signer}, not its provider {self.provider}")
        if self._receipts and r.seq <= self.last_seq:
            raise NotAuthorized(f"receipt seq {r.seq} replays an old one (last was {self.last_seq})")
        self._receipts.append(signed)
        return r

    @property
    def receipts(self) -> tuple[SignedReceipt, ...]:
        return tuple(self._receipts)

    @property
    def last_seq(self) -> int | None:
        return self._receipts[-1].receipt.seq if self._receipts else None

    def __len__(self) -> int:
        return len(self._receipts)

    def get(self, seq: int) -> SignedReceipt:
        for signed in self._receipts:
            if signed.receipt.seq == seq:
                return signed
        raise NotFound(f"no receipt with seq {seq} for lease {self.lease_id}")

    def leaves(self) -> list[bytes]:
        return [s.receipt.struct_hash() for s in self._receipts]

    def merkle_root(self) -> bytes:
        """One 32-byte root over every accepted receipt (zero bytes for an empty book)."""
        return merkle_root(self.leaves())

    def proof(self, index: int) -> list[bytes]:
        """The proof that receipt number ``index`` (in acceptance order) is under the root."""
        return merkle_proof(self.leaves(), index)

    @staticmethod
    def verify_proof(leaf: bytes, proof: Iterable[bytes], root: bytes) -> bool:
        return verify_merkle_proof(leaf, proof, root)

    def to_json(self) -> list[dict]:
        return [s.to_json() for s in self._receipts]

    @classmethod
    def from_json(cls, lease_id: int, provider: str, domain: HeartbeatDomain, items: Iterable[dict]) -> "ReceiptBook":
        """Rebuild a book from stored receipts, checking each one again."""
        book = cls(lease_id, provider, domain)
        for item in items:
            book.accept(SignedReceipt.from_json(item))
        return book


# --------------------------------------------------------------------------- comparing results


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
