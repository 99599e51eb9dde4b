"""Shared fixtures: one real anvil devnet per test session, reset between tests.

``net`` is the running :class:`Devnet`; ``chain`` gives each test a fresh copy
of the deployed state (anvil snapshot before, revert after), so tests can move
money and time freely without seeing each other's effects.
"""

from __future__ import annotations

import pytest

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.spec import HardwareClaim

PROVIDER_CLAIMS = {
    "provider0": HardwareClaim("NVIDIA H100 80GB HBM3", 8, 80, 989.0),
    "provider1": HardwareClaim("NVIDIA A100-SXM4-80GB", 4, 80, 312.0),
    "provider2": HardwareClaim("NVIDIA GeForce RTX 4090", 2, 24, 165.0),
}


@pytest.fixture(scope="session")
def net(tmp_path_factory):
    with Devnet.up(state_dir=tmp_path_factory.mktemp("devnet"), params=DevnetParams(providers=3)) as devnet:
        yield devnet


@pytest.fixture
def chain(net):
    """The devnet, rolled back to its deployed state after the test (clock kept level with the wall)."""
    snapshot = net.snapshot()
    yield net
    net.revert(snapshot)


@pytest.fixture(scope="session", autouse=True)
def gpumarket_home(tmp_path_factory):
    """Keep lease history, CA files and devnet files of the test run out of the user's home."""
    import os

    home = tmp_path_factory.mktemp("gpumarket-home")
    old = os.environ.get("GPUMARKET_HOME")
    os.environ["GPUMARKET_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("GPUMARKET_HOME", None)
    else:
        os.environ["GPUMARKET_HOME"] = old
