"""``GET /gpumarket/notices``: the watchdog's notices reach the sidebar, and only this account's.

A real Jupyter server (pytest-jupyter) with the extension, on the session
devnet; notices are posted with the real :class:`LeaseStore` API into the
lease history the server reads, as the watchdog posts them. No provider agent
is needed: nothing here touches the chain beyond reading who the account is.
"""

from __future__ import annotations

import dask.config
import pytest

from jupyter_gpumarket.history import LeaseStore

from .test_server_api import call

OTHER_MARKET = "0x000000000000000000000000000000000000dEaD"


@pytest.fixture
def home(net, tmp_path):
    """The session devnet as the server's chain, and a lease history of this test's own."""
    path = tmp_path / "home"
    settings = {"gpumarket.devnet": True, "gpumarket.devnet-dir": str(net.state_dir), "gpumarket.watchdog": False}
    with pytest.MonkeyPatch.context() as patch, dask.config.set(settings):
        patch.setenv("GPUMARKET_HOME", str(path))
        yield path


@pytest.fixture
def jp_server_config(home):
    return {"ServerApp": {"jpserver_extensions": {"jupyter_gpumarket.server": True}}}


@pytest.fixture
def board(net, home):
    """(store, post) where ``post(cluster, lease, kind, text)`` posts as the watchdog does; clusters of
    this account, of another account and of another market, each with one live lease."""
    tenant, stranger = net.client("tenant"), net.client("stranger")
    store = LeaseStore(home / "history.sqlite")
    owners = {"mine": (tenant.market.address, tenant.address), "theirs": (tenant.market.address, stranger.address),
              "elsewhere": (OTHER_MARKET, tenant.address), "mine-closed": (tenant.market.address, tenant.address)}
    for lease_id, (name, (market, owner)) in enumerate(owners.items(), start=900):
        store.record_cluster(name, chain_id=tenant.chain_id, market=market, tenant=owner, ca_path="/none",
                             scheduler="tls://127.0.0.1:1")
        store.record_lease(lease_id, chain_id=tenant.chain_id, market=market, cluster=name, order_id=lease_id,
                           provider_id=1, endpoint="http://127.0.0.1:1", hosts_scheduler=True, gpus=1,
                           price=2_900_000, deposit=2_900_000, started_at=1, provider_fingerprint="ab",
                           tenant_ca_fingerprint="cd")
    store.settle_lease(tenant.chain_id, tenant.market.address, 903)  # "mine-closed" ended already
    return store, tenant.chain_id


async def test_an_accounts_notices_arrive_newest_last_with_since_and_no_one_elses(jp_fetch, board):
    store, _ = board
    status, empty = await call(jp_fetch, "GET", "notices")
    assert status == 200 and (empty["notices"], empty["warnings"]) == ([], [])
    start = empty["last_id"]

    warning = store.post_notice("mine", 900, "idle-warning", "cluster mine (lease 900) ran no task for 480 s; "
                                "it will be released in 120 s unless a task runs", release_at=4_000_000_000.0)
    store.post_notice("theirs", 901, "idle-warning", "someone else's cluster", release_at=4_000_000_000.0)
    store.post_notice("elsewhere", 902, "released", "another market's lease 902 was released")
    released = store.post_notice("mine-closed", 903, "released",
                                 "lease 903 was released by the watchdog (notebook gone: no kernel seen for 600 s)")
    stale = store.post_notice("mine-closed", 903, "idle-warning", "a warning whose lease is gone", release_at=1.0)

    status, answer = await jp_fetch_notices(jp_fetch, start)
    assert status == 200, answer
    assert [(n["id"], n["lease"], n["cluster"], n["kind"]) for n in answer["notices"]] == [
        (warning, 900, "mine", "idle-warning"), (released, 903, "mine-closed", "released"),
        (stale, 903, "mine-closed", "idle-warning")]
    first = answer["notices"][0]
    assert first["text"].startswith("cluster mine (lease 900) ran no task for 480 s")
    assert (first["state"], first["release_at"]) == ("open", 4_000_000_000.0)
    assert answer["notices"][1]["state"] == "done" and answer["notices"][1]["release_at"] is None
    assert all(n["time"] <= answer["now"] for n in answer["notices"])
    assert [w["id"] for w in answer["warnings"]] == [warning]  # the stale one's cluster has no live lease
    assert answer["last_id"] == stale

    status, again = await jp_fetch_notices(jp_fetch, answer["last_id"])
    assert (again["notices"], [w["id"] for w in again["warnings"]]) == ([], [warning])

    store.update_notice(warning, state="withdrawn")  # a task ran: the warning no longer holds
    later = store.post_notice("mine", 900, "released", "lease 900 was released by the watchdog (idle: no task ran)")
    status, last = await jp_fetch_notices(jp_fetch, answer["last_id"])
    assert [n["id"] for n in last["notices"]] == [later] and last["warnings"] == []
    # Kernels print the same notices: the server reading them marks none as shown.
    assert {n["id"] for n in store.notices(unshown=True)} >= {warning, released, later}

    # A `since` past the store's newest: the store was replaced (a new GPUMARKET_HOME), all of it is new.
    status, replaced = await jp_fetch_notices(jp_fetch, 10**9)
    assert [n["id"] for n in replaced["notices"]] == [warning, released, stale, later]
    assert replaced["last_id"] == later


async def test_notices_need_the_token_and_a_whole_number_since(jp_fetch, board):
    store, _ = board
    store.post_notice("mine", 900, "released", "lease 900 was released by the watchdog (idle: no task ran)")
    for headers in ({"Authorization": ""}, {"Authorization": "token not-the-server-token"}):
        status, body = await call(jp_fetch, "GET", "notices", headers=headers)
        assert status == 403 and "notices" not in body and "lease 900" not in str(body)
    for since in ("abc", "-1", "1.5", "²"):
        status, body = await jp_fetch_notices(jp_fetch, since)
        assert status == 400 and body == {
            "error": f"since must be a notice id, a whole number such as 12 (0 for all), got {since!r}",
            "type": "InvalidRequest"}


async def jp_fetch_notices(jp_fetch, since) -> tuple[int, dict]:
    return await call(jp_fetch, "GET", "notices", params={"since": str(since)})
