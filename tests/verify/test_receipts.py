"""Signed execution receipts, deterministic result hashes, the receipts' Merkle root and results_match."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from eth_account.messages import encode_typed_data
from eth_hash.auto import keccak

from jupyter_gpumarket.chain.accounts import Signer
from jupyter_gpumarket.errors import InvalidRequest, NotAuthorized, NotFound
from jupyter_gpumarket.verify.heartbeat import Heartbeat
from jupyter_gpumarket.verify.receipts import (
    EXECUTION_RECEIPT_TYPES,
    ExecutionReceipt,
    ReceiptBook,
    ReceiptDomain,
    SignedReceipt,
    combine_result_hashes,
    hash_result,
    hash_task_keys,
    merkle_proof,
    merkle_root,
    result_hashes,
    results_hash,
    results_match,
)

PROVIDER = Signer.from_key("0x" + "22" * 32)
MALLORY = Signer.from_key("0x" + "33" * 32)
DOMAIN = ReceiptDomain(chain_id=31337, market="0x" + "11" * 20)
OTHER_MARKET = ReceiptDomain(chain_id=31337, market="0x" + "44" * 20)
T0 = 1_700_000_000


def results_for(seq: int) -> dict:
    return {("matmul-1f2e", seq, 0): np.arange(4.0) * seq, ("sum-9a", seq): seq * 10, "meta": f"chunk {seq}"}


def receipt(seq: int = 1, lease_id: int = 7) -> ExecutionReceipt:
    return ExecutionReceipt.for_results(lease_id, seq, results_for(seq), started_at=T0 + seq, finished_at=T0 + seq + 5)


def book() -> ReceiptBook:
    return ReceiptBook(lease_id=7, provider=PROVIDER.address, domain=DOMAIN)


# --------------------------------------------------------------------------- signing


def test_sign_verify_round_trip_through_json():
    r = receipt(3)
    signed = r.sign(PROVIDER, DOMAIN)
    assert signed.signer(DOMAIN) == PROVIDER.address
    assert signed.signer(OTHER_MARKET) != PROVIDER.address  # the domain is part of what is signed
    again = SignedReceipt.from_json(json.loads(json.dumps(signed.to_json())))
    assert again == signed
    assert again.signer(DOMAIN) == PROVIDER.address
    assert signed.covers(results_for(3))
    assert not signed.covers(results_for(4))
    b = book()
    assert b.accept(again) == r
    assert len(b) == 1 and b.last_seq == 3 and b.get(3) == again


def test_struct_hash_is_the_eip712_hash_struct_that_is_signed():
    r = receipt(2)
    encoded = encode_typed_data(DOMAIN.as_dict(), EXECUTION_RECEIPT_TYPES, r.message())
    assert r.struct_hash() == bytes(encoded.body)
    typehash = keccak(
        b"ExecutionReceipt(uint256 leaseId,uint64 seq,bytes32 taskKeysHash,bytes32 resultsHash,uint64 startedAt,uint64 finishedAt)"
    )
    words = (7).to_bytes(32, "big") + (2).to_bytes(32, "big") + r.task_keys_hash + r.results_hash
    words += (T0 + 2).to_bytes(32, "big") + (T0 + 7).to_bytes(32, "big")
    assert r.struct_hash() == keccak(typehash + words)


def test_forged_signer_is_refused():
    b = book()
    forged = receipt(1).sign(MALLORY, DOMAIN)
    with pytest.raises(NotAuthorized) as e:
        b.accept(forged)
    assert str(e.value) == f"receipt for lease 7 signed by {MALLORY.address}, not its provider {PROVIDER.address}"
    assert len(b) == 0


def test_signature_for_another_market_is_refused():
    b = book()
    with pytest.raises(NotAuthorized, match=r"^receipt for lease 7 signed by 0x[0-9a-fA-F]{40}, not its provider"):
        b.accept(receipt(1).sign(PROVIDER, OTHER_MARKET))
    assert len(b) == 0


def test_replayed_seq_is_refused():
    b = book()
    first, second = receipt(1).sign(PROVIDER, DOMAIN), receipt(2).sign(PROVIDER, DOMAIN)
    b.accept(first)
    b.accept(second)
    with pytest.raises(NotAuthorized) as e:
        b.accept(second)
    assert str(e.value) == "receipt seq 2 replays an old one (last was 2)"
    with pytest.raises(NotAuthorized) as e:
        b.accept(first)
    assert str(e.value) == "receipt seq 1 replays an old one (last was 2)"
    assert [s.receipt.seq for s in b.receipts] == [1, 2]
    b.accept(receipt(5).sign(PROVIDER, DOMAIN))  # gaps are fine, going back is not
    assert b.last_seq == 5


def test_cross_lease_receipt_is_refused():
    b = book()
    other = receipt(1, lease_id=8).sign(PROVIDER, DOMAIN)
    assert other.signer(DOMAIN) == PROVIDER.address  # genuinely the provider's, but for another lease
    with pytest.raises(NotAuthorized) as e:
        b.accept(other)
    assert str(e.value) == "receipt is for lease 8, not 7"
    assert len(b) == 0


def test_tampered_results_hash_is_refused():
    b = book()
    signed = receipt(1).sign(PROVIDER, DOMAIN)
    wrong = dict(results_for(1), meta="made up")
    tampered_receipt = dataclasses.replace(signed.receipt, results_hash=results_hash(wrong))
    tampered = SignedReceipt(tampered_receipt, signed.signature)
    assert tampered.covers(wrong) and not signed.covers(wrong)
    with pytest.raises(NotAuthorized) as e:
        b.accept(tampered)
    message = str(e.value)
    assert message.startswith("receipt for lease 7 signed by 0x")
    assert message.endswith(f", not its provider {PROVIDER.address}")
    assert len(b) == 0


def test_malformed_signature_and_heartbeat_signature_are_refused():
    b = book()
    with pytest.raises(NotAuthorized) as e:
        b.accept(SignedReceipt(receipt(1), b"\x00" * 65))
    assert str(e.value) == "receipt for lease 7 has a malformed signature"
    # A heartbeat signature by the right key does not pass as a receipt's.
    hb = Heartbeat(lease_id=7, seq=1, timestamp=T0).sign(PROVIDER, DOMAIN)
    with pytest.raises(NotAuthorized, match="not its provider"):
        b.accept(SignedReceipt(receipt(1), hb.signature))
    assert len(b) == 0


def test_receipt_fields_are_validated():
    with pytest.raises(InvalidRequest) as e:
        ExecutionReceipt(7, 1, b"\x01" * 32, b"\x02" * 32, started_at=T0 + 10, finished_at=T0)
    assert str(e.value) == f"receipt finished at {T0}, before it started at {T0 + 10}"
    with pytest.raises(InvalidRequest, match="results_hash must be 32 bytes"):
        ExecutionReceipt(7, 1, b"\x01" * 32, b"\x02" * 31, T0, T0)
    with pytest.raises(InvalidRequest, match=r"seq must be an integer in \[0, 18446744073709551615\]"):
        ExecutionReceipt(7, 2**64, b"\x01" * 32, b"\x02" * 32, T0, T0)
    data = receipt(1).sign(PROVIDER, DOMAIN).to_json()
    del data["results_hash"]
    with pytest.raises(InvalidRequest) as e:
        SignedReceipt.from_json(data)
    assert str(e.value) == "receipt JSON lacks 'results_hash'"
    with pytest.raises(InvalidRequest, match="is not an address"):
        ReceiptBook(7, "not-an-address", DOMAIN)


def test_book_accepts_lowercase_provider_and_reloads_from_json():
    b = ReceiptBook(7, PROVIDER.address.lower(), DOMAIN)
    for seq in (1, 2, 3):
        b.accept(receipt(seq).sign(PROVIDER, DOMAIN))
    again = ReceiptBook.from_json(7, PROVIDER.address, DOMAIN, json.loads(json.dumps(b.to_json())))
    assert again.merkle_root() == b.merkle_root()
    items = b.to_json()
    items[1]["results_hash"] = "0x" + "00" * 32
    with pytest.raises(NotAuthorized, match="not its provider"):
        ReceiptBook.from_json(7, PROVIDER.address, DOMAIN, items)


# --------------------------------------------------------------------------- hashing

# Evaluated here and in a fresh interpreter with another hash seed; the hashes must agree.
VALUES_SRC = r"""
import numpy as np, pandas as pd
VALUES = [
    0, 1, -1, 2**100, -(2**70), True, False, None, 1.5, -0.0, float("nan"), 1e300, 3 + 4j,
    "", "chunk 🐍", b"", b"\x00\xff", bytearray(b"ab"),
    ("x", 0, 1), ["x", 0, 1], {"b": 2, "a": 1}, {"alpha", "beta", "gamma", "delta"}, frozenset({1, 2}),
    np.int64(5), np.float32(0.25), np.arange(12, dtype=np.int32).reshape(3, 4),
    np.linspace(0, 1, 7), np.array([1.0, np.nan, -np.inf]), np.array(["a", "bb"]), np.array([b"a", b"b"]),
    np.array(["2024-01-01", "NaT"], dtype="M8[s]"), np.array([1, "a", None], dtype=object),
    np.arange(6, dtype=">f8"),
    pd.Series([1.5, 2.5, None], name="x"), pd.Series(["a", "b", "a"], dtype="category"),
    pd.Series([1, None, 3], dtype="Int64"), pd.Series(["p", None], dtype="string"),
    pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", None]}, index=[10, 20, 30]),
    pd.DataFrame({"v": [1.0, 2.0]}, index=pd.MultiIndex.from_tuples([("a", 1), ("b", 2)], names=["k", "n"])),
    pd.Series(pd.date_range("2024-01-01", periods=3, freq="h", tz="Europe/Paris")),
    pd.Index(["u", "v"], name="idx"), pd.Timestamp("2024-05-01 12:00", tz="UTC"), pd.Timedelta(seconds=90),
    pd.NA, pd.NaT,
]
KEYS = [("matmul-1f2e", 0, 1), ("matmul-1f2e", 1, 0), "finalize-abc", ("sum-9a", 3), b"raw-key"]
"""

CHILD = VALUES_SRC + r"""
import json
from jupyter_gpumarket.verify.receipts import hash_result, hash_task_keys, results_hash
print(json.dumps({
    "values": [hash_result(v).hex() for v in VALUES],
    "keys": hash_task_keys(KEYS).hex(),
    "results": results_hash(dict(zip(KEYS, VALUES))).hex(),
}))
"""


def _values():
    namespace: dict = {}
    exec(VALUES_SRC, namespace)
    return namespace["VALUES"], namespace["KEYS"]


def test_hashes_are_stable_across_processes():
    values, keys = _values()
    here = {
        "values": [hash_result(v).hex() for v in values],
        "keys": hash_task_keys(keys).hex(),
        "results": results_hash(dict(zip(keys, values))).hex(),
    }
    assert len(set(here["values"])) == len(values)  # every value hashes differently
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=60, check=True)
    there = json.loads(out.stdout)
    assert there == here


def test_hashes_ignore_representation_but_not_values():
    a = np.arange(12.0).reshape(3, 4)
    assert hash_result(a.T.copy()) == hash_result(np.asfortranarray(a.T))  # memory layout does not matter
    assert hash_result(a[:, ::2]) == hash_result(np.ascontiguousarray(a[:, ::2]))
    assert hash_result(a.astype(">f8")) == hash_result(a)  # byte order does not
    assert hash_result(np.array([-0.0, float("nan")])) == hash_result(np.array([0.0, -float("nan")]))
    assert hash_result({"a": 1, "b": 2}) == hash_result({"b": 2, "a": 1})
    df = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    assert hash_result(df) == hash_result(df.copy())
    assert hash_task_keys([("x", 1), "y"]) == hash_task_keys(["y", ("x", 1)]) == hash_task_keys({("x", 1), "y"})


def _df(**changes):
    cols = {"a": [1, 2, 3], "b": [0.5, 1.5, 2.5], "c": ["x", "y", "z"]}
    cols.update(changes.pop("cols", {}))
    return pd.DataFrame(cols, index=changes.pop("index", [10, 20, 30]))


@pytest.mark.parametrize(
    "a, b",
    [
        (1, 2),
        (1, 1.0),
        (1, True),
        ("1", b"1"),
        (b"abc", b"abd"),
        (("x", 0), ["x", 0]),
        (1.0, float(np.nextafter(1.0, 2.0))),
        (np.arange(6), np.arange(6).reshape(2, 3)),
        (np.arange(6, dtype=np.int64), np.arange(6, dtype=np.int32)),
        (np.arange(6.0), np.where(np.arange(6) == 4, 4.000001, np.arange(6.0))),
        (_df(), _df(cols={"b": [0.5, 1.5, 2.50001]})),
        (_df(), _df(index=[10, 20, 31])),
        (_df(), _df().rename(columns={"c": "d"})),
        (_df(), _df(cols={"a": [1.0, 2.0, 3.0]})),
        (pd.Series(["a", "b"], dtype="category"), pd.Series(pd.Categorical(["a", "b"], categories=["b", "a"]))),
        (pd.Series([1, 2], name="x"), pd.Series([1, 2], name="y")),
        ({"a": 1}, {"a": 2}),
    ],
    ids=lambda v: type(v).__name__,
)
def test_hash_changes_when_the_value_changes(a, b):
    assert hash_result(a) != hash_result(b)


def test_task_keys_and_results_hashes_change_with_any_key_or_result():
    results = {("f", 0): 1, ("f", 1): np.arange(3)}
    base = results_hash(results)
    assert results_hash({("f", 0): 1, ("f", 2): np.arange(3)}) != base  # a renamed key
    assert results_hash({("f", 0): 1, ("f", 1): np.arange(1, 4)}) != base  # a changed result
    assert results_hash({("f", 1): 1, ("f", 0): np.arange(3)}) != base  # results swapped between keys
    assert combine_result_hashes(result_hashes(results)) == base
    assert hash_task_keys([("f", 0), ("f", 1)]) != hash_task_keys([("f", 0), ("f", 2)])
    assert hash_task_keys([("f", 0)]) != hash_task_keys(["f", 0])
    with pytest.raises(InvalidRequest, match="task keys must be a collection of Dask keys"):
        hash_task_keys("f")
    with pytest.raises(InvalidRequest, match="results must be a mapping of Dask key to result"):
        results_hash([1, 2])


def test_unsupported_result_types_are_refused():
    with pytest.raises(InvalidRequest, match=r"cannot hash a result of type builtins\.object"):
        hash_result(object())
    with pytest.raises(InvalidRequest, match="structured numpy array"):
        hash_result(np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]))


# --------------------------------------------------------------------------- Merkle root


def _pair(a: bytes, b: bytes) -> bytes:
    return keccak(min(a, b) + max(a, b))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 16])
def test_merkle_proofs_verify_for_every_leaf_and_fail_when_tampered(n):
    leaves = [keccak(bytes([i])) for i in range(n)]
    root = merkle_root(leaves)
    for i, leaf in enumerate(leaves):
        proof = merkle_proof(leaves, i)
        assert ReceiptBook.verify_proof(leaf, proof, root)
        tampered_leaf = bytes([leaf[0] ^ 1]) + leaf[1:]
        assert not ReceiptBook.verify_proof(tampered_leaf, proof, root)
        assert not ReceiptBook.verify_proof(leaf, proof, keccak(root))
        if proof:
            bad = list(proof)
            bad[-1] = keccak(bad[-1])
            assert not ReceiptBook.verify_proof(leaf, bad, root)
    others = [keccak(bytes([i, 1])) for i in range(n)]
    assert not ReceiptBook.verify_proof(others[0], merkle_proof(leaves, 0), root)


def test_merkle_root_shape_matches_openzeppelin_sorted_pairs():
    l0, l1, l2 = (keccak(bytes([i])) for i in range(3))
    assert merkle_root([l0]) == l0
    assert merkle_root([l0, l1]) == _pair(l0, l1) == merkle_root([l1, l0])
    assert merkle_root([l0, l1, l2]) == _pair(_pair(l0, l1), l2)
    assert merkle_proof([l0, l1, l2], 2) == [_pair(l0, l1)]
    assert merkle_root([]) == b"\x00" * 32


def test_book_root_covers_accepted_receipts_only():
    b = book()
    assert b.merkle_root() == b"\x00" * 32
    for seq in (1, 2, 3, 4, 5):
        b.accept(receipt(seq).sign(PROVIDER, DOMAIN))
    root = b.merkle_root()
    assert len(root) == 32
    for i, signed in enumerate(b.receipts):
        assert ReceiptBook.verify_proof(signed.receipt.struct_hash(), b.proof(i), root)
    forged = dataclasses.replace(b.receipts[2].receipt, results_hash=b"\x07" * 32)
    assert not ReceiptBook.verify_proof(forged.struct_hash(), b.proof(2), root)
    outside = receipt(6).struct_hash()
    assert not any(ReceiptBook.verify_proof(outside, b.proof(i), root) for i in range(5))
    with pytest.raises(NotFound) as e:
        b.proof(5)
    assert str(e.value) == "no receipt at index 5; the book holds 5"
    with pytest.raises(NotAuthorized):
        b.accept(receipt(6).sign(MALLORY, DOMAIN))
    assert b.merkle_root() == root  # a refused receipt changes nothing
    b.accept(receipt(6).sign(PROVIDER, DOMAIN))
    assert b.merkle_root() != root


# --------------------------------------------------------------------------- results_match


@pytest.mark.parametrize(
    "a, b, expected",
    [
        (12, 12, True),
        (12, 13, False),
        (2**80, 2**80 + 1, False),  # integers exact, however large
        (np.int64(7), 7, True),
        (np.arange(5), np.arange(5), True),
        (np.arange(5), np.array([0, 1, 2, 3, 5]), False),
        (b"abc", b"abc", True),
        (b"abc", b"abd", False),
        (b"abc", "abc", False),
        ("chunk", "chunk", True),
        ("chunk", "chunK", False),
        (True, 1, False),
        (1.0, 1.0 + 1e-9, True),
        (1.0, 1.0 + 1e-3, False),
        (0.0, 1e-10, True),  # atol near zero
        (0.0, 1e-6, False),
        (float("nan"), float("nan"), True),
        (float("inf"), float("inf"), True),
        (float("inf"), float("-inf"), False),
        (1e300, 1e300 * (1 + 1e-8), True),
        (np.linspace(0, 1, 50), np.linspace(0, 1, 50) * (1 + 1e-8), True),
        (np.linspace(0, 1, 50), np.linspace(0, 1, 50) + 1e-4, False),
        (np.array([1.0, np.nan]), np.array([1.0, np.nan]), True),
        (np.array([1.0, np.nan]), np.array([1.0, 2.0]), False),
        (np.ones((2, 3)), np.ones((3, 2)), False),
        (np.ones(3, dtype=np.float32), np.ones(3) + 1e-8, True),
        (np.array(["a", "b"]), np.array(["a", "c"]), False),
        ([1, 2.0, "x"], [1, 2.0 + 1e-12, "x"], True),
        ([1, 2], (1, 2), False),
        ({"a": 1.0}, {"a": 1.0 + 1e-12}, True),
        ({"a": 1.0}, {"b": 1.0}, False),
        (pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0 + 1e-9]), True),
        (pd.Series([1.0, 2.0]), pd.Series([1.0, 2.1]), False),
        (pd.Series([1.0, 2.0], index=[0, 1]), pd.Series([1.0, 2.0], index=[0, 2]), False),
        (pd.Series([1, 2], dtype="Int64"), pd.Series([1, 2], dtype="Int64"), True),
        (pd.Series([1, None], dtype="Int64"), pd.Series([1, 2], dtype="Int64"), False),
        (pd.Series(["a", "b"], dtype="category"), pd.Series(["a", "b"], dtype="category"), True),
        (pd.Series(["a", "b"], dtype="category"), pd.Series(["a", "b"]), False),
        (
            pd.Series(pd.Categorical(["a", "b"], categories=["a", "b", "c"])),
            pd.Series(pd.Categorical(["a", "b"], categories=["a", "b"])),
            False,
        ),
        (_df(), _df(cols={"b": [0.5, 1.5, 2.5 * (1 + 1e-9)]}), True),
        (_df(), _df(cols={"b": [0.5, 1.5, 2.6]}), False),
        (_df(), _df(cols={"a": [1, 2, 4]}), False),
        (_df(), _df(cols={"c": ["x", "y", "Z"]}), False),
        (_df(), _df().rename(columns={"c": "d"}), False),
        (_df(), _df().iloc[:2], False),
        (pd.Timestamp("2024-01-01"), pd.Timestamp("2024-01-01"), True),
        (pd.NA, None, False),
    ],
)
def test_results_match(a, b, expected):
    assert results_match(a, b) is expected
    assert results_match(b, a) is expected


def test_results_match_tolerance_is_configurable():
    assert not results_match(1.0, 1.01)
    assert results_match(1.0, 1.01, rtol=0.02)
    assert not results_match(np.array([100.0]), np.array([100.5]), rtol=0.0, atol=0.1)
    assert results_match(np.array([100.0]), np.array([100.5]), rtol=0.0, atol=1.0)
    assert not results_match(5, 6, rtol=1.0)  # integers stay exact whatever the tolerance
    with pytest.raises(InvalidRequest, match="rtol must be a finite number of zero or more"):
        results_match(1.0, 1.0, rtol=-1)
