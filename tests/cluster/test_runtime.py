"""LeaseRuntime: real mutual TLS, real Dask scheduler and workers, no mocks."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import pytest
from distributed import Client, Security
from distributed.comm import CommClosedError, connect
from distributed.comm.core import FatalCommClosedError

from jupyter_gpumarket.cluster.runtime import GpuProfile, LeaseRuntime, LeaseRuntimeError, worker_profile
from jupyter_gpumarket.errors import InvalidRequest

CONNECT_ERRORS = (OSError, TimeoutError, CommClosedError, FatalCommClosedError, ssl.SSLError, asyncio.TimeoutError)
PROFILE = GpuProfile("NVIDIA GeForce RTX 4090", 24, 165.0, simulated=True)


def identity(address: str, **connection_args) -> dict:
    """Connect at the comm level, as any client would, and ask the server who it is."""

    async def go():
        comm = await connect(address, timeout=3, **connection_args)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await asyncio.wait_for(comm.read(), 3)
        finally:
            comm.abort()

    return asyncio.run(go())


def _tls_without_client_cert(ca) -> ssl.SSLContext:
    """A context that trusts the right CA but presents no certificate."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca.cert_pem.decode())
    ctx.check_hostname = False
    return ctx


def test_two_leases_form_one_cluster_and_compute_over_tls(order_cluster, ca):
    first, second = order_cluster
    assert first.alive and second.alive
    assert first.scheduler_address.startswith("tls://127.0.0.1:")
    assert second.scheduler_address == first.scheduler_address
    with Client(first.scheduler_address, security=ca.client_security(), timeout="10s") as client:
        client.wait_for_workers(4, timeout=10)
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert set(workers) == set(first.workers) | set(second.workers)
        assert len(first.workers) == len(second.workers) == 2
        assert all(a.startswith("tls://") for a in workers)
        assert sorted(w["name"] for w in workers.values()) == [
            "lease-1-gpu-0", "lease-1-gpu-1", "lease-2-gpu-0", "lease-2-gpu-1"
        ]
        assert all(w["resources"] == {"GPU": 1} and w["nthreads"] == 1 for w in workers.values())

        futures = client.map(lambda x: x * x, range(100), resources={"GPU": 1})
        assert sum(client.gather(futures)) == sum(x * x for x in range(100))

        profiles = client.run(worker_profile)
        assert {p["lease_id"] for p in profiles.values()} == {1, 2}
        for address in first.workers:
            assert profiles[address]["model"] == "NVIDIA H100 80GB HBM3"
            assert profiles[address]["memory_gib"] == 80 and profiles[address]["tflops"] == 989.0
            assert profiles[address]["simulated"] is True
        for address in second.workers:
            assert profiles[address]["model"] == "NVIDIA A100-SXM4-80GB"
            assert workers[address]["gpu_profile"]["tflops"] == 312.0  # also in the scheduler's info


def test_tenant_certificate_reaches_scheduler_and_workers(order_cluster, ca):
    first, second = order_cluster
    args = ca.client_security().get_connection_args("client")
    assert identity(first.scheduler_address, **args)["type"] == "Scheduler"
    assert identity(second.workers[0], **args)["type"] == "Worker"


def test_other_tenants_certificate_is_refused(order_cluster, other_ca):
    first, second = order_cluster
    args = other_ca.client_security().get_connection_args("client")
    for address in (first.scheduler_address, first.workers[0], second.workers[1]):
        with pytest.raises(CONNECT_ERRORS):
            identity(address, **args)
    with pytest.raises(CONNECT_ERRORS):
        Client(first.scheduler_address, security=other_ca.client_security(), timeout="2s")


def test_foreign_client_certificate_is_refused_even_when_trusting_the_ca(order_cluster, ca, other_ca):
    """The listeners check the *client's* certificate (mutual TLS), not only the other way round."""
    first, second = order_cluster
    foreign = other_ca.client_security()
    sec = Security(
        require_encryption=True,
        tls_ca_file=ca.cert_pem.decode(),
        tls_client_cert=foreign.tls_client_cert,
        tls_client_key=foreign.tls_client_key,
    )
    for address in (first.scheduler_address, second.workers[0]):
        with pytest.raises(CONNECT_ERRORS):
            identity(address, **sec.get_connection_args("client"))
        with pytest.raises(CONNECT_ERRORS):
            identity(address, ssl_context=_tls_without_client_cert(ca))


def test_plaintext_clients_cannot_connect(order_cluster):
    first, second = order_cluster
    for address in (first.scheduler_address, second.workers[0]):
        plain = address.replace("tls://", "tcp://")
        with pytest.raises(CONNECT_ERRORS):
            identity(plain)
    with pytest.raises(CONNECT_ERRORS):
        Client(first.scheduler_address.replace("tls://", "tcp://"), timeout="2s")
    with pytest.raises((TypeError, *CONNECT_ERRORS)):  # tls:// without any TLS configuration
        Client(first.scheduler_address, timeout="2s")


def test_workers_of_another_order_cannot_join(order_cluster, other_ca, make_security):
    first, _ = order_cluster
    intruder = LeaseRuntime(99, make_security(other_ca), PROFILE, gpus=1,
                            scheduler_address=first.scheduler_address, timeout=3)
    with pytest.raises(LeaseRuntimeError, match="failed to start"):
        intruder.start()
    assert not intruder.alive and intruder.workers == []
    intruder.close()


def test_closing_a_lease_removes_its_workers_and_frees_everything(ca, make_security):
    before = {t.ident for t in threading.enumerate()}
    host = LeaseRuntime(10, make_security(ca), PROFILE, gpus=1)
    address = host.start()
    joiner = LeaseRuntime(11, make_security(ca), PROFILE, gpus=2, scheduler_address=address)
    joiner.start()
    ports = [int(a.rsplit(":", 1)[1]) for a in [address, *host.workers, *joiner.workers]]
    with Client(address, security=ca.client_security(), timeout="10s") as client:
        client.wait_for_workers(3, timeout=10)
        joiner.close()
        joiner.close()  # idempotent
        assert not joiner.alive and joiner.workers == []
        assert set(client.scheduler_info()["workers"]) == set(host.workers)
        assert client.submit(lambda: 42, resources={"GPU": 1}).result(timeout=10) == 42
    host.close()
    host.close()
    assert not host.alive
    lingering = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("lease-")]
    assert lingering == []
    for port in ports:  # every listener is gone: the ports can be bound again
        with socket.socket() as s:
            # SO_REUSEADDR: closed connections may linger in TIME_WAIT; only a live listener blocks this bind.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
    with pytest.raises(LeaseRuntimeError, match="closed"):
        host.start()


def test_runtime_refuses_insecure_or_bad_arguments(ca, make_security):
    with pytest.raises(InvalidRequest, match="require_encryption"):
        LeaseRuntime(1, Security(require_encryption=False), PROFILE, gpus=1)
    with pytest.raises(InvalidRequest, match="gpus"):
        LeaseRuntime(1, make_security(ca), PROFILE, gpus=0)
    with pytest.raises(InvalidRequest, match="tls://"):
        LeaseRuntime(1, make_security(ca), PROFILE, gpus=1, scheduler_address="tcp://127.0.0.1:8786")


def test_detect_returns_none_without_nvidia_gpus():
    detected = GpuProfile.detect()
    assert detected is None or (detected.simulated is False and detected.memory_gib > 0)
