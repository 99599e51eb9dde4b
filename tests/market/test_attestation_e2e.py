"""Hardware attestation at lease start, end to end: a provider that delivers half the
throughput it claims is rejected with a full refund and replaced; honest ones pass."""

from __future__ import annotations

import subprocess
import sys

import pytest
from distributed import Client

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.cluster.leased import LeasedCluster
from jupyter_gpumarket.spec import DealStatus

# (model, memory, TFLOPS, price, extra flags). The honest H100 is the cheapest per TFLOP,
# so it hosts the scheduler; the cheater claims the same H100 and joins it.
AGENTS = {
    "provider0": ("NVIDIA H100 80GB HBM3", 80, 989, "1.50", []),
    "provider1": ("NVIDIA H100 80GB HBM3", 80, 989, "1.60", ["--simulate-throughput", "0.5"]),
    "provider2": ("NVIDIA A100-SXM4-80GB", 80, 312, "0.90", []),
}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    state = tmp_path_factory.mktemp("attest")
    with Devnet.up(state_dir=state, params=DevnetParams(providers=3)) as net:
        procs = []
        for role, (model, memory, tflops, price, extra) in AGENTS.items():
            log = open(state / f"{role}.log", "ab")
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "jupyter_gpumarket.cli", "provider", "run", "--devnet", "--state-dir",
                 str(state), "--account", role, "--gpu-model", model, "--memory-gib", str(memory), "--tflops",
                 str(tflops), "--price", price, "--gpus", "1", *extra],
                stdout=log, stderr=subprocess.STDOUT))
        try:
            net.wait_for_providers(3)
            yield net
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()


def test_half_throughput_provider_is_rejected_refunded_and_replaced(market):
    net = market
    tenant = net.client("tenant")
    cheater = net.info.addresses["provider1"]
    before = {"tenant": tenant.balance(), "cheater": tenant.balance(cheater)}
    cluster = LeasedCluster(gpus=2, gpu="H100|A100", max_price="3.00", hours=1, budget="10", market=tenant,
                            window=2, attest=True)
    try:
        reports = cluster.leaser.attestations
        failed = {lid: r for lid, r in reports.items() if not r.passed}
        assert len(failed) == 1, {lid: r.reason for lid, r in reports.items()}
        (bad_lease, report), = failed.items()
        assert "throughput" in report.reason
        lease = tenant.lease(bad_lease)
        assert lease.status == DealStatus.REJECTED
        assert tenant.provider(lease.provider_id).owner == cheater
        (rejected,) = tenant.get_logs("LeaseRejected", leaseId=bad_lease)
        assert rejected["refunded"] == lease.deposit  # the whole deposit came back
        assert tenant.balance(cheater) == before["cheater"]  # paid nothing
        assert tenant.provider(lease.provider_id).leases_rejected == 1

        # Honest providers passed (no false positive) and the cluster has its two GPUs.
        assert sum(r.passed for r in reports.values()) == 2
        live = cluster.leaser.leases.values()
        assert len(live) == 2 and cheater not in {h.provider.owner for h in live}
        assert all(cluster.leaser.measured_tflops[h.provider.id] > 0 for h in live)
        with Client(cluster) as client:
            client.wait_for_workers(2)
            assert client.submit(sum, [1, 2, 3]).result() == 6
    finally:
        cluster.close()
    spent = sum(r.cost for r in cluster.receipts)
    assert before["tenant"] - tenant.balance() == spent
