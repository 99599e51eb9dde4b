"""Hardware attestation on a real Dask LocalCluster whose workers declare simulated GPU profiles."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
from distributed import Client, LocalCluster

from jupyter_gpumarket.cluster.runtime import GpuProfile, GpuProfilePlugin, worker_profile
from jupyter_gpumarket.errors import InvalidRequest, WrongState
from jupyter_gpumarket.spec import HardwareClaim
from jupyter_gpumarket.verify.attest import (
    AttestationFailed,
    Challenge,
    attest_lease,
    run_challenge,
    simulate_behaviour,
    verify_rows,
)

H100 = GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0, simulated=True)
H100_CLAIM = HardwareClaim("NVIDIA H100 80GB HBM3", 1, 80, 989.0)
_RELEASE = threading.Event()  # module-level: the in-process worker unpickles _block by reference


def _block(seconds: float) -> bool:
    return _RELEASE.wait(seconds)


@pytest.fixture(scope="module")
def client():
    with LocalCluster(
        processes=False, n_workers=2, threads_per_worker=1, dashboard_address=None
    ) as cluster, Client(cluster) as c:
        c.register_plugin(GpuProfilePlugin(H100, lease_id=1))
        yield c


@pytest.fixture
def workers(client):
    addrs = sorted(client.scheduler_info(n_workers=-1)["workers"])
    assert len(addrs) == 2
    yield addrs
    client.run(simulate_behaviour, throughput=1.0, wrong_rows=0.0)  # back to honest


def test_profiles_are_declared(client, workers):
    profiles = client.run(worker_profile)
    assert {p["model"] for p in profiles.values()} == {H100.model}


def test_honest_workers_pass_repeatedly(client, workers):
    for _ in range(3):  # no false positives
        report = attest_lease(client, workers, H100_CLAIM)
        assert report.passed, report.reason
        assert len(report.workers) == 2
        for w in report.workers:
            assert w.model == H100.model and w.simulated and w.source == "declared"
            assert w.ratio >= 0.6 and w.rounds >= 4 and w.digest
        # measured figure is in claim units (calibrated against this CPU), for the auction
        assert 0.6 * 989.0 <= report.measured_tflops
        assert report.seconds > 0


def test_half_throughput_provider_fails_naming_throughput(client, workers):
    # A provider claiming twice what it delivers: its worker does each challenge's work twice.
    # Both sides time the products on their own thread's CPU clock, so load on the shared
    # machine cancels and half the throughput shows as a ratio near 0.5 < 0.6.
    slow, honest = workers
    client.run(simulate_behaviour, throughput=0.5, workers=[slow])
    report = attest_lease(client, workers, 989.0, claim_model="H100", claim_memory_gib=80)
    assert not report.passed, [(w.address, w.ratio, w.rounds, w.raw_tflops, w.cpu_tflops) for w in report.workers]
    by = {w.address: w for w in report.workers}
    assert not by[slow].passed
    assert "throughput too low" in by[slow].reason and "TFLOPS" in by[slow].reason
    assert by[slow].ratio < 0.6 and by[honest].ratio >= 0.6
    assert by[honest].passed, by[honest].reason
    assert slow in report.reason
    with pytest.raises(AttestationFailed, match="throughput"):
        report.raise_if_failed()
    assert issubclass(AttestationFailed, WrongState)


def test_wrong_digest_fails(client, workers):
    liar = workers[0]
    client.run(simulate_behaviour, wrong_rows=1.0, workers=[liar])
    report = attest_lease(client, [liar], 989.0)
    assert not report.passed
    assert "digest wrong" in report.workers[0].reason


def test_partly_invented_results_are_caught_by_row_sampling(client, workers):
    liar = workers[1]
    client.run(simulate_behaviour, wrong_rows=0.5, workers=[liar])
    # 16 sampled rows: an honest half passes with probability 2**-16 per round
    report = attest_lease(client, [liar], 989.0, rng=random.Random(1))
    assert not report.passed and "digest wrong" in report.workers[0].reason


def test_model_mismatch_fails(client, workers):
    report = attest_lease(client, workers, 312.0, claim_model="NVIDIA A100-SXM4-80GB")
    assert not report.passed
    for w in report.workers:
        assert "model mismatch" in w.reason and "A100" in w.reason and w.measured_tflops is None


def test_memory_mismatch_fails(client, workers):
    report = attest_lease(client, workers[:1], 989.0, claim_memory_gib=141)
    assert not report.passed and "memory mismatch" in report.workers[0].reason


def test_unresponsive_worker_times_out(client, workers):
    busy = workers[0]
    _RELEASE.clear()
    blocker = client.submit(_block, 30, workers=[busy], pure=False)
    try:
        report = attest_lease(client, workers, 989.0, timeout=1.0)
    finally:
        _RELEASE.set()
        blocker.result()
    by = {w.address: w for w in report.workers}
    assert not by[busy].passed and "did not answer" in by[busy].reason and "1 s" in by[busy].reason
    assert by[workers[1]].passed, by[workers[1]].reason


def test_unknown_worker_fails_and_bad_arguments_raise(client, workers):
    report = attest_lease(client, ["tcp://127.0.0.1:1"], 989.0)
    assert not report.passed and "not connected" in report.reason
    with pytest.raises(InvalidRequest):
        attest_lease(client, workers, 989.0, tolerance=1.5)
    with pytest.raises(InvalidRequest):
        Challenge(seed=1, n=64, reps=5, segments=2)


def test_challenge_is_seeded_and_checked_locally():
    ch = Challenge(seed=2**63 + 5, n=128, reps=6, segments=2)
    a, b = run_challenge(ch.seed, ch.n, ch.reps, ch.segments), run_challenge(ch.seed, ch.n, ch.reps, ch.segments)
    assert a["digest"] == b["digest"] and np.shape(a["row_sums"]) == (2, 128)
    other = run_challenge(ch.seed + 1, ch.n, ch.reps, ch.segments)
    assert other["digest"] != a["digest"]
    picks = [(s, r) for s in range(2) for r in range(0, 128, 9)]
    assert verify_rows(ch, a, picks) is None
    forged = dict(a, row_sums=(np.asarray(a["row_sums"]) * 0).tolist())
    assert "digest wrong" in verify_rows(ch, forged, picks)
    assert "shape" in verify_rows(ch, dict(a, row_sums=[[1.0]]), picks)
    assert Challenge.size_for(80, simulated=True) == 768
    assert Challenge.size_for(80, simulated=False) == 8192
    assert Challenge.size_for(0.0001, simulated=True) == 64
