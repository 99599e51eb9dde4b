"""Bad input is refused with a named error, and nothing moves.

Each case runs against the shared ``scene`` (see conftest) and checks:
the exception's class and category, its typed attributes, that its message
says what to change, that no transaction was mined, and that every balance
and every order, bid, lease and provider is exactly as before.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jupyter_gpumarket.chain import errors as E
from jupyter_gpumarket.errors import InsufficientFunds, InvalidRequest, NotAuthorized, NotFound, WrongState
from jupyter_gpumarket.spec import GpuSpec, HardwareClaim
from tests.chain.conftest import FP, MIN_STAKE, TUSD


def order(s, client=None, gpus=2, max_price=3 * TUSD, duration=3600, window=600, deposit=5 * TUSD, spec=None):
    """create_order without approve: only the create transaction could be sent."""
    spec = spec or GpuSpec(gpus)
    return (client or s.m.tenant).create_order(spec, max_price, duration, window, deposit, FP)


def zero_gpu_spec():
    # GpuSpec refuses count=0 in Python already; this stand-in lets the contract see 0.
    return SimpleNamespace(count=0, min_memory_gib=0, model="", region="")


CASES = [
    # -- orders --------------------------------------------------------------------------
    pytest.param(
        lambda s: order(s, spec=zero_gpu_spec()), E.ZeroGpus, lambda s: {}, "at least 1 GPU", id="order-zero-gpus"
    ),
    pytest.param(lambda s: order(s, duration=0), E.ZeroDuration, lambda s: {}, "at least 1 second", id="order-zero-duration"),
    pytest.param(
        lambda s: order(s, window=0), E.ZeroBiddingWindow, lambda s: {}, "at least 1 second to bid", id="order-zero-window"
    ),
    pytest.param(lambda s: order(s, max_price=0), E.ZeroPrice, lambda s: {}, "above 0", id="order-zero-price"),
    pytest.param(lambda s: order(s, deposit=0), E.ZeroAmount, lambda s: {}, "more than 0", id="order-zero-deposit"),
    pytest.param(
        lambda s: order(s, deposit=5 * TUSD),
        E.ERC20InsufficientAllowance,
        lambda s: {"spender": s.m.tenant.market.address, "allowance": 0, "needed": 5 * TUSD},
        "approve at least 5000000",
        id="order-no-allowance",
    ),
    pytest.param(
        lambda s: order(s, client=s.m.stranger, deposit=7 * TUSD),
        E.ERC20InsufficientBalance,
        lambda s: {"sender": s.m.stranger.address, "balance": 0, "needed": 7 * TUSD},
        "fund the account",
        id="order-no-balance",
    ),
    pytest.param(
        lambda s: s.m.tenant.close_order(s.o_closed),
        E.OrderNotOpen,
        lambda s: {"order_id": s.o_closed},
        "create a new order",
        id="close-order-twice",
    ),
    pytest.param(
        lambda s: s.m.tenant.close_order(999), E.OrderNotFound, lambda s: {"order_id": 999}, "check the order id",
        id="close-unknown-order",
    ),
    # -- bids ----------------------------------------------------------------------------
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o_open, 2 * TUSD, 0), E.ZeroGpus, lambda s: {}, "at least 1 GPU",
        id="bid-zero-gpus",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o_open, 0, 1), E.ZeroPrice, lambda s: {}, "above 0", id="bid-zero-price"
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o_open, 3 * TUSD + 1, 1),
        E.PriceAboveMax,
        lambda s: {"price": 3 * TUSD + 1, "max_price": 3 * TUSD},
        "bid at or under the max",
        id="bid-above-max",
    ),
    pytest.param(
        lambda s: s.m.providers[1].place_bid(s.o_open, 2 * TUSD, 3),  # order wants 2
        E.TooManyGpus,
        lambda s: {"requested": 3, "available": 2},
        "ask for 2 or fewer",
        id="bid-more-gpus-than-asked",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o, 2 * TUSD, 2),  # 1 of 3 GPUs left after the lease
        E.TooManyGpus,
        lambda s: {"requested": 2, "available": 1},
        "ask for 1 or fewer",
        id="bid-more-gpus-than-left",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o_late, 1 * TUSD, 1),
        E.BiddingClosed,
        lambda s: {"order_id": s.o_late, "bidding_ended_at": s.m.tenant.order(s.o_late).bidding_ends_at},
        "ended at unix time",
        id="bid-after-window",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o, 1 * TUSD, 1),
        E.DuplicateBid,
        lambda s: {"order_id": s.o, "bid_id": s.b0},
        "withdraw it before bidding again",
        id="bid-twice",
    ),
    pytest.param(
        lambda s: s.m.providers[2].place_bid(s.o_open, 2 * TUSD, 1),
        E.NotRegistered,
        lambda s: {"account": s.m.providers[2].address},
        "register with a stake first",
        id="bid-unregistered",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(999, 2 * TUSD, 1),
        E.OrderNotFound,
        lambda s: {"order_id": 999},
        "check the order id",
        id="bid-unknown-order",
    ),
    pytest.param(
        lambda s: s.m.providers[0].place_bid(s.o_closed, 1 * TUSD, 1),
        E.OrderNotOpen,
        lambda s: {"order_id": s.o_closed},
        "create a new order",
        id="bid-closed-order",
    ),
    pytest.param(
        lambda s: s.m.providers[1].withdraw_bid(s.b1),  # accepted: it is a lease now
        E.BidNotLive,
        lambda s: {"bid_id": s.b1},
        "accepted or withdrawn",
        id="withdraw-accepted-bid",
    ),
    pytest.param(
        lambda s: s.m.providers[0].withdraw_bid(999), E.BidNotFound, lambda s: {"bid_id": 999}, "check the bid id",
        id="withdraw-unknown-bid",
    ),
    # -- accepting -------------------------------------------------------------------------
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o, [s.b1]),
        E.BidNotLive,
        lambda s: {"bid_id": s.b1},
        "accepted or withdrawn",
        id="accept-twice",
    ),
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o, [s.b0]),
        E.TooManyGpus,
        lambda s: {"requested": 2, "available": 1},
        "ask for 1 or fewer",
        id="accept-more-gpus-than-asked",
    ),
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o, [s.b_ex]),
        E.BidNotForOrder,
        lambda s: {"bid_id": s.b_ex, "order_id": s.o},
        "accept bids of this order",
        id="accept-bid-of-another-order",
    ),
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o, [999]), E.BidNotFound, lambda s: {"bid_id": 999}, "check the bid id",
        id="accept-unknown-bid",
    ),
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o_ex, [s.b_ex]),
        E.EscrowExhausted,
        lambda s: {"order_id": s.o_ex},
        "create a new order",
        id="accept-without-escrow",
    ),
    pytest.param(
        lambda s: s.m.tenant.accept_bids(s.o_closed, [s.b0]),
        E.OrderNotOpen,
        lambda s: {"order_id": s.o_closed},
        "create a new order",
        id="accept-on-closed-order",
    ),
    # -- leases ------------------------------------------------------------------------------
    pytest.param(
        lambda s: s.m.tenant.close_lease(s.closed_lease),
        E.LeaseNotActive,
        lambda s: {"lease_id": s.closed_lease},
        "already closed",
        id="close-twice",
    ),
    pytest.param(
        lambda s: s.m.tenant.close_lease(999), E.LeaseNotFound, lambda s: {"lease_id": 999}, "check the lease id",
        id="close-unknown-lease",
    ),
    pytest.param(
        lambda s: s.m.tenant.close_lease(s.b0),  # a bid, not yet a lease
        E.LeaseNotActive,
        lambda s: {"lease_id": s.b0},
        "never accepted",
        id="close-a-bid",
    ),
    pytest.param(
        lambda s: s.m.stranger.withdraw(s.lease),
        E.NotLeaseProvider,
        lambda s: {"lease_id": s.lease, "caller": s.m.stranger.address},
        "use the provider's account",
        id="withdraw-by-stranger",
    ),
    pytest.param(
        lambda s: s.m.providers[0].withdraw(s.closed_lease),
        E.LeaseNotActive,
        lambda s: {"lease_id": s.closed_lease},
        "already closed",
        id="withdraw-closed-lease",
    ),
    pytest.param(
        lambda s: s.m.tenant.top_up(s.lease, 0), E.ZeroAmount, lambda s: {}, "more than 0", id="top-up-zero"
    ),
    pytest.param(
        lambda s: s.m.tenant.top_up(s.lease, 1 * TUSD),
        E.ERC20InsufficientAllowance,
        lambda s: {"allowance": 0, "needed": 1 * TUSD},
        "approve at least 1000000",
        id="top-up-no-allowance",
    ),
    pytest.param(
        lambda s: s.m.tenant.top_up(s.closed_lease, 1 * TUSD),
        E.LeaseNotActive,
        lambda s: {"lease_id": s.closed_lease},
        "already closed",
        id="top-up-closed-lease",
    ),
    pytest.param(
        lambda s: s.m.tenant.reject_lease(s.closed_lease, "late"),
        E.LeaseNotActive,
        lambda s: {"lease_id": s.closed_lease},
        "already closed",
        id="reject-closed-lease",
    ),
    # -- disputes ------------------------------------------------------------------------------
    pytest.param(
        lambda s: s.m.tenant.open_dispute(s.closed_lease, "again"),
        E.DisputeAlreadyOpen,
        lambda s: {"lease_id": s.closed_lease},
        "already has an open dispute",
        id="dispute-twice",
    ),
    pytest.param(
        lambda s: s.m.admin.resolve_dispute(s.lease, True, 1 * TUSD),
        E.NoOpenDispute,
        lambda s: {"lease_id": s.lease},
        "no open dispute",
        id="resolve-without-dispute",
    ),
    pytest.param(
        lambda s: s.m.tenant.open_dispute(s.b0, "not a lease"),
        E.LeaseNotActive,
        lambda s: {"lease_id": s.b0},
        "never accepted",
        id="dispute-a-bid",
    ),
    # -- providers -------------------------------------------------------------------------------
    pytest.param(
        lambda s: s.m.providers[0].register_provider(HardwareClaim("H100", 8, 80, 989.0), "eu", "e", MIN_STAKE),
        E.AlreadyRegistered,
        lambda s: {"account": s.m.providers[0].address, "provider_id": s.m.ids[0]},
        "use updateProvider instead",
        id="register-twice",
    ),
    pytest.param(
        lambda s: s.m.providers[2].register_provider(HardwareClaim("4090", 2, 24, 165.0), "eu", "e", MIN_STAKE - 1),
        E.StakeTooLow,
        lambda s: {"stake": MIN_STAKE - 1, "min_stake": MIN_STAKE},
        f"stake at least {MIN_STAKE}",
        id="register-stake-too-low",
    ),
    pytest.param(
        lambda s: s.m.providers[2].register_provider(HardwareClaim("4090", 0, 24, 165.0), "eu", "e", MIN_STAKE),
        E.ZeroGpus,
        lambda s: {},
        "at least 1 GPU",
        id="register-zero-gpus",
    ),
    pytest.param(
        lambda s: s.m.providers[2].register_provider(HardwareClaim("4090", 2, 24, 165.0), "eu", "e", MIN_STAKE),
        E.ERC20InsufficientAllowance,
        lambda s: {"allowance": 0, "needed": MIN_STAKE},
        f"approve at least {MIN_STAKE}",
        id="register-without-approve",
    ),
    pytest.param(
        lambda s: s.m.providers[0].complete_unstake(),
        E.UnstakeNotRequested,
        lambda s: {"provider_id": s.m.ids[0]},
        "call requestUnstake first",
        id="unstake-not-requested",
    ),
    pytest.param(
        lambda s: s.m.providers[0].update_provider(HardwareClaim("H100", 0, 80, 989.0), "eu", "e"),
        E.ZeroGpus,
        lambda s: {},
        "at least 1 GPU",
        id="update-zero-gpus",
    ),
]


@pytest.mark.parametrize(("call", "error", "attrs", "hint"), CASES)
def test_refused_and_nothing_moved(fresh, call, error, attrs, hint):
    s = fresh
    with pytest.raises(error) as exc:
        call(s)
    err = exc.value
    assert type(err) is error
    for name, value in attrs(s).items():
        assert getattr(err, name) == value, name
    assert hint in str(err)
    # the numbers it names are in the message too
    for value in attrs(s).values():
        assert str(value) in str(err)
    assert s.m.tenant.w3.eth.block_number == s.block, "a refused call must not send anything"
    s.m.ledger.unchanged()


CATEGORIES = {
    E.ZeroGpus: InvalidRequest,
    E.PriceAboveMax: InvalidRequest,
    E.TooManyGpus: InvalidRequest,
    E.DuplicateBid: InvalidRequest,
    E.BidNotForOrder: InvalidRequest,
    E.StakeTooLow: InsufficientFunds,
    E.EscrowExhausted: InsufficientFunds,
    E.ERC20InsufficientAllowance: InsufficientFunds,
    E.ERC20InsufficientBalance: InsufficientFunds,
    E.NotRegistered: NotAuthorized,
    E.NotLeaseProvider: NotAuthorized,
    E.OrderNotFound: NotFound,
    E.BidNotFound: NotFound,
    E.LeaseNotFound: NotFound,
    E.BidNotLive: WrongState,
    E.LeaseNotActive: WrongState,
    E.BiddingClosed: WrongState,
    E.OrderNotOpen: WrongState,
    E.DisputeAlreadyOpen: WrongState,
}


@pytest.mark.parametrize("error", list(CATEGORIES), ids=lambda e: e.__name__)
def test_error_categories(error):
    category = CATEGORIES[error]
    assert issubclass(error, category)
    builtin = {InvalidRequest: ValueError, InsufficientFunds: ValueError, NotAuthorized: PermissionError,
               NotFound: LookupError, WrongState: RuntimeError}[category]
    assert issubclass(error, builtin)


def test_withdraw_when_nothing_is_due(fresh):
    s = fresh
    m = s.m
    started = m.tenant.lease(s.lease).started_at
    m.net.mine(started + 40)
    m.net.set_next_timestamp(started + 41)
    amount = m.providers[1].withdraw(s.lease).result
    m.ledger.moved(provider1=amount, market=-amount)
    block = m.tenant.w3.eth.block_number
    with pytest.raises(E.NothingToWithdraw) as exc:
        m.providers[1].withdraw(s.lease)  # simulated at the latest block: nothing new has accrued
    assert exc.value.lease_id == s.lease
    assert m.tenant.w3.eth.block_number == block
    m.ledger.unchanged()


def test_refused_order_leaves_no_order(fresh):
    s = fresh
    count = s.m.tenant.market.functions.orderCount().call()
    with pytest.raises(E.ZeroDuration):
        order(s, duration=0)
    assert s.m.tenant.market.functions.orderCount().call() == count
    with pytest.raises(E.OrderNotFound):
        s.m.tenant.order(count + 1)


def test_refused_bid_leaves_no_bid(fresh):
    s = fresh
    count = s.m.tenant.market.functions.bidCount().call()
    with pytest.raises(E.PriceAboveMax):
        s.m.providers[0].place_bid(s.o_open, 4 * TUSD, 1)
    assert s.m.tenant.market.functions.bidCount().call() == count
    assert s.m.tenant.bids(s.o_open) == []
    assert s.m.tenant.bid_of(s.o_open, s.m.ids[0]) == 0


def test_python_side_refusals_send_nothing(fresh):
    s = fresh
    with pytest.raises(InvalidRequest, match="at least 1 GPU"):
        GpuSpec(0)
    with pytest.raises(InvalidRequest, match="more than zero"):
        s.m.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, -1)
    with pytest.raises(InvalidRequest, match="at most 32 bytes"):
        s.m.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, 1 * TUSD, b"x" * 33)
    with pytest.raises(InvalidRequest, match="more than zero"):
        s.m.providers[0].add_stake(0)
    assert s.m.tenant.w3.eth.block_number == s.block
    s.m.ledger.unchanged()
