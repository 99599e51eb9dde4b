"""Who may do what: every state-changing function refuses the wrong caller by name.

Refusals run against the shared ``scene`` (see conftest) and check the named
error, its Python category (NotAuthorized is a PermissionError), its typed
attributes, and that nothing was sent and nothing moved. The pause switch blocks
new business but never the ways money gets out.
"""

from __future__ import annotations

import pytest

from jupyter_gpumarket.chain import errors as E
from jupyter_gpumarket.chain.client import ROLES
from jupyter_gpumarket.errors import NotAuthorized, WrongState
from jupyter_gpumarket.spec import GpuSpec, HardwareClaim
from tests.chain.conftest import FP, GRACE, MIN_STAKE, TREASURY, TUSD

CLAIM = HardwareClaim("NVIDIA L4", 1, 24, 121.0)


def role_hex(name: str) -> str:
    return "0x" + bytes(ROLES[name]).hex()


def lacks(role_name):
    return E.AccessControlUnauthorizedAccount, lambda s, c: {"account": c.address, "needed_role": role_hex(role_name)}


WRONG_CALLERS = [
    # (caller role, action, error, expected attributes given (scene, caller))
    ("stranger", lambda s, c: c.close_lease(s.lease), E.NotLeaseParty,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("provider0", lambda s, c: c.close_lease(s.lease), E.NotLeaseParty,  # provider of another lease
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("stranger", lambda s, c: c.withdraw(s.lease), E.NotLeaseProvider,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("tenant", lambda s, c: c.withdraw(s.lease), E.NotLeaseProvider,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("provider0", lambda s, c: c.withdraw(s.lease), E.NotLeaseProvider,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("stranger", lambda s, c: c.accept_bids(s.o, [s.b0]), E.NotOrderTenant,
     lambda s, c: {"order_id": s.o, "caller": c.address}),
    ("provider0", lambda s, c: c.accept_bids(s.o, [s.b0]), E.NotOrderTenant,  # accepting its own bid
     lambda s, c: {"order_id": s.o, "caller": c.address}),
    ("stranger", lambda s, c: c.close_order(s.o), E.NotOrderTenant,
     lambda s, c: {"order_id": s.o, "caller": c.address}),
    ("stranger", lambda s, c: c.top_up(s.lease, 1 * TUSD), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("provider1", lambda s, c: c.top_up(s.lease, 1 * TUSD), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("provider1", lambda s, c: c.reject_lease(s.lease, "mine"), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("stranger", lambda s, c: c.reject_lease(s.lease, "x"), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("stranger", lambda s, c: c.open_dispute(s.lease, "x"), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("provider1", lambda s, c: c.open_dispute(s.lease, "x"), E.NotLeaseTenant,
     lambda s, c: {"lease_id": s.lease, "caller": c.address}),
    ("stranger", lambda s, c: c.resolve_dispute(s.closed_lease, True, 50 * TUSD), *lacks("ARBITER_ROLE")),
    ("tenant", lambda s, c: c.resolve_dispute(s.closed_lease, True, 50 * TUSD), *lacks("ARBITER_ROLE")),
    ("provider0", lambda s, c: c.resolve_dispute(s.closed_lease, False), *lacks("ARBITER_ROLE")),
    ("stranger", lambda s, c: c.pause(), *lacks("PAUSER_ROLE")),
    ("tenant", lambda s, c: c.pause(), *lacks("PAUSER_ROLE")),
    ("stranger", lambda s, c: c.unpause(), *lacks("PAUSER_ROLE")),
    ("stranger", lambda s, c: c.set_fee(100, c.address), *lacks("DEFAULT_ADMIN_ROLE")),
    ("provider0", lambda s, c: c.set_fee(0, TREASURY), *lacks("DEFAULT_ADMIN_ROLE")),
    ("stranger", lambda s, c: c.set_params(0, 0, 0), *lacks("DEFAULT_ADMIN_ROLE")),
    ("tenant", lambda s, c: c.set_params(MIN_STAKE, 1, 1), *lacks("DEFAULT_ADMIN_ROLE")),
    ("stranger", lambda s, c: c.grant_role("ARBITER_ROLE", c.address), *lacks("DEFAULT_ADMIN_ROLE")),
    ("stranger", lambda s, c: c.place_bid(s.o_open, 1 * TUSD, 1), E.NotRegistered,
     lambda s, c: {"account": c.address}),
    ("tenant", lambda s, c: c.place_bid(s.o_open, 1 * TUSD, 1), E.NotRegistered,
     lambda s, c: {"account": c.address}),
    ("provider1", lambda s, c: c.withdraw_bid(s.b0), E.NotBidProvider,
     lambda s, c: {"bid_id": s.b0, "caller": c.address}),
    ("stranger", lambda s, c: c.withdraw_bid(s.b0), E.NotBidProvider,
     lambda s, c: {"bid_id": s.b0, "caller": c.address}),
    ("stranger", lambda s, c: c.update_provider(CLAIM, "eu", "tls://x:1"), E.NotRegistered,
     lambda s, c: {"account": c.address}),
    ("stranger", lambda s, c: c.add_stake(1 * TUSD), E.NotRegistered, lambda s, c: {"account": c.address}),
    ("tenant", lambda s, c: c.request_unstake(), E.NotRegistered, lambda s, c: {"account": c.address}),
    ("stranger", lambda s, c: c.complete_unstake(), E.NotRegistered, lambda s, c: {"account": c.address}),
]


def _id(case):
    role, _, error, _ = case
    return f"{role}-{error.__name__}"


@pytest.mark.parametrize(("role", "action", "error", "attrs"), WRONG_CALLERS, ids=[_id(c) for c in WRONG_CALLERS])
def test_wrong_caller_is_refused_by_name(fresh, role, action, error, attrs):
    s = fresh
    caller = s.m.client(role)
    with pytest.raises(error) as exc:
        action(s, caller)
    err = exc.value
    assert isinstance(err, NotAuthorized) and isinstance(err, PermissionError)
    for name, value in attrs(s, caller).items():
        assert getattr(err, name) == value, name
        assert str(value) in str(err)
    assert s.m.tenant.w3.eth.block_number == s.block
    s.m.ledger.unchanged()


def test_mint_by_non_owner_is_not_authorized(fresh):
    """The token's Ownable refusal should surface like the market's: NotAuthorized, naming the account."""
    s = fresh
    with pytest.raises(NotAuthorized) as exc:
        s.m.tenant.mint(s.m.tenant.address, 1_000 * TUSD)
    assert exc.value.account == s.m.tenant.address
    assert s.m.tenant.w3.eth.block_number == s.block
    s.m.ledger.unchanged()


def test_roles_granted_by_admin_take_effect(fresh):
    s = fresh
    m = s.m
    m.admin.grant_role("ARBITER_ROLE", m.stranger.address)
    slashed = m.stranger.resolve_dispute(s.closed_lease, True, 5 * TUSD).result
    assert slashed == 5 * TUSD
    m.ledger.moved(tenant=5 * TUSD, market=-5 * TUSD)
    m.admin.grant_role("PAUSER_ROLE", m.stranger.address)
    m.stranger.pause()
    assert m.admin.market.functions.paused().call()


# -- pause ----------------------------------------------------------------------------------


BLOCKED_WHEN_PAUSED = [
    pytest.param(lambda s: s.m.tenant.create_order(GpuSpec(1), 1 * TUSD, 3600, 60, 1 * TUSD, FP), id="createOrder"),
    pytest.param(lambda s: s.m.tenant.create_order(GpuSpec(1), 1 * TUSD, 3600, 60, 1 * TUSD, FP, permit=True),
                 id="createOrderWithPermit"),
    pytest.param(lambda s: s.m.providers[1].place_bid(s.o_open, 1 * TUSD, 1), id="placeBid"),
    pytest.param(lambda s: s.m.tenant.accept_bids(s.o, []), id="acceptBids"),
    pytest.param(lambda s: s.m.providers[2].register_provider(CLAIM, "eu", "tls://x:1", MIN_STAKE), id="registerProvider"),
    pytest.param(lambda s: s.m.tenant.top_up(s.lease, 1 * TUSD), id="topUp"),
]


@pytest.mark.parametrize("call", BLOCKED_WHEN_PAUSED)
def test_pause_blocks_new_business(fresh, call):
    s = fresh
    s.m.admin.pause()
    s.m.ledger.moved()
    block = s.m.tenant.w3.eth.block_number
    with pytest.raises(E.EnforcedPause) as exc:
        call(s)
    assert isinstance(exc.value, WrongState)
    assert "try again when it is unpaused" in str(exc.value)
    assert s.m.tenant.w3.eth.block_number == block
    s.m.ledger.unchanged()


def test_pause_never_traps_money(fresh):
    s = fresh
    m = s.m
    lease = m.tenant.lease(s.lease)
    m.admin.pause()
    rate = lease.price_per_gpu_hour * lease.gpus
    # the provider withdraws what accrued
    t = m.net.advance(GRACE + 1)
    m.net.set_next_timestamp(t + 10)
    got = m.providers[1].withdraw(s.lease).result
    assert got == rate * (t + 10 - lease.started_at) // 3600
    m.ledger.moved(provider1=got, market=-got)
    # the tenant closes the lease early and the order, getting every unspent unit back
    m.net.set_next_timestamp(t + 20)
    closed = m.close(s.lease)
    assert closed["refunded"] == lease.deposit - rate * (t + 20 - lease.started_at) // 3600
    escrow = m.tenant.order(s.o).escrow
    assert escrow > 0
    m.tenant.close_order(s.o)
    m.ledger.moved(tenant=escrow, market=-escrow)
    # disputes and unstaking go on too
    m.admin.resolve_dispute(s.closed_lease, False)
    m.providers[0].request_unstake()
    m.ledger.moved()
    # and unpausing restores business
    m.admin.unpause()
    o = m.order(gpus=1, max_price=1 * TUSD, deposit=1 * TUSD)
    m.bid(1, o, price=1 * TUSD, gpus=1)


def test_pause_and_unpause_state_errors(fresh):
    s = fresh
    with pytest.raises(E.ExpectedPause):
        s.m.admin.unpause()
    s.m.admin.pause()
    with pytest.raises(E.EnforcedPause):
        s.m.admin.pause()
