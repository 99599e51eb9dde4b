"""Hard spending caps: refused before any transaction, and never exceeded by concurrent cells.

Against the notebook devnet (three agents, one GPU each). Each test keeps its lease history in
its own home, and no watchdog is started (the caps are the subject here).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import dask.config
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_gpumarket.errors import InsufficientFunds
from jupyter_gpumarket.session import RentRequest, Session

GPU = "H100|A100|4090"
# One GPU for half an hour at 3.00 at most (1.50), capped by its own budget of 1.00: commits 1.00.
REQUEST = RentRequest(gpus=1, gpu=GPU, max_price=3_000_000, hours=0.5, budget=1_000_000, window=4)


@pytest.fixture
def home(market_net, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMARKET_HOME", str(tmp_path))
    with dask.config.set({"gpumarket.watchdog": False}):
        yield tmp_path


def chain_state(net, client) -> dict:
    """Everything a refused cell must leave alone: the tenant's nonce, every balance, the order count."""
    return {role: client.balance(addr) for role, addr in net.info.addresses.items()} | {
        "nonce": client.w3.eth.get_transaction_count(client.address),
        "market": client.balance(client.market.address),
        "orders": client.market.functions.orderCount().call(),
    }


def test_a_cell_over_the_session_or_account_cap_is_refused_before_any_transaction(market_net, home):
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_gpumarket")
    with capture_output():
        shell.run_line_magic("gpumarket", "connect --devnet")
    session = shell.magics_manager.registry["GpuMarketMagics"].session
    before = chain_state(market_net, session.client)
    with capture_output() as meter:
        shell.run_line_magic("gpumarket", "budget 2.50")
    assert meter.stdout.strip() == "budget 2.50 TUSD; spent 0.00 TUSD; committed 0.00 TUSD; remaining 2.50 TUSD"
    try:
        with pytest.raises(UsageError, match=r"may commit 3\.00 TUSD but the session has 2\.50 TUSD of its 2\.50"):
            shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1", "cap_cell_ran = 1")
        session.set_budget(None)
        session.account_cap = 500_000  # what gpumarket.account-cap "0.50" gives
        with pytest.raises(UsageError, match=r"the account has 0\.50 TUSD of its 0\.50 TUSD cap left"):
            shell.run_cell_magic("gpurent", f"--gpus 1 --gpu '{GPU}' --budget 1", "cap_cell_ran = 1")
        assert chain_state(market_net, session.client) == before  # not even an approval was sent
        assert "cap_cell_ran" not in shell.user_ns
    finally:
        session.set_budget(None)
        session.account_cap = None


def test_concurrent_cells_never_commit_beyond_the_session_cap(market_net, home):
    session = Session.connect(devnet=True)
    session.set_budget(1_500_000)  # fits one 1.00 request, not two
    before = chain_state(market_net, session.client)
    start, results, peak = threading.Barrier(3), [], []
    sampling = threading.Event()

    def cell():
        start.wait()
        try:
            results.append(session.rent(REQUEST, reuse=False))
        except Exception as exc:  # noqa: BLE001 (kept, so the assertions below show it)
            results.append(exc)

    def meter():
        while not sampling.is_set():
            peak.append(session.meter()["committed"])
            sampling.wait(0.05)

    watcher = threading.Thread(target=meter)
    watcher.start()
    cells = [threading.Thread(target=cell) for _ in range(3)]
    for t in cells:
        t.start()
    for t in cells:
        t.join(timeout=180)
    sampling.set()
    watcher.join()
    try:
        leased = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, InsufficientFunds)]
        assert len(leased) == 1 and len(refused) == 2, results
        assert all("session has 0.50 TUSD of its 1.50 TUSD budget left" in str(e) for e in refused)
        after = chain_state(market_net, session.client)
        assert after["orders"] == before["orders"] + 1  # exactly one order was made
        assert max(peak) <= 1_500_000 and session.committed() <= 1_500_000
        assert before["tenant"] - after["tenant"] == session.committed() == leased[0].leaser.committed
    finally:
        session.close()


RACER = textwrap.dedent("""
    import os, sys, time
    from jupyter_gpumarket.errors import InsufficientFunds
    from jupyter_gpumarket.session import RentRequest, Session

    session = Session.connect(devnet=True)
    go = sys.argv[1]
    open(go + "." + str(os.getpid()), "w").close()
    while not os.path.exists(go):
        time.sleep(0.01)
    try:
        cluster = session.rent(RentRequest(gpus=1, gpu={gpu!r}, max_price=3_000_000, hours=0.5, budget=1_000_000,
                                           window=4), reuse=False)
    except InsufficientFunds as exc:
        print("REFUSED", exc, flush=True)
    else:
        print("LEASED", *cluster.leaser.leases, flush=True)
        sys.stdin.read()  # hold the lease until the test has looked
        session.close()
""")


def test_two_kernels_never_commit_beyond_the_account_cap(market_net, home):
    client = market_net.client("tenant")
    before = chain_state(market_net, client)
    go = home / "go"
    env = {**os.environ, "DASK_GPUMARKET__DEVNET_DIR": str(market_net.state_dir), "DASK_GPUMARKET__WATCHDOG": "false",
           "DASK_GPUMARKET__ACCOUNT_CAP": "1.50"}
    kernels = [subprocess.Popen([sys.executable, "-c", RACER.format(gpu=GPU), str(go)], env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE) for _ in range(2)]
    try:
        deadline_files = [home / f"go.{k.pid}" for k in kernels]
        while not all(f.exists() for f in deadline_files):  # both connected: start them together
            assert all(k.poll() is None for k in kernels), "a kernel died before the race"
            threading.Event().wait(0.05)
        go.touch()
        lines = sorted(k.stdout.readline().strip() for k in kernels)
        assert lines[0].startswith("LEASED") and lines[1].startswith("REFUSED"), lines
        assert "the account has 0.50 TUSD of its 1.50 TUSD cap left" in lines[1]
        during = chain_state(market_net, client)
        assert during["orders"] == before["orders"] + 1
        (lease_id,) = map(int, lines[0].split()[1:])
        assert 0 < before["tenant"] - during["tenant"] == client.lease(lease_id).deposit <= 1_000_000
    finally:
        for k in kernels:
            if k.poll() is None:
                k.stdin.close()  # the leasing kernel releases and exits
        for k in kernels:
            k.wait(timeout=120)
            k.stdout.close()
    assert client.lease(lease_id).status.name == "CLOSED"


def test_the_budget_meter_widget_shows_spent_committed_and_remaining(market_net, home):
    from jupyter_gpumarket.notebook.widgets import BudgetMeter

    session = Session.connect(devnet=True)
    session.set_budget("2.50")
    session.account_cap = 4_000_000
    meter = BudgetMeter(session, use_widgets=True)
    assert (meter.bar.max, meter.bar.value) == (2_500_000, 0)
    cells = [cell.split(">")[-1] for cell in meter.html.value.split("</td>")]
    assert cells[:5] == ["session", "0.00 TUSD", "0.00 TUSD", "2.50 TUSD", "2.50 TUSD"]
    assert cells[5:9] == ["account (all kernels)", "", "0.00 TUSD", "4.00 TUSD"]
