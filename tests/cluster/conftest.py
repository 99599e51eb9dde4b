"""Fixtures for the TLS and lease-runtime tests: real certificates, real Dask."""

from __future__ import annotations

import pytest

from jupyter_gpumarket.cluster.runtime import GpuProfile, LeaseRuntime
from jupyter_gpumarket.cluster.tls import ProviderKey, TenantCA

HOSTS = ["127.0.0.1", "localhost"]
H100 = GpuProfile("NVIDIA H100 80GB HBM3", 80, 989.0, simulated=True)
A100 = GpuProfile("NVIDIA A100-SXM4-80GB", 80, 312.0, simulated=True)


def provider_security(ca: TenantCA, hosts=HOSTS):
    """What a provider does once its bid is accepted: CSR -> signed cert -> Security."""
    key = ProviderKey.generate()
    cert = ca.sign_provider(key.csr(hosts), key.fingerprint, hosts)
    return key.security(ca.cert_pem, cert, expected_ca_fingerprint=ca.fingerprint)


@pytest.fixture(scope="session")
def make_security():
    """``make_security(ca)``: a fresh provider's Security signed by ``ca``."""
    return provider_security


@pytest.fixture(scope="module")
def ca() -> TenantCA:
    return TenantCA.create()


@pytest.fixture(scope="module")
def other_ca() -> TenantCA:
    return TenantCA.create(name="somebody else")


@pytest.fixture(scope="module")
def order_cluster(ca):
    """One order, two leases: lease 1 hosts the scheduler, lease 2's workers join it."""
    first = LeaseRuntime(1, provider_security(ca), H100, gpus=2)
    address = first.start()
    second = LeaseRuntime(2, provider_security(ca), A100, gpus=2, scheduler_address=address)
    second.start()
    yield first, second
    second.close()
    first.close()
