"""The market at work, end to end: anvil, three provider agent processes, mutual TLS Dask.

One devnet for the module, with agents as separate processes (they are killed
for real in the failure test, which therefore runs last).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from distributed import Client

from jupyter_gpumarket.chain import Devnet, DevnetParams, MarketClient
from jupyter_gpumarket.cluster.leased import LeasedCluster
from jupyter_gpumarket.cluster.tls import TenantCA
from jupyter_gpumarket.errors import ChainUnavailable, InvalidRequest, NotFound
from jupyter_gpumarket.market.auction import NoBids, OverBudget
from jupyter_gpumarket.spec import DealStatus, GpuSpec, accrued

ANY_GPU = "H100|A100|4090"


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    state = tmp_path_factory.mktemp("market")
    with Devnet.up(state_dir=state, params=DevnetParams(providers=3)) as net:
        agents = net.start_agents()
        net.wait_for_providers(3)
        yield net, agents


@pytest.fixture
def tenant(market):
    return market[0].client("tenant")


def balances(net: Devnet, client: MarketClient) -> dict[str, int]:
    out = {role: client.balance(address) for role, address in net.info.addresses.items()}
    out["market"] = client.balance(client.market.address)
    return out


def role_of(net: Devnet, address: str) -> str:
    return next(role for role, a in net.info.addresses.items() if a == address)


# Providers' workers cannot import this test module, so tasks are lambdas, which
# Dask ships by value (as it does functions defined in a notebook).
square = lambda x: x * x  # noqa: E731


def make_slow_square():
    def slow_square(x):
        time.sleep(0.25)
        return x * x

    return slow_square


def test_rent_two_gpus_compute_release_and_every_balance_adds_up(market, tenant):
    net, _ = market
    before = balances(net, tenant)
    seen_bids = []
    cluster = LeasedCluster(gpus=2, gpu=ANY_GPU, max_price="3.00", hours=1, budget="10", market=tenant, window=3,
                            on_bid=lambda bid, provider: seen_bids.append((bid.id, provider.claim.gpu_model)))
    try:
        leases = list(cluster.leaser.leases.values())
        assert len(leases) == 2 and len({h.provider.id for h in leases}) == 2  # two different providers
        # Every agent bid, streamed to the callback (the undercutting one may re-bid lower).
        assert {model for _, model in seen_bids} == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
                                                     "NVIDIA GeForce RTX 4090"}
        with Client(cluster) as client:
            assert len(client.scheduler_info()["workers"]) == 2
            assert sum(client.gather(client.map(square, range(1000)))) == sum(x * x for x in range(1000))
            resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
            assert resources == [{"GPU": 1}, {"GPU": 1}]
        assert "spent" in cluster._repr_html_() and "scheduler + workers" in cluster._repr_html_()
    finally:
        cluster.close()
    after = balances(net, tenant)
    receipts = {r.lease_id: r for r in cluster.receipts}
    assert set(receipts) == {h.id for h in leases}
    total_cost = 0
    for handle in leases:
        lease = tenant.lease(handle.id)
        receipt = receipts[handle.id]
        assert lease.status == DealStatus.CLOSED
        expected = accrued(lease.price_per_gpu_hour, lease.gpus, lease.ends_at - lease.started_at)
        assert receipt.paid_to_provider == expected and receipt.fee == 0
        assert receipt.paid_to_provider + receipt.fee + receipt.refunded == lease.deposit
        role = role_of(net, handle.provider.owner)
        assert after[role] - before[role] == receipt.paid_to_provider
        total_cost += receipt.cost
    assert before["tenant"] - after["tenant"] == total_cost
    assert after["market"] == before["market"]  # all escrow returned; only stakes remain
    idle = [r for r in net.info.addresses if r.startswith("provider") and r not in
            {role_of(net, h.provider.owner) for h in leases}]
    assert all(after[r] == before[r] for r in idle)


def test_foreign_certificates_and_plaintext_are_refused(market, tenant, tmp_path):
    cluster = LeasedCluster(gpus=1, gpu=ANY_GPU, max_price="3.00", hours=1, budget="10", market=tenant, window=2)
    try:
        address = cluster.scheduler_address
        worker = next(iter(cluster.scheduler_info["workers"]))
        with Client(cluster, timeout="10s") as ok:
            assert ok.submit(square, 7).result() == 49
        stranger = TenantCA.create().client_security(tmp_path)
        for target in (address, worker):
            with pytest.raises((OSError, TimeoutError)):
                Client(target, security=stranger, timeout="3s")
        with pytest.raises((OSError, TimeoutError, ValueError)):
            Client(address.replace("tls://", "tcp://"), timeout="3s")
    finally:
        cluster.close()


def test_unknown_gpu_pattern_is_refused_before_any_order(market, tenant):
    net, _ = market
    before, orders = balances(net, tenant), tenant.market.functions.orderCount().call()
    with pytest.raises(InvalidRequest, match="no registered provider has a GPU matching 'B200'") as err:
        LeasedCluster(gpus=1, gpu="B200", max_price="3.00", market=tenant, window=1)
    assert "NVIDIA H100 80GB HBM3" in str(err.value)  # it lists what is on offer
    assert balances(net, tenant) == before and tenant.market.functions.orderCount().call() == orders


def test_zero_gpus_is_refused(market, tenant):
    with pytest.raises(InvalidRequest, match="ask for at least 1 GPU"):
        LeasedCluster(gpus=0, gpu=ANY_GPU, market=tenant)


def test_max_price_below_every_bid_refunds_everything(market, tenant):
    net, _ = market
    before = balances(net, tenant)
    with pytest.raises(NoBids, match="raise the max price") as err:
        LeasedCluster(gpus=1, gpu=ANY_GPU, max_price="0.10", hours=1, budget="5", market=tenant, window=2)
    assert not tenant.order(err.value.order_id).open
    assert balances(net, tenant) == before  # deposit back to the base unit


def test_budget_below_one_hour_of_the_cheapest_bid_refunds_everything(market, tenant):
    net, _ = market
    before = balances(net, tenant)
    with pytest.raises(OverBudget, match="raise the budget") as err:
        LeasedCluster(gpus=1, gpu=ANY_GPU, max_price="3.00", hours=1, budget="0.50", market=tenant, window=2)
    assert err.value.budget == 500_000 and err.value.cheapest_per_hour > 500_000
    assert balances(net, tenant) == before


def test_devnet_not_running_and_wrong_chain_are_clear(market, tmp_path):
    net, _ = market
    with pytest.raises(ChainUnavailable, match="gpumarket devnet up"):
        Devnet.load(tmp_path)
    with pytest.raises(ChainUnavailable, match="no chain answers at http://127.0.0.1:9"):
        MarketClient.connect("http://127.0.0.1:9", net.info.market)
    with pytest.raises(ChainUnavailable, match="not the expected 1; check the RPC URL"):
        MarketClient.connect(net.info.rpc_url, net.info.market, expected_chain_id=1)


def test_scale_leases_more_and_releases_within_the_budget(market, tenant):
    cluster = LeasedCluster(gpus=1, gpu=ANY_GPU, max_price="3.00", hours=1, budget="7", market=tenant, window=2)
    try:
        first = set(cluster.leaser.leases)
        cluster.scale(2)  # a second auction; its provider's workers join the same scheduler
        assert cluster.leaser.gpus == 2 and len(cluster.scheduler_info["workers"]) == 2
        (added,) = set(cluster.leaser.leases) - first
        with pytest.raises(InvalidRequest, match="exceeds the budget"):
            cluster.scale(5)
        assert cluster.leaser.gpus == 2  # refused before any order
        cluster.scale(1)  # releases the added lease, never the scheduler's host
        assert set(cluster.leaser.leases) == first
        assert tenant.lease(added).status == DealStatus.CLOSED
        with Client(cluster) as client:
            client.wait_for_workers(1)
            assert client.submit(square, 9).result() == 81
    finally:
        cluster.close()
    assert {r.lease_id for r in cluster.receipts} == first | {added}


KERNEL_THAT_DIES = """
import os, sys
from distributed import Client
from jupyter_gpumarket.chain import Devnet
from jupyter_gpumarket.cluster.leased import LeasedCluster
from jupyter_gpumarket.history import LeaseStore

tenant = Devnet.load(sys.argv[1]).client("tenant")
cluster = LeasedCluster(gpus=1, gpu="{gpu}", max_price="3.00", hours=1, budget="5", market=tenant, window=2,
                        store=LeaseStore())
with Client(cluster) as client:
    assert client.submit(sum, [1, 2]).result() == 3
print("LEASE", *cluster.leaser.leases, flush=True)
os._exit(0)  # the kernel dies: nothing is closed or released
"""


def test_reattach_after_the_kernel_died(market, tenant, tmp_path, monkeypatch):
    import subprocess
    import sys

    from jupyter_gpumarket.history import LeaseStore

    net, _ = market
    monkeypatch.setenv("GPUMARKET_HOME", str(tmp_path))
    script = tmp_path / "kernel.py"
    script.write_text(KERNEL_THAT_DIES.format(gpu=ANY_GPU))
    proc = subprocess.run([sys.executable, str(script), str(net.state_dir)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "GPUMARKET_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lease_id = int(proc.stdout.split("LEASE")[1].split()[0])
    assert tenant.lease(lease_id).status == DealStatus.ACTIVE  # still leased, still paying
    ca_file = next((tmp_path / "clusters").glob("*.ca.pem"))
    assert b"ENCRYPTED PRIVATE KEY" in ca_file.read_bytes() and oct(ca_file.stat().st_mode)[-3:] == "600"

    orders = tenant.market.functions.orderCount().call()
    store = LeaseStore()
    cluster = LeasedCluster.from_lease(lease_id, market=tenant, store=store)
    try:
        with Client(cluster) as client:
            assert client.submit(square, 11).result() == 121  # the same cluster answers
        assert set(cluster.leaser.leases) == {lease_id}
        assert tenant.market.functions.orderCount().call() == orders  # no second order
    finally:
        cluster.close()
    assert tenant.lease(lease_id).status == DealStatus.CLOSED
    assert store.lease(tenant.chain_id, tenant.market.address, lease_id)["state"] == "settled"
    with pytest.raises(NotFound, match="not in this machine's lease history"):
        LeasedCluster.from_lease(10_000, market=tenant, store=store)


def test_killed_provider_is_paid_to_its_last_heartbeat_and_replaced(market, tenant):
    net, agents = market
    before = balances(net, tenant)
    cluster = LeasedCluster(gpus=2, gpu=ANY_GPU, max_price="3.00", hours=1, budget="10", market=tenant, window=2,
                            heartbeat_timeout=3.0)
    client = Client(cluster)
    try:
        victim = next(h for h in cluster.leaser.leases.values() if not h.hosts_scheduler)
        role = role_of(net, victim.provider.owner)
        futures = client.map(make_slow_square(), range(60), pure=False)
        time.sleep(1.5)  # mid-computation
        os.kill(agents[role].pid, signal.SIGKILL)
        agents[role].wait()
        assert sum(client.gather(futures)) == sum(x * x for x in range(60))

        deadline = time.monotonic() + 60
        while not cluster.failures or len(cluster.leaser.leases) < 2:
            assert time.monotonic() < deadline, f"no replacement: {cluster.failures}"
            time.sleep(0.25)
        replacement = next(h for h in cluster.leaser.leases.values() if h.id not in (victim.id,) and not h.hosts_scheduler)
        assert replacement.provider.id != victim.provider.id
        client.wait_for_workers(2, timeout=30)
        on_new = client.submit(square, 12, workers=replacement.workers, allow_other_workers=False)
        assert on_new.result(timeout=30) == 144

        dead = tenant.lease(victim.id)
        last = victim.monitor.last.heartbeat
        (closed,) = tenant.get_logs("LeaseClosed", leaseId=victim.id)
        closed_block_time = tenant.w3.eth.get_block(closed["blockNumber"])["timestamp"]
        # Paid up to the last heartbeat (or the closing block, if the provider's clock ran ahead).
        assert dead.status == DealStatus.CLOSED and dead.ends_at == min(last.timestamp, closed_block_time)
        receipt = next(r for r in cluster.receipts if r.lease_id == victim.id)
        assert receipt.paid_to_provider == accrued(dead.price_per_gpu_hour, dead.gpus, dead.ends_at - dead.started_at)
        assert receipt.refunded == dead.deposit - receipt.paid_to_provider
        assert balances(net, tenant)[role] - before[role] == receipt.paid_to_provider
    finally:
        client.close()
        cluster.close()
    after = balances(net, tenant)
    assert before["tenant"] - after["tenant"] == sum(r.cost for r in cluster.receipts)
    assert after["market"] == before["market"]
