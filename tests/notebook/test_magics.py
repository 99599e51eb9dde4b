"""%%gpurent and %gpumarket through a real IPython shell against the devnet."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_gpumarket.notebook.receipts import MIME_TYPE
from jupyter_gpumarket.spec import DealStatus

GPU = "H100|A100|4090"


@pytest.fixture(scope="module")
def shell(market_net):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_gpumarket")
    ip.run_line_magic("gpumarket", "connect --devnet")
    yield ip
    ip.run_line_magic("gpumarket", "release all")


def magics(shell):
    return shell.magics_manager.registry["GpuMarketMagics"]


def receipts_in(captured) -> list[dict]:
    return [out.data[MIME_TYPE] for out in captured.outputs if MIME_TYPE in out.data]


def balance_state(net, client):
    return {role: client.balance(addr) for role, addr in net.info.addresses.items()} | {
        "market": client.balance(client.market.address), "orders": client.market.functions.orderCount().call()}


def test_lease_reused_in_a_second_cell_then_released(shell, market_net):
    session = magics(shell).session
    with capture_output() as first:
        shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1 --budget 5",
                             "import dask\nanswer = dask.delayed(sum)([20, 22]).compute()\nprint('answer', answer)")
    assert "answer 42" in first.stdout
    assert shell.user_ns["answer"] == 42
    (receipt,) = receipts_in(first)
    assert receipt["chain_id"] == 31337 and receipt["market"] == market_net.info.market
    (line,) = receipt["leases"]
    lease_id = line["lease"]
    assert line["status"] == "active" and line["gpus"] == 1 and receipt["cost"] == line["cost"] >= 0
    assert line["tx_hashes"] and all(h.startswith("0x") and len(h) == 66 for h in line["tx_hashes"])
    assert session.client.lease(lease_id).status == DealStatus.ACTIVE
    orders = session.client.market.functions.orderCount().call()

    with capture_output() as second:
        shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1 --budget 5 --release",
                             "again = dask.delayed(sum)([1, 2]).compute()")
    assert shell.user_ns["again"] == 3
    assert session.client.market.functions.orderCount().call() == orders  # reused: no new order
    (receipt2,) = receipts_in(second)
    (line2,) = receipt2["leases"]
    assert line2["lease"] == lease_id and line2["status"] == "closed"
    lease = session.client.lease(lease_id)
    assert lease.status == DealStatus.CLOSED
    final = next(r for r in session.receipts if r.lease_id == lease_id)
    assert final.paid_to_provider + final.fee + final.refunded == lease.deposit
    assert receipt2["refunded"] == final.refunded
    assert "gpumarket receipt" in second.outputs[-1].data["text/plain"]


def test_session_budget_refuses_before_any_transaction(shell, market_net):
    session = magics(shell).session
    before = balance_state(market_net, session.client)
    shell.run_line_magic("gpumarket", "budget 1.00")
    try:
        with pytest.raises(UsageError, match="session has .* budget left"):
            shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1", "x = 1")
        assert balance_state(market_net, session.client) == before
    finally:
        session.set_budget(None)


@pytest.mark.parametrize(
    "line,message",
    [
        ("--gpus 1 --bogus 3", "invalid arguments"),
        ("--gpus -2", "ask for at least 1 GPU"),
        ("--max-price cheap", "--max-price: 'cheap' is not an amount"),
        ("--budget 0", "budget must be above 0"),
        ("--gpus 1 --gpu B200 --window 1", "no registered provider has a GPU matching 'B200'"),
        ("--gpus 1 --gpu '(' ", "is not a valid pattern"),
    ],
)
def test_bad_arguments_are_one_clear_line_and_move_nothing(shell, market_net, line, message):
    session = magics(shell).session
    before = balance_state(market_net, session.client)
    with pytest.raises(UsageError, match=message):
        shell.run_cell_magic("gpurent", line, "x = 1")
    # Through run_cell, as a user sees it: one line, no traceback.
    with capture_output() as shown:
        shell.run_cell(f"%%gpurent {line}\nx = 1\n")
    text = shown.stdout + shown.stderr
    assert "UsageError" in text and "Traceback" not in text
    assert balance_state(market_net, session.client) == before


def test_devnet_down_is_a_clear_usage_error(tmp_path):
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "jupyter_gpumarket")
    import dask.config

    with dask.config.set({"gpumarket.devnet-dir": str(tmp_path)}):
        with pytest.raises(UsageError, match="start one with `gpumarket devnet up`"):
            ip.run_line_magic("gpumarket", "connect --devnet")


def test_offers_leases_history_and_budget_lines(shell):
    with capture_output() as out:
        shell.run_line_magic("gpumarket", "offers")
        shell.run_line_magic("gpumarket", "leases")
        shell.run_line_magic("gpumarket", "history")
        shell.run_line_magic("gpumarket", "budget")
    text = out.stdout
    assert "NVIDIA H100 80GB HBM3" in text and "NVIDIA GeForce RTX 4090" in text
    assert "no live leases" in text
    assert "lease " in text and "cost " in text  # history of the first test's lease
    assert "budget no cap" in text


def test_a_restarted_kernel_reattaches_instead_of_ordering_again(shell, market_net):
    """A new Session (as a restarted kernel makes) finds the live lease in the history store."""
    from jupyter_gpumarket.session import RentRequest, Session

    with capture_output():
        shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1 --budget 5", "y = 1")
    old = magics(shell).session
    (lease_id,) = [line for c in old.clusters for line in c.leaser.leases]
    orders = old.client.market.functions.orderCount().call()

    fresh = Session.connect(devnet=True)  # the restarted kernel: no clusters in memory
    # A live cluster that does not fit is looked at and let go of, never released.
    assert fresh.find(RentRequest(gpus=1, gpu="RTX 4090", max_price=3_000_000, hours=1)) is None
    assert fresh.client.lease(lease_id).status == DealStatus.ACTIVE
    request = RentRequest(gpus=1, gpu=GPU, max_price=3_000_000, hours=1, budget=5_000_000)
    cluster = fresh.find(request)
    assert cluster is not None and set(cluster.leaser.leases) == {lease_id}
    assert fresh.client.market.functions.orderCount().call() == orders
    from distributed import Client

    with Client(cluster) as client:
        assert client.submit(lambda: 6 * 7).result() == 42
    fresh.release(cluster)
    assert fresh.client.lease(lease_id).status == DealStatus.CLOSED
    magics(shell)._release_cluster(old.clusters[0])  # the old kernel's view is stale: settling is a no-op
