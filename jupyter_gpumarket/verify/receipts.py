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
seeds (:mod:`.hashing`); :func:`results_match` (:mod:`.compare`) is how a
spot check compares a recomputed result with the delivered one.

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

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from numbers import Integral

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak
from eth_utils import to_checksum_address

from ..errors import InvalidRequest, NotAuthorized, NotFound
from .compare import results_match
from .hashing import (
    _UINT64_MAX,
    _UINT256_MAX,
    _as_mapping,
    _bytes32,
    _uint,
    combine_result_hashes,
    hash_result,
    hash_task_keys,
    result_hashes,
    results_hash,
)
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
