"""A devnet with three provider agents for the notebook tests, found through dask config."""

from __future__ import annotations

import dask.config
import pytest

from jupyter_gpumarket.chain import Devnet, DevnetParams


@pytest.fixture(scope="session")
def market_net(tmp_path_factory):
    state = tmp_path_factory.mktemp("nb-devnet")
    # provider3 has no agent: the provider notebook serves from it.
    with Devnet.up(state_dir=state, params=DevnetParams(providers=4)) as net:
        net.start_agents(count=3)
        net.wait_for_providers(3)
        with dask.config.set({"gpumarket.devnet-dir": str(state), "gpumarket.window": 2}):
            yield net
