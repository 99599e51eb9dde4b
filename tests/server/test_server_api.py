"""The server extension's REST API through a real Jupyter server (pytest-jupyter), on the devnet.

The session devnet (``net``) gets provider agents for this module and is rolled
back to its earlier state afterwards. Each test starts its own Jupyter server
with the extension enabled; the extension connects through the same dask config
a kernel would use. Amounts are compared to the token base unit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time

import dask.config
import pytest
from eth_account import Account

from jupyter_gpumarket.chain.devnet import AGENT_PROFILES, DEV_MNEMONIC, Devnet, DevnetParams
from jupyter_gpumarket.server.handlers import INTERNAL
from jupyter_gpumarket.session import RentRequest, Session
from jupyter_gpumarket.spec import DealStatus

ANY_GPU = "H100|A100|4090"
TUSD = 10**6
ENDPOINTS = [("GET", "wallet"), ("GET", "offers"), ("GET", "leases"), ("GET", "history"), ("GET", "budget"),
             ("GET", "classroom"), ("GET", "notices"), ("POST", "leases"), ("POST", "leases/1/release"), ("POST", "release-all")]


@pytest.fixture(scope="module")
def market(net, tmp_path_factory):
    """The session devnet with bidding agents and a lease history of its own; rolled back afterwards."""
    snapshot = net.snapshot()
    settings = {"gpumarket.devnet": True, "gpumarket.devnet-dir": str(net.state_dir), "gpumarket.window": 2,
                "gpumarket.budget": None, "gpumarket.watchdog": False}
    with pytest.MonkeyPatch.context() as patch, dask.config.set(settings):
        patch.setenv("GPUMARKET_HOME", str(tmp_path_factory.mktemp("server-home")))
        net.start_agents()
        try:
            net.wait_for_providers(3)
            yield net
        finally:
            net.stop_agents()
            net.revert(snapshot)


@pytest.fixture
def jp_server_config(market):
    return {"ServerApp": {"jpserver_extensions": {"jupyter_gpumarket.server": True}}}


@pytest.fixture
def tenant(market):
    return market.client("tenant")


async def call(jp_fetch, method: str, path: str, body=None, **kwargs) -> tuple[int, dict]:
    """(status, decoded JSON) of one request; refusals are answers here, not exceptions."""
    if method == "POST":
        kwargs["body"] = body if isinstance(body, str) else json.dumps(body or {})
    response = await jp_fetch("gpumarket", *path.split("/"), method=method, raise_error=False,
                              request_timeout=240, **kwargs)
    return response.code, json.loads(response.body)


def money_state(net, client) -> dict:
    """Every devnet account's balance, the market's, and the order count."""
    state = {role: client.balance(address) for role, address in net.info.addresses.items()}
    return state | {"market": client.balance(client.market.address), "orders": client.market.functions.orderCount().call()}


async def test_requests_without_the_token_or_with_a_wrong_one_are_refused(jp_fetch, market, tenant):
    before = money_state(market, tenant)
    for headers in ({"Authorization": ""}, {"Authorization": "token not-the-server-token"}):
        for method, path in ENDPOINTS:
            status, body = await call(jp_fetch, method, path, {"gpus": 1}, headers=headers)
            assert status == 403, (headers, method, path, body)
            assert "address" not in body and "leases" not in body
    assert money_state(market, tenant) == before
    status, wallet = await call(jp_fetch, "GET", "wallet")  # the same server, with its token
    assert status == 200 and wallet["connected"] is True


async def test_wallet_and_offers_match_the_chain(jp_fetch, market, tenant):
    status, wallet = await call(jp_fetch, "GET", "wallet")
    assert status == 200
    assert wallet == {"connected": True, "address": tenant.address, "chain_id": market.info.chain_id,
                      "market": market.info.market, "balance": str(tenant.balance()), "class_id": 0,
                      "decimals": 6, "symbol": "TUSD"}
    status, offers = await call(jp_fetch, "GET", "offers")
    assert status == 200 and (offers["decimals"], offers["symbol"]) == (6, "TUSD")
    assert {row["gpu"] for row in offers["offers"]} == {profile[0] for profile in AGENT_PROFILES}
    for row in offers["offers"]:
        provider = tenant.provider(row["provider"])
        assert (row["gpus"], row["memory_gib"], row["active"]) == (provider.claim.gpu_count, provider.claim.memory_gib, True)
        assert row["last_price"] is None or isinstance(row["last_price"], str) and int(row["last_price"]) > 0


async def test_no_answer_carries_the_accounts_key(jp_fetch, market):
    Account.enable_unaudited_hdwallet_features()
    key = Account.from_mnemonic(DEV_MNEMONIC, account_path="m/44'/60'/0'/0/1").key.hex().removeprefix("0x")
    for method, path in ENDPOINTS:
        if method == "GET":
            response = await jp_fetch("gpumarket", path, raise_error=False, request_timeout=60)
            assert response.code == 200 and key not in response.body.decode().lower()


async def test_rent_list_release_and_each_refund_reaches_the_wallet(jp_fetch, market, tenant):
    with dask.config.set({"gpumarket.account-cap": "50.00"}):  # read when the server connects
        await rent_list_release(jp_fetch, market, tenant)


async def rent_list_release(jp_fetch, market, tenant):
    orders = tenant.market.functions.orderCount().call()
    renting = asyncio.ensure_future(call(jp_fetch, "POST", "leases",
                                         {"gpus": 2, "gpu": ANY_GPU, "max_price": "3.00", "hours": 1, "window": 3}))
    while tenant.market.functions.orderCount().call() == orders:  # until the server's auction is under way
        assert not renting.done(), renting.result()
        await asyncio.sleep(0.05)
    status, wallet = await call(jp_fetch, "GET", "wallet")
    # Served within the bidding window: the auction runs in a thread, not on the server's event loop.
    assert status == 200 and wallet["connected"] and not renting.done()
    status, rented = await renting
    assert status == 201, rented
    ids = rented["lease_ids"]
    leases = {i: tenant.lease(i) for i in ids}
    assert len(ids) == 2 and all(lease.status == DealStatus.ACTIVE for lease in leases.values())

    status, listed = await call(jp_fetch, "GET", "leases")
    assert status == 200
    rows = {row["lease"]: row for row in listed["leases"]}
    assert set(rows) == set(ids)
    for lease_id, lease in leases.items():
        row = rows[lease_id]
        assert (row["provider"], row["order"], row["gpus"]) == (lease.provider_id, lease.order_id, 1)
        assert row["gpu"] == tenant.provider(lease.provider_id).claim.gpu_model
        assert (row["price_per_gpu_hour"], row["deposit"]) == (str(lease.price_per_gpu_hour), str(lease.deposit))
        assert (row["cluster"], row["student"], row["started_at"]) == (rented["cluster"], tenant.address, lease.started_at)
        assert 0 <= int(row["spent"]) <= lease.deposit
    assert listed["spend_rate_per_hour"] == str(sum(lease.price_per_gpu_hour for lease in leases.values()))
    status, budget = await call(jp_fetch, "GET", "budget")
    deposits = sum(lease.deposit for lease in leases.values())
    assert budget["cap"] is None and budget["committed"] == str(deposits)
    # This module's lease history is fresh: the account has committed just these deposits.
    assert budget["account"] == {"cap": str(50 * TUSD), "committed": str(deposits), "remaining": str(50 * TUSD - deposits)}

    first, second = ids
    balance = tenant.balance()
    status, released = await call(jp_fetch, "POST", f"leases/{first}/release")
    assert status == 200, released
    receipt = released["receipt"]
    closed = tenant.lease(first)
    assert closed.status == DealStatus.CLOSED and receipt["lease_id"] == first
    assert tenant.balance() - balance == int(receipt["refunded"]) > 0
    assert int(receipt["paid_to_provider"]) + int(receipt["fee"]) + int(receipt["refunded"]) == closed.deposit
    assert all(h.startswith("0x") and len(h) == 66 for h in receipt["tx_hashes"]) and receipt["tx_hashes"]

    balance = tenant.balance()
    status, everything = await call(jp_fetch, "POST", "release-all")
    assert status == 200 and [r["lease_id"] for r in everything["receipts"]] == [second]
    assert tenant.lease(second).status == DealStatus.CLOSED
    assert tenant.balance() - balance == int(everything["receipts"][0]["refunded"])

    status, listed = await call(jp_fetch, "GET", "leases")
    assert listed["leases"] == [] and listed["spend_rate_per_hour"] == "0"
    status, history = await call(jp_fetch, "GET", "history")
    settled = {row["lease_id"]: row for row in history["history"]}
    assert settled[first]["refunded"] == receipt["refunded"]
    assert settled[first]["closed_at"] == tenant.lease(first).ends_at
    assert settled[second]["refunded"] == everything["receipts"][0]["refunded"]
    total = sum(int(row["paid_to_provider"]) + int(row["fee"]) for row in history["history"])
    assert history["spend_series"][-1][1] == str(total)
    status, budget = await call(jp_fetch, "GET", "budget")
    assert budget["committed"] == budget["spent"] == budget["account"]["committed"] == str(total)


async def test_leases_made_by_a_kernel_are_listed_released_and_kept_in_line_with_the_chain(jp_fetch, market, tenant):
    kernel = Session.connect()  # as %%gpurent in a notebook: same account, same lease history
    request = RentRequest(gpus=2, gpu=ANY_GPU, max_price=3 * TUSD, hours=1, window=2)
    cluster = await asyncio.to_thread(kernel.rent, request, reuse=False)
    store, where = kernel.store, (tenant.chain_id, tenant.market.address)
    try:
        by_server, elsewhere = sorted(cluster.leaser.leases, key=lambda i: cluster.leaser.leases[i].hosts_scheduler)
        status, listed = await call(jp_fetch, "GET", "leases")
        rows = {row["lease"]: row for row in listed["leases"]}
        assert set(rows) == {by_server, elsewhere} and {row["cluster"] for row in rows.values()} == {cluster.name}
        assert rows[by_server]["provider"] == tenant.lease(by_server).provider_id

        balance = tenant.balance()
        status, released = await call(jp_fetch, "POST", f"leases/{by_server}/release")  # the server never held it
        assert status == 200, released
        assert tenant.lease(by_server).status == DealStatus.CLOSED
        assert tenant.balance() - balance == int(released["receipt"]["refunded"]) > 0
        assert store.lease(*where, by_server)["state"] == "settled"
        status, again = await call(jp_fetch, "POST", f"leases/{by_server}/release")
        assert status == 404 and again["type"] == "NotFound" and "is not live" in again["error"]

        await asyncio.to_thread(tenant.close_lease, elsewhere)  # closed by another tool, not this server
        assert store.lease(*where, elsewhere)["state"] == "live"
        status, listed = await call(jp_fetch, "GET", "leases")
        assert listed["leases"] == [] and store.lease(*where, elsewhere)["state"] == "settled"
    finally:
        await asyncio.to_thread(kernel.release, None)  # the Dask side; both leases are settled already


async def test_classroom_shows_each_students_cap_spend_and_live_leases(jp_fetch, market, tenant):
    deployer = market.info.addresses["deployer"]
    pupil_client = market.client("stranger")
    class_id = tenant.create_class(20 * TUSD, approve=True).result
    tenant.set_allowance(class_id, pupil_client.address, 5 * TUSD)
    tenant.set_allowance(class_id, deployer, 2 * TUSD)
    pupil = Session.connect(account="stranger", class_id=class_id)
    request = RentRequest(gpus=1, gpu=ANY_GPU, max_price=3 * TUSD, hours=1, window=2)
    cluster = await asyncio.to_thread(pupil.rent, request, reuse=False)
    try:
        (lease_id,) = cluster.leaser.leases
        status, room = await call(jp_fetch, "GET", "classroom")
        assert status == 200
        (taught,) = [c for c in room["classes"] if c["class_id"] == class_id]
        assert taught["pool"] == str(tenant.class_info(class_id)["balance"])
        students = {row["address"]: row for row in taught["students"]}
        assert set(students) == {pupil_client.address, deployer}
        row = students[pupil_client.address]
        drawn = tenant.allowance_of(class_id, pupil_client.address)["drawn"]
        assert (row["cap"], row["drawn"], row["remaining"]) == (str(5 * TUSD), str(drawn), str(5 * TUSD - drawn))
        (live,) = row["leases"]
        assert (live["lease"], live["student"]) == (lease_id, pupil_client.address)
        assert int(row["spent"]) <= int(live["deposit"])
        assert students[deployer] == {"address": deployer, "cap": str(2 * TUSD), "drawn": "0",
                                      "remaining": str(2 * TUSD), "spent": "0", "leases": []}
        status, own = await call(jp_fetch, "GET", "leases")  # the instructor's own leases are not the class's
        assert lease_id not in [r["lease"] for r in own["leases"]]
        (receipt,) = await asyncio.to_thread(pupil.release, None)
    finally:
        await asyncio.to_thread(pupil.close)
    status, room = await call(jp_fetch, "GET", "classroom")
    (taught,) = [c for c in room["classes"] if c["class_id"] == class_id]
    row = next(r for r in taught["students"] if r["address"] == pupil_client.address)
    assert row["leases"] == [] and row["spent"] == row["drawn"] == str(receipt.cost)
    assert taught["pool"] == str(20 * TUSD - receipt.cost)


@pytest.mark.parametrize(
    "path,body,status,message",
    [
        ("leases", {"gpus": 0}, 400, "gpus is 0; ask for at least 1 GPU"),
        ("leases", {"gpus": 1, "max_price": "abc"}, 400, "max_price: 'abc' is not an amount; write it like 2.50"),
        ("leases", {"gpus": 1, "max_price": 3.5}, 400, 'max_price must be a price per GPU-hour in tokens, as a string'),
        ("leases", {"gpus": 1, "gpu_model": "A100"}, 400, "unknown field(s) gpu_model; use only gpus, gpu"),
        ("leases", "{gpus: 1", 400, "the body must be JSON"),
        ("leases", {"gpus": 1, "gpu": "B200", "window": 1}, 400, "no registered provider has a GPU matching 'B200'"),
        ("leases/999999/release", {}, 404, "no lease 999999; check the lease id"),
        ("leases/abc/release", {}, 400, "lease id must be a whole number such as 7, got 'abc'"),
    ],
)
async def test_bad_input_is_one_clear_error_and_moves_nothing(jp_fetch, market, tenant, path, body, status, message):
    before = money_state(market, tenant)
    code, answer = await call(jp_fetch, "POST", path, body)
    assert code == status and message in answer["error"], answer
    assert set(answer) == {"error", "type"}
    assert money_state(market, tenant) == before
    status, listed = await call(jp_fetch, "GET", "leases")
    assert listed["leases"] == []


async def test_an_internal_failure_is_a_generic_500_with_the_details_in_the_log(jp_fetch, tmp_path, monkeypatch, caplog):
    (tmp_path / "history.sqlite").write_bytes(b"this is not a database " * 100)  # a broken lease history
    monkeypatch.setenv("GPUMARKET_HOME", str(tmp_path))
    with caplog.at_level(logging.ERROR):
        status, answer = await call(jp_fetch, "GET", "leases")
    assert status == 500 and answer == {"error": INTERNAL, "type": "InternalError"}
    failures = [r for r in caplog.records if r.getMessage().startswith("gpumarket: GET")]
    assert failures and isinstance(failures[0].exc_info[1], sqlite3.DatabaseError)


async def test_devnet_down_says_what_to_start_and_the_server_reconnects(jp_fetch, market, tmp_path):
    state = tmp_path / "devnet"
    with dask.config.set({"gpumarket.devnet-dir": str(state)}):
        status, wallet = await call(jp_fetch, "GET", "wallet")
        assert status == 200 and wallet == {
            "connected": False, "reason": f"no devnet recorded in {state}; start one with `gpumarket devnet up`"}
        status, leases = await call(jp_fetch, "GET", "leases")
        assert status == 503 and leases["type"] == "ChainUnavailable" and "gpumarket devnet up" in leases["error"]

        for _ in range(2):  # up, down, and up again (on another port): the server follows
            small = await asyncio.to_thread(Devnet.up, state_dir=state, params=DevnetParams(providers=0))
            try:
                status, wallet = await call(jp_fetch, "GET", "wallet")
                assert wallet["connected"] is True and wallet["balance"] == str(small.client("tenant").balance())
            finally:
                small.down()
            wallet = await wallet_once_disconnected(jp_fetch)
            assert wallet["connected"] is False and "gpumarket devnet up" in wallet["reason"]


async def wallet_once_disconnected(jp_fetch, timeout: float = 60.0) -> dict:
    """The wallet as soon as it reports no chain: anvil's npm wrapper stops the node a moment after itself."""
    deadline = time.monotonic() + timeout
    while True:
        status, wallet = await call(jp_fetch, "GET", "wallet")
        if not wallet["connected"] or time.monotonic() > deadline:
            return wallet
        await asyncio.sleep(0.2)
