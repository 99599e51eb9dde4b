"""MarketClient on its own terms: amounts, keys, decoded errors, permits, connecting."""

from __future__ import annotations

import pickle
import re
from decimal import Decimal
from pathlib import Path

import pytest
from eth_abi import encode as abi_encode
from eth_utils import keccak

from jupyter_gpumarket.chain import MarketClient, Signer, contracts
from jupyter_gpumarket.chain import errors as E
from jupyter_gpumarket.chain.client import Tx
from jupyter_gpumarket.chain.devnet import dev_signer, free_port
from jupyter_gpumarket.errors import ChainUnavailable, GpuMarketError, InvalidRequest
from jupyter_gpumarket.spec import GpuSpec, HardwareClaim
from tests.chain.conftest import FP, MIN_STAKE, TUSD

# -- amounts are ints of base units, refused before anything is sent ---------------------------

FLOAT_AMOUNTS = [
    pytest.param(lambda m, x: m.tenant.approve(x), id="approve"),
    pytest.param(lambda m, x: m.tenant.transfer(m.stranger.address, x), id="transfer"),
    pytest.param(lambda m, x: m.admin.mint(m.tenant.address, x), id="mint"),
    pytest.param(lambda m, x: m.providers[0].register_provider(HardwareClaim("H100", 8, 80, 1.0), "eu", "e", x),
                 id="register-stake"),
    pytest.param(lambda m, x: m.providers[0].add_stake(x), id="add_stake"),
    pytest.param(lambda m, x: m.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, x, approve=True), id="order-deposit"),
    pytest.param(lambda m, x: m.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, x, permit=True), id="permit-deposit"),
    pytest.param(lambda m, x: m.tenant.create_order(GpuSpec(1), x, 3600, 60, 1 * TUSD), id="order-max-price"),
    pytest.param(lambda m, x: m.providers[0].place_bid(1, x, 1), id="bid-price"),
    pytest.param(lambda m, x: m.tenant.top_up(1, x, approve=True), id="top_up"),
    pytest.param(lambda m, x: m.admin.resolve_dispute(1, True, x), id="resolve-slash"),
    pytest.param(lambda m, x: m.admin.set_params(x, 600, 86_400), id="set_params-min-stake"),
]


@pytest.mark.parametrize("call", FLOAT_AMOUNTS)
def test_non_int_amounts_are_refused_before_any_transaction(market, call):
    m = market
    block = m.tenant.w3.eth.block_number
    for value in (2.5, 2_500_000.0, Decimal("2.5"), "2500000", True):
        with pytest.raises(InvalidRequest) as exc:
            call(m, value)
        assert "int of token base units" in str(exc.value), value
        assert "Money.parse" in str(exc.value)  # says how to get there from a decimal
    assert m.tenant.w3.eth.block_number == block
    m.ledger.unchanged()


@pytest.mark.parametrize("value", [-1, -10**6])
def test_negative_amounts_are_refused(market, value):
    with pytest.raises(InvalidRequest, match="more than zero"):
        market.tenant.approve(value)
    with pytest.raises(InvalidRequest, match="more than zero"):
        market.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, value)


# -- keys never show ---------------------------------------------------------------------


def test_signer_repr_hides_the_key(net):
    signer = dev_signer(1)
    key_hex = signer._account.key.hex().removeprefix("0x")
    assert len(key_hex) == 64
    client = net.client("tenant")
    for text in (repr(signer), str(signer), f"{signer}", repr(client), str(client), repr(net)):
        assert key_hex.lower() not in text.lower()
    assert repr(signer) == f"Signer({signer.address})"
    assert signer.address in repr(client)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(signer)
    with pytest.raises(TypeError):
        pickle.dumps(client)


def test_malformed_key_is_not_echoed():
    bad = "0x" + "ab" * 31 + "zz"
    with pytest.raises(InvalidRequest) as exc:
        Signer.from_key(bad)
    assert bad not in str(exc.value) and "ab" * 31 not in str(exc.value)
    assert "64 hex digits" in str(exc.value)


def test_read_only_client_refuses_transactions(net):
    ro = MarketClient.connect(net.info.rpc_url, net.info.market)
    assert "read-only" in repr(ro)
    assert ro.params()["min_stake"] == MIN_STAKE
    with pytest.raises(InvalidRequest, match="pass signer="):
        ro.approve(1)
    tenant = ro.with_signer(net.signer("tenant"))
    assert tenant.address == net.info.addresses["tenant"]
    assert tenant.w3 is ro.w3 and ro.signer is None


# -- errors decoded with typed attributes ----------------------------------------------------------


def _abi_errors(name):
    return [e for e in contracts.abi(name) if e["type"] == "error"]


def _selector(entry):
    types = ",".join(i["type"] for i in entry["inputs"])
    return keccak(text=f"{entry['name']}({types})")[:4]


SAMPLE = {"address": "0x" + "11" * 20, "bytes32": b"\x22" * 32}


def _sample(abi_type, i):
    return SAMPLE.get(abi_type, 1_000 + i)


DECLARED = set(re.findall(r"^\s*error (\w+)\(", (Path(contracts.__file__).parent / "contracts" / "GpuMarket.sol").read_text(), re.M))
# OpenZeppelin errors a market user meets: roles, pause, and the token's allowance/balance/permit
SURFACED = {"AccessControlUnauthorizedAccount", "EnforcedPause", "ExpectedPause", "ERC20InsufficientAllowance",
            "ERC20InsufficientBalance", "ERC2612ExpiredSignature", "ERC2612InvalidSigner"}
ABI_ERRORS = {e["name"]: e for e in _abi_errors("GpuMarket") + _abi_errors("TestDollar")}


def test_every_declared_error_is_in_the_abi():
    assert DECLARED and DECLARED <= set(ABI_ERRORS)


@pytest.mark.parametrize("entry", [ABI_ERRORS[n] for n in sorted(DECLARED | SURFACED)], ids=lambda e: e["name"])
def test_every_contract_error_decodes_to_its_named_class(entry):
    decoder = E.ErrorDecoder(contracts.abi("GpuMarket"), contracts.abi("TestDollar"))
    types = [i["type"] for i in entry["inputs"]]
    values = [_sample(t, i) for i, t in enumerate(types)]
    err = decoder.decode("0x" + (_selector(entry) + abi_encode(types, values)).hex())
    assert type(err).__name__ == entry["name"], "every Solidity error has a Python class of the same name"
    assert isinstance(err, GpuMarketError)
    for inp, value in zip(entry["inputs"], values):
        attr = E.snake_case(inp["name"])
        got = getattr(err, attr)
        assert got == (value if not isinstance(value, bytes) else "0x" + value.hex())
        if inp["type"] != "bytes32":
            assert str(got) in str(err), f"{entry['name']} message names its {attr}"


def test_decoded_error_attributes_and_message():
    decoder = E.ErrorDecoder(contracts.abi("GpuMarket"))
    (entry,) = [e for e in _abi_errors("GpuMarket") if e["name"] == "PriceAboveMax"]
    data = _selector(entry) + abi_encode(["uint96", "uint96"], [5_000_000, 4_000_000])
    err = decoder.decode(data)
    assert isinstance(err, E.PriceAboveMax) and isinstance(err, ValueError)
    assert (err.price, err.max_price) == (5_000_000, 4_000_000)
    assert err.fields == {"price": 5_000_000, "max_price": 4_000_000}
    assert str(err) == (
        "bid price 5000000 is above the order max 4000000 (base units per GPU-hour); bid at or under the max"
    )


def test_unknown_revert_data_is_reported_not_swallowed():
    decoder = E.ErrorDecoder(contracts.abi("GpuMarket"))
    err = decoder.decode("0xdeadbeef00", fallback="execution reverted")
    assert isinstance(err, E.UnknownRevert)
    assert "execution reverted" in str(err)
    assert isinstance(decoder.decode(None), E.UnknownRevert)


def test_live_revert_carries_typed_attributes(registered):
    m = registered
    order_id = m.order(gpus=2, max_price=3 * TUSD)
    with pytest.raises(InvalidRequest) as exc:  # caught by category too
        m.providers[0].place_bid(order_id, 3 * TUSD + 7, 1)
    err = exc.value
    assert isinstance(err, E.PriceAboveMax)
    assert (err.price, err.max_price) == (3 * TUSD + 7, 3 * TUSD)
    assert isinstance(err.price, int)
    m.ledger.unchanged()


# -- permit -----------------------------------------------------------------------------------


def test_permit_creates_an_order_in_one_transaction(market):
    m = market
    nonce = m.tenant.w3.eth.get_transaction_count(m.tenant.address)
    tx = m.tenant.create_order(GpuSpec(2), 3 * TUSD, 3600, 60, 6 * TUSD, FP, permit=True)
    assert m.tenant.w3.eth.get_transaction_count(m.tenant.address) == nonce + 1
    assert isinstance(tx, Tx)
    assert tx.hash.startswith("0x") and len(tx.hash) == 66
    assert tx.gas_used > 0 and tx.block_number == m.tenant.w3.eth.block_number
    assert tx.event("OrderCreated")["deposit"] == 6 * TUSD
    assert tx.event("Approval")["value"] == 6 * TUSD  # the permit
    transfer = tx.event("Transfer")
    assert (transfer["from"], transfer["to"], transfer["value"]) == (m.tenant.address, m.tenant.market.address, 6 * TUSD)
    assert m.tenant.allowance() == 0
    assert m.tenant.token.functions.nonces(m.tenant.address).call() == 1
    m.ledger.moved(tenant=-6 * TUSD, market=6 * TUSD)


def test_expired_permit_is_refused_and_nothing_moves(market):
    m = market
    with pytest.raises(E.ERC20InsufficientAllowance) as exc:
        m.tenant.create_order(GpuSpec(2), 3 * TUSD, 3600, 60, 6 * TUSD, FP, permit=True, permit_deadline=m.now() - 1)
    assert (exc.value.allowance, exc.value.needed) == (0, 6 * TUSD)
    assert m.tenant.token.functions.nonces(m.tenant.address).call() == 0
    m.ledger.unchanged()


def test_front_run_permit_is_tolerated(market):
    """Someone submits the tenant's permit first: the order still goes through on the allowance."""
    m = market
    deposit, deadline = 6 * TUSD, m.now() + 3600
    v, r, s = m.tenant._sign_permit(deposit, deadline)
    m.stranger._send(
        m.stranger.token.functions.permit(m.tenant.address, m.tenant.market.address, deposit, deadline, v, r, s)
    )
    assert m.tenant.allowance() == deposit
    params = (2, 0, 3 * TUSD, 3600, 60, deposit, FP, "", "")
    tx = m.tenant._send(m.tenant.market.functions.createOrderWithPermit(params, deadline, v, r, s))
    assert tx.event("OrderCreated")["deposit"] == deposit
    assert m.tenant.allowance() == 0
    m.ledger.moved(tenant=-deposit, market=deposit)


def test_approve_path_sets_exactly_the_deposit(market):
    m = market
    m.tenant.create_order(GpuSpec(1), 3 * TUSD, 3600, 60, 2_345_678, approve=True)
    assert m.tenant.allowance() == 0
    m.ledger.moved(tenant=-2_345_678, market=2_345_678)


# -- connecting ----------------------------------------------------------------------------------


def test_connect_to_a_dead_rpc_raises_chain_unavailable(net):
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailable) as exc:
        MarketClient.connect(url, net.info.market, timeout=2)
    assert url in str(exc.value) and "gpumarket devnet up" in str(exc.value)
    assert isinstance(exc.value, ConnectionError)


def test_connect_to_the_wrong_chain_raises_chain_unavailable(net):
    wrong = net.info.chain_id + 1
    with pytest.raises(ChainUnavailable) as exc:
        MarketClient.connect(net.info.rpc_url, net.info.market, expected_chain_id=wrong)
    assert str(net.info.chain_id) in str(exc.value) and str(wrong) in str(exc.value)
    assert "check the RPC URL" in str(exc.value)


def test_connect_without_a_contract_raises_chain_unavailable(net):
    empty = net.info.addresses["stranger"]
    with pytest.raises(ChainUnavailable, match="no contract at"):
        MarketClient.connect(net.info.rpc_url, empty)


def test_connect_to_the_right_chain(net):
    c = MarketClient.connect(net.info.rpc_url, net.info.market, net.signer("tenant"), expected_chain_id=net.info.chain_id)
    assert c.chain_id == net.info.chain_id
    assert (c.token_symbol(), c.token_decimals()) == ("TUSD", 6)
    assert c.balance() == 10_000 * TUSD
    assert c.params() == {
        "min_stake": MIN_STAKE,
        "unstake_delay": 600,
        "attestation_grace": 30,
        "dispute_window": 86_400,
        "fee_bps": 0,
    }


# -- views for missing things ------------------------------------------------------------------------


def test_views_of_missing_things_raise_not_found(market):
    with pytest.raises(E.OrderNotFound) as exc:
        market.tenant.order(42)
    assert exc.value.order_id == 42 and isinstance(exc.value, LookupError)
    with pytest.raises(E.LeaseNotFound) as exc:
        market.tenant.lease(43)
    assert exc.value.lease_id == 43
    assert market.tenant.accrued(43) == 0
