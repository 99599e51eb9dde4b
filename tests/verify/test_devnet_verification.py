"""Verification end to end on the session devnet: attestation, runtime receipts, spot checks, disputes.

Three provider agents run in this process (threads, real TLS Dask workers, the session's
anvil chain): an honest H100, a provider that claims H100 throughput but delivers half
(it does each benchmark's work twice), and a cheap provider that returns a wrong result
for 30 % of its tasks. Everything they register or move is rolled back after the module.
"""

from __future__ import annotations

import json
import time

import dask
import pytest
from distributed import Client

from jupyter_gpumarket.cluster.leased import LeasedCluster
from jupyter_gpumarket.cluster.runtime import GpuProfile
from jupyter_gpumarket.market.pricing import FixedFloor
from jupyter_gpumarket.market.provider import ProviderAgent
from jupyter_gpumarket.errors import WrongState
from jupyter_gpumarket.history import LeaseStore
from jupyter_gpumarket.spec import DealStatus
from jupyter_gpumarket.verify.arbiter import Arbiter
from jupyter_gpumarket.verify.attest import attest_lease
from jupyter_gpumarket.verify.challenge import SimulatedBehaviour
from jupyter_gpumarket.verify.heartbeat import HeartbeatDomain
from jupyter_gpumarket.verify.receipts import ReceiptBook

TUSD = 10**6
HONEST = GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0)
HALF = GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0)  # same claim, half the delivery
CHEAT = GpuProfile("NVIDIA L4", 24, 121.0)

inc = lambda x: x + 1  # noqa: E731  (lambdas travel by value to the workers)
square = lambda x: x * x  # noqa: E731


def job(n: int):
    parts = [dask.delayed(square, pure=True)(dask.delayed(inc, pure=True)(i)) for i in range(n)]
    return dask.delayed(sum, pure=True)(parts)


@pytest.fixture(scope="module")
def agents(net):
    snapshot = net.snapshot()
    started = []
    try:
        for role, profile, price, behaviour in (
            ("provider0", HONEST, 2_900_000, None),
            ("provider1", HALF, 2_000_000, SimulatedBehaviour(throughput=0.5)),
            ("provider2", CHEAT, 500_000, SimulatedBehaviour(wrong_tasks=0.3)),
        ):
            agent = ProviderAgent(net.client(role), profile, FixedFloor(price), behaviour=behaviour)
            started.append(agent.start())
        yield {a.client.address: a for a in started}
    finally:
        for agent in started:
            agent.stop()
        net.revert(snapshot)


def balances(net, client) -> dict[str, int]:
    return {role: client.balance(address) for role, address in net.info.addresses.items()}


def wait_for(condition, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def test_half_throughput_h100_fails_attestation_whole_deposit_back_honest_passes(net, agents, tmp_path):
    tenant = net.client("tenant")
    before = balances(net, tenant)
    request = dict(gpus=1, gpu="H100", max_price="3.00", hours=1, budget="10", market=tenant, window=2, attest=True,
                   heartbeat_timeout=60)  # a loaded test machine delays heartbeats; silence is tested elsewhere
    # The cheaper H100 wins the auction, hosts the scheduler, and fails attestation: its lease is
    # rejected within the grace period and the cluster cannot start without its scheduler.
    with pytest.raises(WrongState, match="failed attestation .*throughput too low.*full refund"):
        LeasedCluster(**request)
    (rejection,) = tenant.get_logs("LeaseRejected")
    rejected = tenant.lease(rejection["leaseId"])
    assert tenant.provider(rejected.provider_id).owner == net.info.addresses["provider1"]
    assert rejected.status == DealStatus.REJECTED
    assert rejection["refunded"] == rejected.deposit > 0
    assert balances(net, tenant) == before  # the whole deposit is back, to the base unit; nobody was paid

    # Its rejection is on its record, and reliability feeds the expected cost to complete:
    # the next auction picks the honest H100 although it asks 45 % more per hour.
    slow = tenant.provider(rejected.provider_id)
    assert slow.leases_rejected == 1
    store = LeaseStore(tmp_path / "history.sqlite")
    cluster = LeasedCluster(**request, spot_check=0.2, store=store)
    try:
        leaser = cluster.leaser
        (live,) = leaser.leases.values()
        assert live.provider.owner == net.info.addresses["provider0"]
        assert leaser.attestations[live.id].passed and slow.reliability < live.provider.reliability
        with Client(cluster) as client:
            for _ in range(2):  # the honest provider passes again: no false positive
                again = attest_lease(client, live.workers, live.provider.claim)
                assert again.passed, again.reason
            # Honest provider, spot-checked over repeated runs: every check passes, no dispute.
            with cluster.spot_checked(client):
                for n in (30, 40, 50):
                    assert job(n).compute() == sum((i + 1) ** 2 for i in range(n))
        reports = cluster.spot_checker.reports
        assert len(reports) == 3 and all(r.passed and r.checked > 0 and r.unreceipted == 0 for r in reports)
        assert not cluster.spot_checker.disputes and not tenant.get_logs("DisputeOpened", leaseId=live.id)
        book = leaser.execution_receipts.books[live.id]
        assert len(book) > 0 and not leaser.execution_receipts.refused
    finally:
        cluster.close()
    after = balances(net, tenant)
    (receipt,) = cluster.receipts
    assert before["tenant"] - after["tenant"] == receipt.cost  # only the honest lease cost anything
    assert after["provider1"] == before["provider1"]
    # At lease end the honest agent posts the root of the receipts it signed: the tenant's book's root.
    root = wait_for(lambda: tenant.receipt_root_of(live.id))
    assert root == book.merkle_root()
    # The tenant's copy is kept with the settled lease in the history store, and checks out again.
    stored = json.loads(store.lease(tenant.chain_id, tenant.market.address, live.id)["receipt"])
    domain = HeartbeatDomain(tenant.chain_id, tenant.market.address)
    again = ReceiptBook.from_json(live.id, live.provider.owner, domain, stored["execution_receipts"])
    assert len(again) == len(book) and again.merkle_root() == root


def gpurent_magics(net):
    """The %%gpurent magics on an IPython shell, connected to this devnet as the tenant."""
    from IPython.core.interactiveshell import InteractiveShell

    from jupyter_gpumarket.notebook.magics import GpuMarketMagics
    from jupyter_gpumarket.session import Session

    magics = GpuMarketMagics(InteractiveShell.instance())
    magics.session = Session.connect(devnet=True, state_dir=str(net.state_dir))
    return magics


def test_wrong_results_caught_by_spot_checks_disputed_and_slashed_to_the_tenant(net, agents):
    from IPython.utils.capture import capture_output

    tenant = net.client("tenant")
    magics = gpurent_magics(net)
    magics.shell.user_ns["job"] = job
    with capture_output() as cell, dask.config.set({"gpumarket.heartbeat-timeout": 60, "gpumarket.history": False}):
        magics.gpurent("--gpus 1 --gpu L4 --max-price 3.00 --hours 1 --budget 5 --spot-check 0.5 --keep",
                       "delivered = job(40).compute()")
    (cluster,) = magics.session.clusters
    try:
        assert magics.shell.user_ns["delivered"] != sum((i + 1) ** 2 for i in range(40))  # the cheater's answer...
        (report,) = cluster.spot_checker.reports
        assert report.mismatches  # ...was caught
        (mismatch, tx), = cluster.spot_checker.disputes
        evidence = mismatch.evidence
        (live,) = cluster.leaser.leases.values()
        assert f"did not match; dispute opened on lease {live.id} (tx {tx.hash})" in cell.stdout
        assert evidence.lease_id == live.id and tenant.lease(live.id).disputed
        (opened,) = tenant.get_logs("DisputeOpened", leaseId=live.id)
        assert bytes(opened["evidenceHash"]) == evidence.hash()

        admin = net.client("deployer")
        stake_before = tenant.provider(live.provider.id).stake
        tenant_before = tenant.balance()
        verdict = Arbiter(admin).resolve(evidence, mismatch.task, mismatch.inputs, mismatch.delivered)
        slash = admin.params()["min_stake"]
        assert verdict.provider_at_fault and verdict.slashed == slash, verdict.reason
        assert tenant.balance() - tenant_before == slash  # the stake went to the tenant, to the base unit
        provider = tenant.provider(live.provider.id)
        assert (provider.stake, provider.disputes_lost, provider.open_disputes) == (stake_before - slash, 1, 0)
        assert not tenant.lease(live.id).disputed
    finally:
        magics.session.release()
        if magics._notices is not None:
            magics._notices.stop()


def test_gpurent_spot_check_flag_refuses_a_bad_rate_before_ordering(net, agents):
    from IPython.core.error import UsageError

    magics = gpurent_magics(net)
    tenant = net.client("tenant")
    orders, before = tenant.market.functions.orderCount().call(), tenant.balance()
    for rate in ("1.5", "0", "-0.2"):
        with pytest.raises(UsageError, match=r"spot-check rate must be a fraction in \(0, 1\], e.g. 0.05"):
            magics.gpurent(f"--gpus 1 --gpu L4 --max-price 3.00 --hours 1 --budget 5 --spot-check {rate}", "x = 1")
    assert tenant.market.functions.orderCount().call() == orders and tenant.balance() == before  # nothing moved
