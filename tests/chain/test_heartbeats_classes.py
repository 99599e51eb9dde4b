"""Closing at a silent provider's last signed heartbeat, and classroom pools with per-student caps."""

from __future__ import annotations

import pytest

from jupyter_gpumarket.chain.errors import (
    AllowanceExceeded,
    ClassFundsLow,
    ClassNotFound,
    InvalidHeartbeat,
    NotClassSponsor,
)
from jupyter_gpumarket.errors import InsufficientFunds, NotAuthorized
from jupyter_gpumarket.spec import DealStatus, GpuSpec
from jupyter_gpumarket.verify.heartbeat import Heartbeat, HeartbeatDomain, HeartbeatMonitor
from tests.chain.conftest import FP, TUSD, cost


def domain(m) -> HeartbeatDomain:
    return HeartbeatDomain(m.tenant.chain_id, m.tenant.market.address)


def test_close_at_heartbeat_pays_exactly_to_the_heartbeat(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0, price=3_600_000, gpus=2)
    signed = Heartbeat(lease_id, 7, t0 + 95, 9_000).sign(m.providers[0].signer, domain(m))
    monitor = HeartbeatMonitor(lease_id, m.providers[0].address, domain(m), max_skew=10**9)
    assert monitor.accept(signed).seq == 7
    m.net.set_next_timestamp(t0 + 400)  # the provider went silent long ago
    ev = m.tenant.close_lease_at_heartbeat(lease_id, signed).result
    paid = cost(3_600_000, 2, 95)
    assert (ev["accrued"], ev["paid"], ev["endedAt"]) == (paid, paid, t0 + 95)
    deposit = cost(3_600_000, 2, 3600)
    ledger.moved(provider0=paid, tenant=deposit - paid, market=-deposit)
    assert m.tenant.lease(lease_id).status == DealStatus.CLOSED


def test_heartbeat_stamped_in_the_future_pays_no_further_than_now(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0, price=3_600_000, gpus=1)
    signed = Heartbeat(lease_id, 1, t0 + 10_000, 0).sign(m.providers[0].signer, domain(m))
    m.net.set_next_timestamp(t0 + 60)
    ev = m.tenant.close_lease_at_heartbeat(lease_id, signed).result
    assert ev["endedAt"] == t0 + 60 and ev["accrued"] == cost(3_600_000, 1, 60)


@pytest.mark.parametrize("forgery", ["stranger", "other_lease"])
def test_forged_heartbeats_are_refused_and_move_nothing(registered, forgery):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0)
    signer = m.stranger.signer if forgery == "stranger" else m.providers[0].signer
    target = lease_id if forgery == "stranger" else lease_id + 1000
    signed = Heartbeat(target, 1, t0 + 5, 0).sign(signer, domain(m))
    with pytest.raises(InvalidHeartbeat, match="signed for this lease") as err:
        m.tenant.close_lease_at_heartbeat(lease_id, signed)
    assert isinstance(err.value, NotAuthorized) and err.value.lease_id == lease_id
    ledger.unchanged()


def test_monitor_refuses_replays_forgeries_and_other_leases(registered):
    m = registered
    _, lease_id, t0 = m.lease(0)
    monitor = HeartbeatMonitor(lease_id, m.providers[0].address, domain(m))
    good = Heartbeat(lease_id, 2, t0, 0).sign(m.providers[0].signer, domain(m))
    monitor.accept(good)
    with pytest.raises(NotAuthorized, match="replays"):
        monitor.accept(Heartbeat(lease_id, 2, t0 + 1, 0).sign(m.providers[0].signer, domain(m)))
    with pytest.raises(NotAuthorized, match="not its provider"):
        monitor.accept(Heartbeat(lease_id, 3, t0, 0).sign(m.stranger.signer, domain(m)))
    with pytest.raises(NotAuthorized, match="for lease"):
        monitor.accept(Heartbeat(lease_id + 1, 3, t0, 0).sign(m.providers[0].signer, domain(m)))
    assert monitor.last == good


# -- classes ---------------------------------------------------------------------------


def open_class(m, pool=50 * TUSD, cap=10 * TUSD):
    """The deployer (instructor) funds a class; the stranger (a student with no tokens) gets a cap."""
    m.admin.mint(m.admin.address, pool)  # the instructor's budget (test money)
    m.ledger.rebase()
    class_id = m.admin.create_class(pool, approve=True).result
    m.admin.set_allowance(class_id, m.stranger.address, cap)
    m.ledger.moved(deployer=-pool, market=pool)
    return class_id


def test_student_leases_from_the_class_pool_and_refunds_go_back_to_it(registered):
    m, ledger = registered, registered.ledger
    class_id = open_class(m)
    student = m.stranger
    assert student.balance() == 0
    order_id = student.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, 5 * TUSD, FP, class_id=class_id).result
    ledger.moved()  # pool -> escrow, inside the contract: the student's wallet is untouched
    assert student.allowance_of(class_id) == {"cap": 10 * TUSD, "drawn": 5 * TUSD, "remaining": 5 * TUSD}
    assert student.order(order_id).class_id == class_id
    bid_id = m.bid(0, order_id, price=2 * TUSD, gpus=1)
    t0 = m.now() + 5
    m.net.set_next_timestamp(t0)
    student.accept_bids(order_id, [bid_id])
    ledger.moved()
    m.net.set_next_timestamp(t0 + 900)
    ev = student.close_lease(bid_id).result
    paid = cost(2 * TUSD, 1, 900)
    assert ev["paid"] == paid
    ledger.moved(provider0=paid, market=-paid)  # the refund stays in the contract, in the pool
    student.close_order(order_id)  # the unallocated 3 TUSD goes back to the pool too
    ledger.moved()
    assert student.allowance_of(class_id)["drawn"] == paid
    assert student.class_info(class_id)["balance"] == 50 * TUSD - paid
    m.admin.withdraw_class_funds(class_id, 50 * TUSD - paid)
    ledger.moved(deployer=50 * TUSD - paid, market=-(50 * TUSD - paid))


def test_student_cap_and_pool_refuse_before_anything_moves(registered):
    m, ledger = registered, registered.ledger
    class_id = open_class(m, pool=8 * TUSD, cap=6 * TUSD)
    with pytest.raises(AllowanceExceeded, match="ask the instructor to raise the cap") as err:
        m.stranger.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, 7 * TUSD, FP, class_id=class_id)
    assert isinstance(err.value, InsufficientFunds)
    assert (err.value.remaining, err.value.needed) == (6 * TUSD, 7 * TUSD)
    m.admin.set_allowance(class_id, m.stranger.address, 20 * TUSD)
    with pytest.raises(ClassFundsLow, match="the sponsor must fund the class"):
        m.stranger.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, 9 * TUSD, FP, class_id=class_id)
    with pytest.raises(AllowanceExceeded):  # the tenant has no allowance in this class
        m.tenant.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, 1 * TUSD, FP, class_id=class_id)
    with pytest.raises(ClassNotFound):
        m.stranger.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, 1 * TUSD, FP, class_id=99)
    ledger.unchanged()


def test_only_the_sponsor_manages_the_class(registered):
    m, ledger = registered, registered.ledger
    class_id = open_class(m)
    for call in (
        lambda c: c.set_allowance(class_id, c.address, 10**12),
        lambda c: c.withdraw_class_funds(class_id, 1),
        lambda c: c.fund_class(class_id, 1),
    ):
        with pytest.raises(NotClassSponsor, match="use the sponsor's account"):
            call(m.tenant)
    with pytest.raises(ClassFundsLow):
        m.admin.withdraw_class_funds(class_id, 51 * TUSD)
    ledger.unchanged()


def test_class_top_up_rejection_and_slash_all_return_to_the_pool(registered):
    m, ledger = registered, registered.ledger
    class_id = open_class(m, pool=50 * TUSD, cap=20 * TUSD)
    student = m.stranger
    deposit = cost(2 * TUSD, 1, 3600)
    order_id = student.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, deposit, FP, class_id=class_id).result
    first = m.bid(0, order_id, price=2 * TUSD, gpus=1)
    (lease_id,) = student.accept_bids(order_id, [first]).result
    student.top_up(lease_id, 1 * TUSD, 600)  # drawn from the pool, not the wallet
    assert student.allowance_of(class_id)["drawn"] == deposit + 1 * TUSD
    student.reject_lease(lease_id, "failed attestation")
    assert student.allowance_of(class_id)["drawn"] == 0
    ledger.moved()
    assert student.class_info(class_id)["balance"] == 50 * TUSD

    order2 = student.create_order(GpuSpec(1), 2 * TUSD, 3600, 600, deposit, FP, class_id=class_id).result
    bid2 = m.bid(1, order2, price=2 * TUSD, gpus=1)
    (lease2,) = student.accept_bids(order2, [bid2]).result
    student.open_dispute(lease2, "wrong results")
    slashed = m.admin.resolve_dispute(lease2, True, 5 * TUSD).result
    assert slashed == 5 * TUSD
    ledger.moved(provider1=0)  # the slash moves stake into the pool, inside the contract
    assert student.class_info(class_id)["balance"] == 50 * TUSD - deposit + 5 * TUSD
