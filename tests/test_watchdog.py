"""The watchdog on the session devnet: a killed kernel's lease is released and settled to the
base unit; an idle lease is warned about in the notebook, its checkpoint pulled back first.

Provider agents run for this module only, on an anvil snapshot reverted at the end. The
watchdog is the real detached process a session starts with its first lease, with a short
idle timeout; lease history, watchdog lock and checkpoints live in a home of this module.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import dask.config
import pytest

from jupyter_gpumarket.spec import DealStatus, accrued

GPU = "H100|A100|4090"
POLICY = {"gpumarket.idle-timeout": 8, "gpumarket.warn-before": 5, "gpumarket.watchdog-interval": 0.5,
          "gpumarket.holder-interval": 1, "gpumarket.window": 4}


@pytest.fixture(scope="module")
def market(net, tmp_path_factory):
    """Agents on the session devnet, a home of our own, the short watchdog policy; all undone after."""
    from jupyter_gpumarket.watchdog import stop_watchdog

    snapshot = net.snapshot()
    home = tmp_path_factory.mktemp("watchdog-home")
    old_home = os.environ.get("GPUMARKET_HOME")
    os.environ["GPUMARKET_HOME"] = str(home)
    net.start_agents()
    try:
        net.wait_for_providers(3)
        with dask.config.set({**POLICY, "gpumarket.devnet-dir": str(net.state_dir)}):
            yield net, home
    finally:
        tenant = net.client("tenant")
        stop_watchdog(tenant.chain_id, tenant.market.address, tenant.address)
        net.stop_agents()
        net.revert(snapshot)
        if old_home is None:
            os.environ.pop("GPUMARKET_HOME", None)
        else:
            os.environ["GPUMARKET_HOME"] = old_home


def wait_for(condition, timeout: float, what: str):
    """Poll ``condition`` until it returns something truthy (generous timeouts: a shared machine)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def notices(home, kind: str) -> list[dict]:
    from jupyter_gpumarket.history import LeaseStore

    return [n for n in LeaseStore(home / "history.sqlite").notices() if n["kind"] == kind]


def test_an_old_history_database_is_migrated_and_counts_towards_the_account_cap(tmp_path):
    """A store written before the watchdog existed opens, gains the new tables and columns,
    and its settled cost (from the receipt JSON) counts towards the account cap."""
    from jupyter_gpumarket.history import LeaseStore

    path = tmp_path / "history.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE clusters (name TEXT PRIMARY KEY, chain_id INTEGER, market TEXT, tenant TEXT, ca_path TEXT,
                scheduler TEXT, request TEXT, created REAL, state TEXT DEFAULT 'live');
            CREATE TABLE leases (chain_id INTEGER, market TEXT, lease_id INTEGER, cluster TEXT, order_id INTEGER,
                provider_id INTEGER, endpoint TEXT, hosts_scheduler INTEGER, gpus INTEGER, price INTEGER,
                deposit INTEGER, started_at INTEGER, provider_fingerprint TEXT, tenant_ca_fingerprint TEXT,
                state TEXT DEFAULT 'live', receipt TEXT, updated REAL, PRIMARY KEY (chain_id, market, lease_id));
            INSERT INTO clusters VALUES ('c1', 31337, '0xM', '0xT', '/ca', 'tls://h:1', '{}', 0, 'live');
            INSERT INTO leases VALUES (31337, '0xM', 1, 'c1', 1, 0, 'http://h', 1, 1, 2000000, 2000000, 0, 'a', 'b',
                'settled', '{"paid_to_provider": 1234567, "fee": 3, "refunded": 765430}', 9e9);
            INSERT INTO leases VALUES (31337, '0xM', 2, 'c1', 2, 0, 'http://h', 1, 1, 2000000, 1500000, 0, 'a', 'b',
                'live', NULL, 9e9);
        """)
    store = LeaseStore(path)
    assert store.lease(31337, "0xM", 1)["cost"] == 1_234_570
    assert store.account_committed(31337, "0xM", "0xT", since=0) == 1_234_570 + 1_500_000
    assert store.reserve(chain_id=31337, market="0xM", tenant="0xT", amount=1, cap=2_734_570, since=0)[0] is None
    store.touch_holder("c1")
    assert store.holder("c1")["pid"] == os.getpid()


KERNEL = textwrap.dedent("""
    import time
    from distributed import Client
    from jupyter_gpumarket.session import RentRequest, Session

    session = Session.connect(devnet=True)
    cluster = session.rent(RentRequest(gpus=1, gpu={gpu!r}, max_price=3_000_000, hours=1, budget=5_000_000, window=4))
    client = Client(cluster)
    busy = client.submit(time.sleep, 3600)  # a cell still running when the kernel dies
    while not client.processing() or not any(client.processing().values()):
        time.sleep(0.1)
    print("LEASE", *cluster.leaser.leases, flush=True)
    time.sleep(3600)
""")


def test_a_killed_kernel_is_released_by_the_watchdog_and_settled_to_the_base_unit(market):
    net, home = market
    tenant = net.client("tenant")
    before = {role: tenant.balance(address) for role, address in net.info.addresses.items()}
    env = {**os.environ, "DASK_GPUMARKET__DEVNET_DIR": str(net.state_dir),
           **{f"DASK_{k.upper().replace('.', '__').replace('-', '_')}": str(v) for k, v in POLICY.items()}}
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL.format(gpu=GPU)], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        line = kernel.stdout.readline()
        assert line.startswith("LEASE"), f"the kernel did not lease (exit {kernel.poll()})"
        (lease_id,) = map(int, line.split()[1:])
        assert tenant.lease(lease_id).status == DealStatus.ACTIVE
        os.kill(kernel.pid, signal.SIGKILL)  # the kernel dies holding the lease
    finally:
        kernel.kill()
        kernel.wait()
        kernel.stdout.close()

    wait_for(lambda: tenant.lease(lease_id).status == DealStatus.CLOSED, 120, "the watchdog to close the lease")
    lease = tenant.lease(lease_id)
    (closed,) = tenant.get_logs("LeaseClosed", leaseId=lease_id)
    withdrawn = sum(w["amount"] for w in tenant.get_logs("PaymentWithdrawn", leaseId=lease_id))
    owed = accrued(lease.price_per_gpu_hour, lease.gpus, lease.ends_at - lease.started_at)
    assert closed["paid"] + withdrawn == owed  # paid exactly until the close, by the contract's formula
    assert closed["refunded"] == lease.deposit - owed
    assert closed["transactionHash"]
    provider = next(role for role, a in net.info.addresses.items() if a == tenant.provider(lease.provider_id).owner)
    assert tenant.balance(net.info.addresses[provider]) - before[provider] == owed
    assert before["tenant"] - tenant.balance() == owed  # the tenant got the rest back
    (released,) = wait_for(lambda: [n for n in notices(home, "released") if n["lease_id"] == lease_id], 60,
                           "the watchdog's release notice")  # posted right after the close
    assert "notebook gone" in released["message"]
    # `gpumarket watchdog status` lists what it did, for a user who comes back later.
    from jupyter_gpumarket.cli import main

    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["watchdog", "status", "--devnet", "--state-dir", str(net.state_dir)]) == 0
    assert f"[released, open] lease {lease_id} was released by the watchdog (notebook gone" in out.getvalue()


def test_an_idle_lease_is_warned_about_in_the_notebook_and_its_checkpoint_pulled_before_release(market):
    pytest.importorskip("torch")
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    net, home = market
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_gpumarket")
    shell.run_line_magic("gpumarket", "connect --devnet")
    session = shell.magics_manager.registry["GpuMarketMagics"].session
    try:
        with capture_output():
            shell.run_cell_magic(
                "gpurent", f"--gpus 1 --gpu '{GPU}' --max-price 3.00 --hours 1 --budget 5",
                "from distributed import get_client\nfrom workflows.finetune import SyntheticTask, finetune\n"
                "tiny = SyntheticTask(n_train=512, n_test=128, hidden=16, depth=1)\n"
                "trained = finetune(get_client(), tiny, steps=8, sync_every=4, batch_size=16)")
        (lease_id,) = [lease for c in session.clusters for lease in c.leaser.leases]
        trained = shell.user_ns["trained"]
        with capture_output() as later:  # the next cells' output area, while the notebook sits idle
            (warning,) = wait_for(lambda: [n for n in notices(home, "idle-warning") if n["lease_id"] == lease_id],
                                  120, "the idle warning")
            # The checkpoint is on the tenant's disk while the lease is still open...
            assert session.client.lease(lease_id).status == DealStatus.ACTIVE
            with open(warning["checkpoint"], "rb") as f:
                assert f.read() == trained.checkpoint  # the last round's weights, byte for byte
            # ...and the notebook shows the warning before the release.
            wait_for(lambda: "will be released in" in later.stdout, 60, "the warning in the output")
            wait_for(lambda: session.client.lease(lease_id).status == DealStatus.CLOSED, 120, "the idle release")
            wait_for(lambda: "was released by the watchdog (idle" in later.stdout, 60, "the release notice")
        # The notebook settles its view: no transaction, the cluster dropped, the meter exact.
        wait_for(lambda: not session.clusters, 60, "the notebook to drop the released cluster")
        (receipt,) = [r for r in session.receipts if r.lease_id == lease_id]
        assert receipt.paid_to_provider + receipt.fee + receipt.refunded == session.client.lease(lease_id).deposit
        assert session.meter()["committed"] == session.meter()["spent"] == receipt.cost
        shown = later.stdout
        assert shown.index("will be released in") < shown.index("was released by the watchdog")
        assert f"checkpoints/{lease_id}/finetune.pt" in shown
        assert str(lease_id) in warning["message"] and "unless a task runs" in warning["message"]
    finally:
        magics = shell.magics_manager.registry["GpuMarketMagics"]
        if magics._notices is not None:
            magics._notices.stop()
        shell.run_line_magic("gpumarket", "release all")


def test_a_lease_past_its_duration_is_released_and_refunded_at_once(market):
    """Runs last: it moves the chain's clock forward."""
    from jupyter_gpumarket.session import RentRequest, Session
    from jupyter_gpumarket.watchdog import Watchdog, WatchdogPolicy

    net, _ = market
    with dask.config.set({"gpumarket.watchdog": False}):  # this test drives the watchdog itself
        session = Session.connect(devnet=True)
        cluster = session.rent(RentRequest(gpus=1, gpu=GPU, max_price=3_000_000, hours=0.5, budget=5_000_000,
                                           window=4), reuse=False)
    dog = Watchdog(session, WatchdogPolicy(idle_timeout=600, warn_before=60, interval=1))
    try:
        (lease_id,) = cluster.leaser.leases
        lease = session.client.lease(lease_id)
        assert dog.tick() and not dog.log  # a live, attended lease within its time: left alone
        net.mine(lease.ends_at + 5)  # the chain's clock passes the lease's end
        # A row another devnet (same chain id and market address) left in the shared store is not ours.
        session.store.record_lease(999_999, chain_id=session.client.chain_id, market=session.client.market.address,
                                   cluster=cluster.name, order_id=1, provider_id=0, endpoint="http://elsewhere",
                                   hosts_scheduler=False, gpus=1, price=1, deposit=1, started_at=1,
                                   provider_fingerprint="", tenant_ca_fingerprint="")
        assert not dog.tick()  # nothing of this account left live on this chain: the watchdog would exit
        assert dog.log == [f"lease {lease_id}: released (its duration is over)"]
        assert session.store.lease(session.client.chain_id, session.client.market.address, 999_999)["state"] == "live"
        (closed,) = session.client.get_logs("LeaseClosed", leaseId=lease_id)
        withdrawn = sum(w["amount"] for w in session.client.get_logs("PaymentWithdrawn", leaseId=lease_id))
        owed = accrued(lease.price_per_gpu_hour, lease.gpus, lease.ends_at - lease.started_at)  # not a second more
        assert closed["paid"] + withdrawn == owed and closed["refunded"] == lease.deposit - owed
    finally:
        dog.close()
        session.settle_closed(cluster.name)
        session.close()
