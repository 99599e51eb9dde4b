"""Money through the market on a real anvil devnet, checked to the base unit after every step.

Every step asserts the exact token movement of every account (``ledger.moved``)
and that the contract holds exactly stakes + unallocated escrow + open lease
balances. Timestamps are set exactly (``set_next_timestamp``) so accrual is exact.
"""

from __future__ import annotations

import pytest
from tests.conftest import PROVIDER_CLAIMS
from tests.chain.conftest import DISPUTE_WINDOW, FP, GRACE, STAKES, TREASURY, TUSD, UNSTAKE_DELAY, cost

from jupyter_gpumarket.chain.errors import (
    FeeTooHigh,
    GracePeriodActive,
    GracePeriodOver,
    LeaseEnded,
    LeaseNotEnded,
    ProviderBusy,
    ProviderInactive,
    UnstakeNotReady,
)
from jupyter_gpumarket.errors import InvalidRequest, WrongState
from jupyter_gpumarket.spec import DealStatus, GpuSpec

# -- the whole story ------------------------------------------------------------


@pytest.mark.parametrize("permit", [False, True], ids=["approve", "permit"])
def test_full_lifecycle(market, permit):
    m, ledger = market, market.ledger

    # Providers register with their stake.
    for i in (0, 1):
        role = f"provider{i}"
        tx = m.providers[i].register_provider(PROVIDER_CLAIMS[role], "eu-west", f"tls://{role}:1", STAKES[role], approve=True)
        m.ids[i] = tx.result
        ledger.moved(**{role: -STAKES[role], "market": STAKES[role]})
        assert m.stats(i).stake == STAKES[role]

    # Tenant opens an order for 2 GPUs, max 3 TUSD/GPU-h, 1 h, with 10 TUSD escrow.
    nonce = m.tenant.w3.eth.get_transaction_count(m.tenant.address)
    order_id = m.tenant.create_order(
        GpuSpec(2, "H100|A100"), 3 * TUSD, 3600, 600, 10 * TUSD, FP, approve=not permit, permit=permit
    ).result
    ledger.moved(tenant=-10 * TUSD, market=10 * TUSD)
    sent = m.tenant.w3.eth.get_transaction_count(m.tenant.address) - nonce
    assert sent == (1 if permit else 2)  # permit: one transaction, no approve
    assert m.tenant.allowance() == 0  # exactly the deposit was allowed and used
    order = m.tenant.order(order_id)
    assert (order.escrow, order.deposit, order.open, order.tenant) == (10 * TUSD, 10 * TUSD, True, m.tenant.address)

    # Two providers bid; bids move no money.
    expensive = m.bid(0, order_id, price=2_500_000, gpus=2)
    cheap = m.bid(1, order_id, price=2_000_000, gpus=2)
    ledger.moved()
    assert sorted(b.id for b in m.tenant.bids(order_id)) == [expensive, cheap]

    # The tenant accepts the cheaper bid: its lease gets the full cost from the escrow.
    best = min(m.tenant.bids(order_id), key=lambda b: b.price_per_gpu_hour)
    assert best.id == cheap
    t0 = m.now() + 10
    m.net.set_next_timestamp(t0)
    assert m.tenant.accept_bids(order_id, [cheap]).result == [cheap]
    ledger.moved()  # escrow -> lease, both inside the contract
    lease = m.tenant.lease(cheap)
    full = cost(2_000_000, 2, 3600)
    assert full == 4 * TUSD
    assert (lease.deposit, lease.started_at, lease.ends_at, lease.status) == (full, t0, t0 + 3600, DealStatus.ACTIVE)
    assert m.tenant.order(order_id).escrow == 10 * TUSD - full
    assert m.stats(1).open_leases == 1

    # Time passes; the provider withdraws what accrued (odd: rounds down).
    m.net.advance(GRACE + 10)
    m.net.set_next_timestamp(t0 + 1000)
    first = m.providers[1].withdraw(cheap).result
    assert first == cost(2_000_000, 2, 1000) == 1_111_111
    ledger.moved(provider1=first, market=-first)

    # The tenant closes early at 30 minutes: provider gets the rest of what accrued, tenant the remainder.
    m.net.set_next_timestamp(t0 + 1800)
    closed = m.tenant.close_lease(cheap).result
    accrued_total = cost(2_000_000, 2, 1800)
    assert accrued_total == 2 * TUSD
    assert (closed["accrued"], closed["paid"], closed["fee"], closed["refunded"], closed["endedAt"]) == (
        accrued_total,
        accrued_total - first,
        0,
        full - accrued_total,
        t0 + 1800,
    )
    ledger.moved(provider1=accrued_total - first, tenant=full - accrued_total, market=-(full - first))
    assert m.tenant.accrued(cheap) == accrued_total  # frozen after close

    # Tenant closes the order: the unallocated escrow comes back.
    refund = m.tenant.close_order(order_id).event("OrderClosed")["refunded"]
    assert refund == 10 * TUSD - full
    ledger.moved(tenant=refund, market=-refund)

    # End state: the tenant paid exactly what accrued; the contract holds only the stakes.
    assert ledger.base["tenant"] == 10_000 * TUSD - accrued_total
    assert ledger.base["provider1"] == 1_000 * TUSD - STAKES["provider1"] + accrued_total
    assert ledger.base["market"] == STAKES["provider0"] + STAKES["provider1"]
    p1 = m.stats(1)
    assert (p1.open_leases, p1.leases_completed, p1.leases_rejected, p1.disputes_lost) == (0, 1, 0, 0)
    assert m.stats(0).leases_completed == 0


def test_two_leases_from_one_order_share_the_escrow(registered):
    m, ledger = registered, registered.ledger
    order_id = m.order(gpus=4, max_price=3 * TUSD, duration=3600, deposit=9 * TUSD)
    a = m.bid(0, order_id, price=2 * TUSD, gpus=2)
    b = m.bid(1, order_id, price=3 * TUSD, gpus=2)
    m.tenant.accept_bids(order_id, [a, b])
    # first lease takes its full cost (4 TUSD); the second gets what is left (5 of 6 TUSD).
    assert m.tenant.lease(a).deposit == 4 * TUSD
    assert m.tenant.lease(b).deposit == 5 * TUSD
    order = m.tenant.order(order_id)
    assert (order.escrow, order.gpus_leased) == (0, 4)
    ledger.moved()


# -- per-second accrual ------------------------------------------------------------


@pytest.mark.parametrize(
    ("price", "gpus", "seconds"),
    [
        (3_600_000, 1, 41),  # 1 base unit per second: exact
        (2_000_000, 2, 1000),  # 1_111_111.1 -> 1_111_111
        (1_000_001, 1, 47),  # 13_055.56 -> 13_055
        (999_999, 3, 1001),  # 834_165.8 -> 834_165
        (7, 1, 3599),  # 6.998 -> 6: tiny prices round down to almost nothing
    ],
)
def test_accrual_is_exact_per_second_and_rounds_down(registered, price, gpus, seconds):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0, price=price, gpus=gpus, duration=3600)
    # the view, at the latest block
    m.net.mine(t0 + GRACE + 1)
    assert m.tenant.accrued(lease_id) == cost(price, gpus, GRACE + 1) == price * gpus * (GRACE + 1) // 3600
    m.net.mine(t0 + seconds - 1)
    assert m.tenant.accrued(lease_id) == price * gpus * (seconds - 1) // 3600
    assert m.tenant.lease(lease_id).accrued_at(t0 + seconds - 1) == m.tenant.accrued(lease_id)
    # and the withdrawal at exactly t0 + seconds
    expected = price * gpus * seconds // 3600
    m.net.set_next_timestamp(t0 + seconds)
    if expected == 0:
        pytest.fail("choose parameters that accrue something")
    amount = m.providers[0].withdraw(lease_id).result
    assert amount == expected
    assert m.tenant.accrued(lease_id) == expected
    assert m.tenant.lease(lease_id).withdrawn == expected
    ledger.moved(provider0=expected, market=-expected)


def test_repeated_withdrawals_sum_to_accrual_without_losing_rounding(registered):
    m, ledger = registered, registered.ledger
    price, gpus = 1_000_001, 3
    _, lease_id, t0 = m.lease(0, price=price, gpus=gpus, duration=3600)
    total = 0
    for t in (31, 77, 79, 1013, 2999):
        # the client simulates first, at the latest block: mine one second before so it sees something due
        m.net.mine(t0 + t - 1)
        m.net.set_next_timestamp(t0 + t)
        got = m.providers[0].withdraw(lease_id).result
        assert got == cost(price, gpus, t) - total  # rounding is on the total, never per withdrawal
        total += got
    ledger.moved(provider0=total, market=-total)
    assert total == cost(price, gpus, 2999)


def test_early_close_by_tenant_refunds_the_rest(registered):
    m, ledger = registered, registered.ledger
    price, gpus = 2_345_679, 2
    _, lease_id, t0 = m.lease(1, price=price, gpus=gpus, duration=7200)
    deposit = cost(price, gpus, 7200)
    m.net.set_next_timestamp(t0 + 777)
    closed = m.tenant.close_lease(lease_id).result
    paid = cost(price, gpus, 777)
    assert (closed["paid"], closed["refunded"]) == (paid, deposit - paid)
    ledger.moved(provider1=paid, tenant=deposit - paid, market=-deposit)
    lease = m.tenant.lease(lease_id)
    assert (lease.status, lease.ends_at, lease.withdrawn) == (DealStatus.CLOSED, t0 + 777, paid)


def test_top_up_adds_deposit_and_time(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0, price=2 * TUSD, gpus=2, duration=3600)  # 4 TUSD/h, 4 TUSD deposit
    m.net.set_next_timestamp(t0 + 600)
    tx = m.tenant.top_up(lease_id, 2 * TUSD, extra_seconds=1800, approve=True)
    ev = tx.event("LeaseToppedUp")
    assert (ev["amount"], ev["deposit"], ev["endsAt"]) == (2 * TUSD, 6 * TUSD, t0 + 5400)
    ledger.moved(tenant=-2 * TUSD, market=2 * TUSD)
    assert m.tenant.effective_end(lease_id) == t0 + 5400
    # it accrues past the old end and the provider may close once the new end is reached
    m.net.mine(t0 + 4000)
    assert m.tenant.accrued(lease_id) == cost(2 * TUSD, 2, 4000)
    with pytest.raises(LeaseNotEnded) as exc:
        m.providers[0].close_lease(lease_id)
    assert exc.value.ends_at == t0 + 5400
    m.net.mine(t0 + 9000)
    closed = m.providers[0].close_lease(lease_id).result
    assert (closed["accrued"], closed["paid"], closed["refunded"], closed["endedAt"]) == (6 * TUSD, 6 * TUSD, 0, t0 + 5400)
    ledger.moved(provider0=6 * TUSD, market=-6 * TUSD)


def test_top_up_without_extra_time_only_raises_the_cap(registered):
    m, ledger = registered, registered.ledger
    # escrow short of the full cost: 1 TUSD at 4 TUSD/h runs dry after 900 s of the 3600 s
    _, lease_id, t0 = m.lease(0, price=2 * TUSD, gpus=2, duration=3600, deposit=1 * TUSD)
    assert m.tenant.effective_end(lease_id) == t0 + 900
    m.net.set_next_timestamp(t0 + 500)
    m.tenant.top_up(lease_id, 1 * TUSD, approve=True)
    assert m.tenant.effective_end(lease_id) == t0 + 1800
    assert m.tenant.lease(lease_id).ends_at == t0 + 3600
    ledger.moved(tenant=-1 * TUSD, market=1 * TUSD)


def test_dry_lease_stops_accruing_and_cannot_be_topped_up(registered):
    m, ledger = registered, registered.ledger
    price, gpus, deposit = 7_000_007, 1, 1 * TUSD  # dry after ceil(1e6 * 3600 / 7_000_007) = 515 s
    _, lease_id, t0 = m.lease(0, price=price, gpus=gpus, duration=7 * 86_400, deposit=deposit)
    lease = m.tenant.lease(lease_id)
    assert lease.deposit == deposit
    assert m.tenant.effective_end(lease_id) == t0 + 515
    m.net.mine(t0 + 514)
    assert m.tenant.accrued(lease_id) == cost(price, gpus, 514) == 999_445 < deposit
    m.net.mine(t0 + 515)
    assert m.tenant.accrued(lease_id) == deposit
    m.net.mine(t0 + 3 * 86_400)  # much later, still before the lease's nominal end
    assert m.tenant.accrued(lease_id) == deposit

    m.tenant.approve(5 * TUSD)
    with pytest.raises(LeaseEnded) as exc:
        m.tenant.top_up(lease_id, 5 * TUSD)
    assert isinstance(exc.value, WrongState)
    assert exc.value.ended_at == t0 + 515
    assert "start a new order" in str(exc.value)
    ledger.unchanged()

    # dry counts as ended: the provider may settle it, and gets exactly the deposit
    closed = m.providers[0].close_lease(lease_id).result
    assert (closed["accrued"], closed["paid"], closed["refunded"], closed["endedAt"]) == (deposit, deposit, 0, t0 + 515)
    ledger.moved(provider0=deposit, market=-deposit)


def test_provider_can_close_only_after_the_end(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(2, price=1 * TUSD, gpus=1, duration=600)
    m.net.mine(t0 + 500)
    with pytest.raises(LeaseNotEnded) as exc:
        m.providers[2].close_lease(lease_id)
    assert (exc.value.lease_id, exc.value.ends_at) == (lease_id, t0 + 600)
    assert "only the tenant can close it early" in str(exc.value)
    ledger.unchanged()
    m.net.mine(t0 + 601)
    closed = m.providers[2].close_lease(lease_id).result
    full = cost(1 * TUSD, 1, 600)
    assert (closed["paid"], closed["refunded"], closed["endedAt"]) == (full, 0, t0 + 600)
    ledger.moved(provider2=full, market=-full)
    assert m.stats(2).leases_completed == 1


# -- attestation grace -----------------------------------------------------------


def test_rejection_within_grace_refunds_everything(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0, price=2 * TUSD, gpus=2, duration=3600)
    deposit = 4 * TUSD
    with pytest.raises(GracePeriodActive) as exc:  # the provider cannot take money during grace
        m.providers[0].withdraw(lease_id)
    assert exc.value.until == t0 + GRACE
    ledger.unchanged()

    m.net.set_next_timestamp(t0 + GRACE - 1)  # last second of grace, 29 s accrued on paper
    refunded = m.tenant.reject_lease(lease_id, "attestation: GPU model mismatch").result
    assert refunded == deposit
    ledger.moved(tenant=deposit, market=-deposit)
    lease = m.tenant.lease(lease_id)
    assert lease.status == DealStatus.REJECTED
    assert m.tenant.accrued(lease_id) == 0
    p = m.stats(0)
    assert (p.leases_rejected, p.leases_completed, p.open_leases) == (1, 0, 0)


def test_rejection_after_grace_is_refused(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0)
    m.net.mine(t0 + GRACE)
    with pytest.raises(GracePeriodOver) as exc:
        m.tenant.reject_lease(lease_id, "too late")
    assert (exc.value.lease_id, exc.value.ended_at) == (lease_id, t0 + GRACE)
    assert "open a dispute instead" in str(exc.value)
    ledger.unchanged()
    assert m.stats(0).leases_rejected == 0


# -- disputes ------------------------------------------------------------------------


def test_dispute_with_slash_pays_the_tenant_from_the_stake(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(1, price=2 * TUSD, gpus=2, duration=3600)
    m.net.set_next_timestamp(t0 + 100)
    closed = m.tenant.close_lease(lease_id).result
    ledger.moved(provider1=closed["paid"], tenant=closed["refunded"], market=-4 * TUSD)

    m.tenant.open_dispute(lease_id, "results were garbage")
    assert m.tenant.lease(lease_id).disputed
    assert m.stats(1).open_disputes == 1
    ledger.moved()

    slashed = m.admin.resolve_dispute(lease_id, provider_at_fault=True, slash_amount=30 * TUSD).result
    assert slashed == 30 * TUSD
    ledger.moved(tenant=30 * TUSD, market=-30 * TUSD)
    p = m.stats(1)
    assert (p.stake, p.disputes_lost, p.open_disputes) == (STAKES["provider1"] - 30 * TUSD, 1, 0)
    assert not m.tenant.lease(lease_id).disputed


def test_slash_is_capped_at_the_stake(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, _ = m.lease(0)
    m.tenant.open_dispute(lease_id, b"evidence")
    ledger.moved()
    slashed = m.admin.resolve_dispute(lease_id, True, 10**12).result
    assert slashed == STAKES["provider0"]
    ledger.moved(tenant=STAKES["provider0"], market=-STAKES["provider0"])
    assert m.stats(0).stake == 0
    # the running lease is still fully backed
    m.net.set_next_timestamp(m.now() + 10)
    m.close(lease_id)


def test_dispute_resolved_for_the_provider_moves_nothing(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, _ = m.lease(0)
    m.tenant.open_dispute(lease_id, "slow")
    ledger.moved()
    tx = m.admin.resolve_dispute(lease_id, provider_at_fault=False, slash_amount=50 * TUSD)
    assert tx.result == 0
    ev = tx.event("DisputeResolved")
    assert (ev["providerAtFault"], ev["slashed"]) == (False, 0)
    ledger.moved()
    p = m.stats(0)
    assert (p.stake, p.disputes_lost, p.open_disputes) == (STAKES["provider0"], 0, 0)


def test_dispute_on_a_closed_lease_only_within_the_window(registered):
    from jupyter_gpumarket.chain.errors import DisputeWindowOver

    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(0)
    m.net.set_next_timestamp(t0 + 50)
    m.close(lease_id)
    m.net.mine(t0 + 50 + DISPUTE_WINDOW + 1)
    with pytest.raises(DisputeWindowOver) as exc:
        m.tenant.open_dispute(lease_id, "late")
    assert exc.value.closed_at == t0 + 50
    ledger.unchanged()


# -- protocol fee -------------------------------------------------------------------------


def test_protocol_fee_goes_to_treasury_and_the_books_balance(registered):
    m, ledger = registered, registered.ledger
    ev = m.admin.set_fee(250, TREASURY).event("FeeChanged")
    assert (ev["bps"], ev["treasury"]) == (250, TREASURY)
    assert m.admin.params()["fee_bps"] == 250
    price, gpus = 1_234_567, 3
    _, lease_id, t0 = m.lease(0, price=price, gpus=gpus, duration=3600)
    deposit = cost(price, gpus, 3600)

    m.net.advance(GRACE)
    m.net.set_next_timestamp(t0 + 1001)
    w = m.providers[0].withdraw(lease_id)
    gross1 = cost(price, gpus, 1001)
    fee1 = gross1 * 250 // 10_000
    assert w.result == gross1
    assert w.event("PaymentWithdrawn")["fee"] == fee1
    ledger.moved(provider0=gross1 - fee1, treasury=fee1, market=-gross1)

    m.net.set_next_timestamp(t0 + 2345)
    closed = m.tenant.close_lease(lease_id).result
    due = cost(price, gpus, 2345) - gross1
    fee2 = due * 250 // 10_000
    refund = deposit - cost(price, gpus, 2345)
    assert (closed["paid"], closed["fee"], closed["refunded"]) == (due - fee2, fee2, refund)
    ledger.moved(provider0=due - fee2, treasury=fee2, tenant=refund, market=-(due + refund))

    paid = (gross1 - fee1) + (due - fee2)
    fees = fee1 + fee2
    assert paid + fees + refund == deposit
    assert fees > 0


@pytest.mark.parametrize("bps", [1_001, 10_000, 65_535])
def test_fee_above_cap_is_refused(registered, bps):
    m, ledger = registered, registered.ledger
    with pytest.raises(FeeTooHigh) as exc:
        m.admin.set_fee(bps, TREASURY)
    assert isinstance(exc.value, InvalidRequest)
    assert (exc.value.bps, exc.value.max_bps) == (bps, 1_000)
    assert "choose at most 1000" in str(exc.value)
    assert m.admin.params()["fee_bps"] == 0
    ledger.unchanged()


def test_fee_at_cap_is_accepted(registered):
    registered.admin.set_fee(1_000, TREASURY)
    assert registered.admin.params()["fee_bps"] == 1_000


# -- unstake ----------------------------------------------------------------------------------


def test_unstake_waits_for_delay_and_open_leases(registered):
    m, ledger = registered, registered.ledger
    order_id, lease_id, t0 = m.lease(0)
    m.net.set_next_timestamp(t0 + 100)
    ev = m.providers[0].request_unstake().event("UnstakeRequested")
    ready = t0 + 100 + max(UNSTAKE_DELAY, DISPUTE_WINDOW)  # stake held through tenants' dispute window
    assert ev["readyAt"] == ready
    p = m.stats(0)
    assert (p.active, p.unstake_ready_at) == (False, ready)
    ledger.moved()

    # no new bids while unstaking
    other = m.order()
    with pytest.raises(ProviderInactive) as exc:
        m.bid(0, other)
    assert exc.value.provider_id == m.ids[0]
    ledger.unchanged()

    with pytest.raises(UnstakeNotReady) as exc:
        m.providers[0].complete_unstake()
    assert exc.value.ready_at == ready
    ledger.unchanged()

    m.net.mine(ready)
    with pytest.raises(ProviderBusy) as exc:
        m.providers[0].complete_unstake()
    assert (exc.value.open_leases, exc.value.open_disputes) == (1, 0)
    assert "settle them first" in str(exc.value)
    ledger.unchanged()

    m.close(lease_id)
    # The stake stays until the tenant's dispute window after the lease's end has passed.
    ended_at = m.tenant.lease(lease_id).ends_at
    held_until = max(ready, ended_at + DISPUTE_WINDOW)
    assert m.tenant.provider(m.ids[0]).unstake_ready_at == held_until
    if held_until > ready:
        with pytest.raises(UnstakeNotReady):
            m.providers[0].complete_unstake()
        m.net.mine(held_until)
    ev = m.providers[0].complete_unstake().event("Unstaked")
    assert ev["amount"] == STAKES["provider0"]
    ledger.moved(provider0=STAKES["provider0"], market=-STAKES["provider0"])
    p = m.stats(0)
    assert (p.stake, p.active, p.leases_completed) == (0, False, 1)


def test_open_dispute_blocks_unstake(registered):
    m, ledger = registered, registered.ledger
    _, lease_id, t0 = m.lease(2, price=1 * TUSD, gpus=1)
    m.net.set_next_timestamp(t0 + 10)
    m.close(lease_id)
    m.tenant.open_dispute(lease_id, "bad")
    m.providers[2].request_unstake()
    m.net.advance(max(UNSTAKE_DELAY, DISPUTE_WINDOW) + 1)
    ledger.moved()
    with pytest.raises(ProviderBusy) as exc:
        m.providers[2].complete_unstake()
    assert (exc.value.open_leases, exc.value.open_disputes) == (0, 1)
    ledger.unchanged()
    m.admin.resolve_dispute(lease_id, False)
    m.providers[2].complete_unstake()
    ledger.moved(provider2=STAKES["provider2"], market=-STAKES["provider2"])


# -- reputation ------------------------------------------------------------------------------


def test_reputation_counters(registered):
    m = registered
    # completed twice
    for _ in range(2):
        _, lease_id, t0 = m.lease(1, price=1 * TUSD, gpus=1)
        m.net.set_next_timestamp(t0 + 60)
        m.close(lease_id)
    # rejected once
    _, rejected, t0 = m.lease(1, price=1 * TUSD, gpus=1)
    assert m.tenant.reject_lease(rejected, "wrong GPU").result == 1 * TUSD
    m.ledger.moved(tenant=1 * TUSD, market=-1 * TUSD)
    # disputed and lost once (on a completed lease)
    m.tenant.open_dispute(lease_id, "bad results")
    m.admin.resolve_dispute(lease_id, True, 1 * TUSD)
    m.ledger.moved(tenant=1 * TUSD, market=-1 * TUSD)
    p = m.tenant.provider(m.ids[1])
    assert (p.leases_completed, p.leases_rejected, p.disputes_lost) == (2, 1, 1)
    assert (p.open_leases, p.open_disputes, p.stake) == (0, 0, STAKES["provider1"] - 1 * TUSD)
    assert p.reliability == pytest.approx(3 / 6)
    # the others are untouched
    for i in (0, 2):
        q = m.tenant.provider(m.ids[i])
        assert (q.leases_completed, q.leases_rejected, q.disputes_lost) == (0, 0, 0)
    m.ledger.assert_solvent()


def test_provider_view_reads_strings_from_events(registered):
    m = registered
    p = m.tenant.provider(m.ids[0])
    claim = PROVIDER_CLAIMS["provider0"]
    assert (p.claim.gpu_model, p.claim.gpu_count, p.claim.memory_gib, p.region, p.endpoint) == (
        claim.gpu_model,
        claim.gpu_count,
        claim.memory_gib,
        "eu-west",
        "tls://provider0:8786",
    )
    assert p.claim.tflops_x100 == claim.tflops_x100
    new = type(claim)("NVIDIA H200", 4, 141, 989.5)
    m.providers[0].update_provider(new, "us-east", "tls://h200:1")
    p = m.tenant.provider(m.ids[0])
    assert (p.claim.gpu_model, p.claim.gpu_count, p.claim.memory_gib, p.region, p.endpoint) == (
        "NVIDIA H200",
        4,
        141,
        "us-east",
        "tls://h200:1",
    )
    assert p.stake == STAKES["provider0"]
    assert [q.id for q in m.tenant.providers()] == [1, 2, 3]


def test_order_view_keeps_the_spec(registered):
    m = registered
    tx = m.tenant.create_order(GpuSpec(3, "H100|A100", 40, "eu-west"), 3 * TUSD, 3600, 60, 5 * TUSD, FP, approve=True)
    order = m.tenant.order(tx.result)
    assert order.spec == GpuSpec(3, "H100|A100", 40, "eu-west")
    assert order.tenant_cert_fingerprint == FP
    assert order.bidding_ends_at == m.tenant.w3.eth.get_block(tx.block_number)["timestamp"] + 60
