"""postReceiptRoot: a lease's provider commits to its execution receipts, once, in one cheap transaction.

Also: a lease closed at the provider's last heartbeat counts against its reputation
(``leases_dropped``), not as a completed lease.
"""

from __future__ import annotations

import pytest

from jupyter_gpumarket.chain.errors import (
    DisputeWindowOver,
    EmptyReceiptRoot,
    LeaseNotActive,
    LeaseNotFound,
    NotLeaseProvider,
    ReceiptRootAlreadyPosted,
)
from jupyter_gpumarket.errors import InvalidRequest, NotAuthorized, WrongState
from jupyter_gpumarket.verify.heartbeat import Heartbeat, HeartbeatDomain
from jupyter_gpumarket.verify.receipts import ExecutionReceipt, ReceiptBook, ReceiptDomain
from tests.chain.conftest import DISPUTE_WINDOW, GRACE, TUSD

POST_GAS_LIMIT = 60_000  # one new storage slot, one event: about 50k


def book_for(m, lease_id: int, receipts: int = 3) -> ReceiptBook:
    """The tenant's view of ``receipts`` receipts provider0 signed for the lease."""
    domain = ReceiptDomain(m.tenant.chain_id, m.tenant.market.address)
    book = ReceiptBook(lease_id, m.providers[0].address, domain)
    for seq in range(1, receipts + 1):
        results = {("square", i): i * i for i in range(seq * 4, seq * 4 + 4)}
        receipt = ExecutionReceipt.for_results(lease_id, seq, results, 1_700_000_000 + seq, 1_700_000_001 + seq)
        book.accept(receipt.sign(m.providers[0].signer, domain))
    return book


def test_provider_posts_the_root_of_its_receipts_once(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, _ = m.lease(0)
    book = book_for(m, lease_id)
    root = book.merkle_root()
    assert m.tenant.receipt_root_of(lease_id) is None

    tx = m.providers[0].post_receipt_root(lease_id, root, len(book))
    ev = tx.event("ReceiptRootPosted")
    assert (ev["leaseId"], ev["providerId"], bytes(ev["root"]), ev["count"]) == (lease_id, m.ids[0], root, 3)
    assert tx.result == "0x" + root.hex()
    assert tx.gas_used <= POST_GAS_LIMIT
    ledger.moved()  # no money moves
    assert m.tenant.receipt_root_of(lease_id) == root
    # Any receipt is proven against the root on chain, and a receipt of another lease is not.
    posted = m.tenant.receipt_root_of(lease_id)
    for i, signed in enumerate(book.receipts):
        assert ReceiptBook.verify_proof(signed.receipt.struct_hash(), book.proof(i), posted)
    stranger = book_for(m, lease_id + 1, receipts=1).receipts[0].receipt.struct_hash()
    assert not ReceiptBook.verify_proof(stranger, book.proof(0), posted)

    # No overwrite, not even with the same root (a replay) or a longer book.
    for again in (root, book_for(m, lease_id, receipts=4).merkle_root()):
        with pytest.raises(ReceiptRootAlreadyPosted, match="posted once per lease") as err:
            m.providers[0].post_receipt_root(lease_id, again, 4)
        assert isinstance(err.value, WrongState) and err.value.root == "0x" + root.hex()
    ledger.unchanged()
    assert m.tenant.receipt_root_of(lease_id) == root


def test_only_the_lease_provider_may_post(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, _ = m.lease(0)
    root = book_for(m, lease_id).merkle_root()
    for other in (m.providers[1], m.tenant, m.stranger):  # another provider, the tenant, nobody
        with pytest.raises(NotLeaseProvider, match="not the provider of lease") as err:
            other.post_receipt_root(lease_id, root, 3)
        assert isinstance(err.value, NotAuthorized) and err.value.caller == other.address
    # provider1's own lease does not let it post for provider0's
    _, own_lease, _ = m.lease(1)
    with pytest.raises(NotLeaseProvider):
        m.providers[1].post_receipt_root(lease_id, root, 3)
    ledger.unchanged()
    assert m.tenant.receipt_root_of(lease_id) is None and m.tenant.receipt_root_of(own_lease) is None


def test_empty_roots_and_bad_arguments_are_refused_before_sending(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, _ = m.lease(0)
    with pytest.raises(EmptyReceiptRoot, match="at least one receipt"):
        m.providers[0].post_receipt_root(lease_id, b"\x00" * 32, 1)
    for bad_count in (0, -1, 2**32, True):
        with pytest.raises(InvalidRequest, match="count must be"):
            m.providers[0].post_receipt_root(lease_id, b"\x11" * 32, bad_count)
    for bad_root in (b"\x11" * 31, "0x1234", "not hex"):
        with pytest.raises(InvalidRequest, match="root must be"):
            m.providers[0].post_receipt_root(lease_id, bad_root, 1)
    ledger.unchanged()


def test_which_leases_take_a_root(registered):
    m, ledger = registered, registered.ledger
    root = b"\x22" * 32
    with pytest.raises(LeaseNotFound):
        m.providers[0].post_receipt_root(999, root, 1)
    order_id = m.order(gpus=1)
    bid_id = m.bid(0, order_id, gpus=1)
    with pytest.raises(LeaseNotActive):  # a bid is not a lease yet
        m.providers[0].post_receipt_root(bid_id, root, 1)
    # A rejected lease was refunded in full: nothing to commit to.
    _, rejected, t0 = m.lease(0)
    m.tenant.reject_lease(rejected, "attestation failed")
    ledger.rebase()
    with pytest.raises(LeaseNotActive):
        m.providers[0].post_receipt_root(rejected, root, 1)
    # A closed lease takes its root while a dispute may still be opened, not after.
    _, closed, t1 = m.lease(0)
    m.net.set_next_timestamp(t1 + GRACE + 60)
    m.close(closed)
    m.providers[0].post_receipt_root(closed, root, 1)
    _, late, t2 = m.lease(0)
    m.net.set_next_timestamp(t2 + GRACE + 60)
    m.close(late)
    m.net.mine(t2 + GRACE + 60 + DISPUTE_WINDOW + 1)  # the refusal is decoded at the latest block
    with pytest.raises(DisputeWindowOver):
        m.providers[0].post_receipt_root(late, root, 1)
    assert m.tenant.receipt_root_of(closed) == root and m.tenant.receipt_root_of(late) is None


def test_heartbeat_close_counts_as_dropped_not_completed(registered):
    m, ledger = registered, registered.ledger
    domain = HeartbeatDomain(m.tenant.chain_id, m.tenant.market.address)
    _, dropped, t0 = m.lease(0, price=2 * TUSD, gpus=1)
    beat = Heartbeat(dropped, 3, t0 + 40, 0).sign(m.providers[0].signer, domain)
    m.net.set_next_timestamp(t0 + 300)
    ev = m.tenant.close_lease_at_heartbeat(dropped, beat).result
    assert ev["endedAt"] == t0 + 40  # paid up to the last heartbeat
    ledger.rebase()
    _, completed, t1 = m.lease(0, price=2 * TUSD, gpus=1)
    m.net.set_next_timestamp(t1 + 300)
    m.close(completed)
    stats = m.stats(0)
    assert (stats.leases_completed, stats.leases_dropped, stats.open_leases) == (1, 1, 0)
    provider = m.tenant.provider(m.ids[0])
    assert (provider.leases_completed, provider.leases_dropped) == (1, 1)
    # Reliability, which the auction divides by, counts the silent lease as a failure.
    assert provider.reliability == pytest.approx((1 + 1) / (1 + 1 + 2))
