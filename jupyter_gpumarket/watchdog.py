"""The tenant's watchdog: a notebook that died or went idle never keeps paying.

One small process per account and state directory (``$GPUMARKET_HOME``),
started detached by a session's first lease (:meth:`Session.start_watchdog`)
when none runs, or by hand with ``gpumarket watchdog run``. It works from the
lease store the kernels write and from the chain, never from a kernel's memory.
Every ``watchdog-interval`` seconds, for each cluster of this account that the
store says is live:

1. A lease the chain says has ended is settled in the store.
2. A lease whose duration is over or whose deposit is spent is released
   (the contract stops paying at either; releasing frees the GPUs and
   refunds the rest at once).
3. **Notebook gone**: the kernel holding the cluster has not marked it as held
   (``holders`` table, refreshed by ``LeasedCluster`` every few seconds) for
   ``idle-timeout`` seconds. The latest checkpoint is pulled back, a
   ``released`` notice is posted, and every lease of the cluster is released.
   A kernel restarted within the timeout re-attaches and becomes the holder
   again, so its lease stays.
4. **Idle**: the kernel lives but the cluster ran no task for ``idle-timeout``
   seconds. At ``idle-timeout - warn-before`` the checkpoint is pulled back
   and an ``idle-warning`` notice is posted (the kernel shows it in the
   notebook; the server extension can list it); any task withdraws the
   warning; at ``idle-timeout`` the checkpoint is pulled again, the leases
   are released and a ``released`` notice is posted.

Idleness comes from the scheduler's own ``check_idle`` (``None`` when tasks
ran since the last question), timed on this machine's clock, so provider
clocks do not matter. The watchdog talks to schedulers over the same mutual
TLS as the kernel, with the cluster's CA from the store (decrypted with a
password only the tenant's chain key derives).

Checkpoints: a workflow leaves its latest checkpoint in the Dask
``Variable`` named :data:`CHECKPOINT_VARIABLE` (see :func:`publish_checkpoint`;
``workflows.finetune`` does so every round). The watchdog writes it to
``$GPUMARKET_HOME/checkpoints/<lease>/<name>.pt`` (lease = the scheduler's
host lease) before it closes a lease.

One instance: an exclusive ``flock`` on ``watchdog-<chain>-<market>-<account>.lock``
(its content is the pid, for ``status`` and ``stop``). The watchdog exits when
no live lease is left; it lets go of the lock first and looks once more, so a
lease recorded meanwhile is never left without a watchdog.

The signer comes the way the kernel's did: the devnet account, a keystore
with ``GPUMARKET_KEYSTORE_PASSWORD``, or ``GPUMARKET_PRIVATE_KEY``, all from
the environment the watchdog inherits; the command line names no key and no
key is written anywhere.

>>> policy = WatchdogPolicy(idle_timeout=600, warn_before=120, interval=5)
>>> policy.warn_at, policy.idle_timeout
(480, 600)
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ChainUnavailable, GpuMarketError, InvalidRequest

logger = logging.getLogger(__name__)

#: The Dask ``Variable`` a workflow leaves its latest checkpoint in.
CHECKPOINT_VARIABLE = "gpumarket-checkpoint"


def publish_checkpoint(client, name: str, round: int, data: bytes) -> None:
    """Leave ``data`` as the cluster's latest checkpoint, for the watchdog to pull before a release.

    Held by the scheduler (msgpack), so it survives the tenant's kernel.

    >>> publish_checkpoint(client, "finetune", 3, result.checkpoint)   # doctest: +SKIP
    """
    from distributed import Variable

    Variable(CHECKPOINT_VARIABLE, client=client).set({"name": name, "round": int(round), "data": bytes(data)})


@dataclass(frozen=True)
class WatchdogPolicy:
    """When to warn and release, in seconds."""

    idle_timeout: float = 600.0
    warn_before: float = 120.0
    interval: float = 5.0

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.interval <= 0:
            raise InvalidRequest("idle-timeout and watchdog-interval must be above 0 seconds")
        if not 0 <= self.warn_before < self.idle_timeout:
            raise InvalidRequest("warn-before must be at least 0 and below idle-timeout")

    @property
    def warn_at(self) -> float:
        return self.idle_timeout - self.warn_before

    @classmethod
    def from_config(cls) -> "WatchdogPolicy":
        from .session import config

        return cls(float(config("idle-timeout")), float(config("warn-before")), float(config("watchdog-interval")))


class WatchdogLock:
    """The one-watchdog-per-account lock file, holding the pid of the watchdog that owns it."""

    def __init__(self, chain_id: int, market: str, account: str, state_dir: Path | None = None) -> None:
        from .chain.devnet import default_state_dir

        directory = Path(state_dir or default_state_dir())
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"watchdog-{chain_id}-{market.lower()}-{account.lower()}.lock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock without waiting; True if this process now owns it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def running_pid(self) -> int | None:
        """The pid of the watchdog holding the lock, or None if none does."""
        if self._fd is not None:
            return os.getpid()
        if not self.path.exists():
            return None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a watchdog runs
                text = self.path.read_text().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)


class ClusterProbe:
    """A TLS Dask client to one leased cluster's scheduler: is it idle, and its latest checkpoint."""

    def __init__(self, scheduler: str, ca_path: str, signer) -> None:
        from .cluster.tls import TenantCA
        from .history import ca_password

        self._workdir = tempfile.TemporaryDirectory(prefix="gpumarket-watchdog-")
        self.security = TenantCA.load(ca_path, ca_password(signer)).client_security(self._workdir.name)
        self.scheduler = scheduler
        self._client = None

    def client(self):
        from distributed import Client

        if self._client is None or self._client.status != "running":
            self._client = Client(self.scheduler, security=self.security, timeout="15s", set_as_default=False)
        return self._client

    def idle(self) -> bool:
        """True if the scheduler ran no task since the last ask (and has nothing queued)."""
        client = self.client()
        return client.sync(client.scheduler.check_idle) is not None

    def pull_checkpoint(self, directory: Path) -> Path | None:
        """Write the cluster's latest published checkpoint under ``directory``; None if there is none."""
        from distributed import Variable

        try:
            value = Variable(CHECKPOINT_VARIABLE, client=self.client()).get(timeout=2)
        except TimeoutError:
            return None
        directory.mkdir(parents=True, exist_ok=True)
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(value.get("name", "checkpoint")))
        path = directory / f"{name}.pt"
        partial = path.with_suffix(".pt.partial")
        partial.write_bytes(value["data"])
        os.replace(partial, path)  # a reader never sees half a checkpoint
        return path

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        self._workdir.cleanup()


@dataclass
class _ClusterWatch:
    """What the watchdog remembers about one cluster between ticks."""

    probe: ClusterProbe | None = None
    idle_from: float | None = None  # this machine's clock when the cluster was first seen idle
    warning: int | None = None  # id of the open idle-warning notice
    checkpoint: Path | None = None
    actions: list[str] = field(default_factory=list)


class Watchdog:
    """Releases this account's leases whose notebook has gone, that sat idle, or that ran out.

    Works without IPython; ``run()`` loops until no live lease is left (or ``stop()``).

    >>> dog = Watchdog(Session.connect(devnet=True), WatchdogPolicy(idle_timeout=30, warn_before=10))  # doctest: +SKIP
    >>> dog.tick()                                                       # doctest: +SKIP
    ['lease 4: released (notebook gone: no kernel seen for 31 s)']
    """

    def __init__(self, session, policy: WatchdogPolicy | None = None, checkpoints: Path | None = None) -> None:
        from .chain.devnet import default_state_dir

        if session.store is None:
            raise InvalidRequest("the watchdog needs the lease history store (gpumarket.history: true)")
        self.session = session
        self.client = session.client
        self.store = session.store
        self.policy = policy or WatchdogPolicy.from_config()
        self.checkpoints = Path(checkpoints or default_state_dir() / "checkpoints")
        self.log: list[str] = []  # what it did, for `status` and tests
        self._watches: dict[str, _ClusterWatch] = {}
        self._stop = threading.Event()

    # -- the loop -------------------------------------------------------------------

    def run(self, lock: WatchdogLock | None = None) -> int:
        """Check every ``interval`` seconds until no live lease is left; returns 0."""
        chain_down_since = None
        try:
            while not self._stop.is_set():
                try:
                    live = self.tick()
                    chain_down_since = None
                except (ChainUnavailable, OSError) as exc:  # requests' connection errors are OSErrors
                    chain_down_since = chain_down_since or time.monotonic()
                    if self._devnet_gone() or time.monotonic() - chain_down_since > max(60.0, 3 * self.policy.interval):
                        logger.error("stopping: %s", exc)
                        return 1
                    live = True
                except sqlite3.Error as exc:  # a store busy beyond its timeout: try again next round
                    logger.warning("lease store: %s", exc)
                    live = True
                if not live:
                    if lock is None or not self._still_needed_after_release(lock):
                        return 0
                self._stop.wait(self.policy.interval)
            return 0
        finally:
            self.close()

    def close(self) -> None:
        """Drop the connections to the clusters' schedulers."""
        for watch in self._watches.values():
            if watch.probe is not None:
                watch.probe.close()
                watch.probe = None

    def _devnet_gone(self) -> bool:
        """A devnet that was shut down (its file removed) will not come back: nothing left to watch."""
        connection = self.session.connection
        return bool(connection.get("devnet")) and not (Path(connection["state_dir"]) / "devnet.json").exists()

    def _still_needed_after_release(self, lock: WatchdogLock) -> bool:
        """Let go of the lock, then look again: a kernel that saw it held before may have just leased."""
        lock.release()
        if not self._live_clusters():
            return False
        return lock.acquire()  # else another watchdog took over

    def stop(self) -> None:
        self._stop.set()

    def tick(self) -> bool:
        """One round of checks; True while this account has live leases in the store."""
        try:
            self.client.now()
        except OSError as exc:  # requests' connection errors are OSErrors
            raise ChainUnavailable(f"the chain does not answer: {exc}") from None
        clusters = self._live_clusters()
        for name in set(self._watches) - set(clusters):
            watch = self._watches.pop(name)
            if watch.probe is not None:
                watch.probe.close()
        for name, rows in clusters.items():
            try:
                self._check_cluster(name, rows)
            except ChainUnavailable:
                raise
            except Exception as exc:  # noqa: BLE001 (one bad cluster must not stop the watch on the others)
                logger.warning("cluster %s: %s: %s", name, type(exc).__name__, exc)
        return bool(self._live_clusters())

    def _live_clusters(self) -> dict[str, list[dict]]:
        """This account's clusters with leases the store calls live, each row matched on chain.

        A row whose lease on this chain has another order or start time was written against
        another chain with the same id and market address (two local devnets): not ours to touch.
        """
        out: dict[str, list[dict]] = {}
        for row in self.store.live_leases(self.client.chain_id, self.client.market.address):
            record = self.store.cluster(row["cluster"])
            if record is None or record["tenant"] != self.client.address:
                continue
            try:
                lease = self.client.lease(row["lease_id"])
            except GpuMarketError:  # no such lease on this chain
                continue
            if (lease.order_id, lease.started_at) == (row["order_id"], row["started_at"]):
                out.setdefault(row["cluster"], []).append(row)
        return out

    # -- the policy -----------------------------------------------------------------

    def _check_cluster(self, name: str, rows: list[dict]) -> None:
        from .market.tenant import receipt_from_chain
        from .spec import DealStatus

        now_chain = max(self.client.now(), int(time.time()))  # an idle devnet's last block lags the clock
        live = []
        for row in rows:
            lease = self.client.lease(row["lease_id"])
            if lease.status != DealStatus.ACTIVE:  # closed elsewhere: the chain is the authority
                receipt = receipt_from_chain(self.client, lease.id)
                self.store.settle_lease(self.client.chain_id, self.client.market.address, lease.id,
                                        {**receipt.__dict__, "tx_hashes": list(receipt.tx_hashes)})
            elif now_chain >= lease.ends_at:
                self._release(name, [row], "its duration is over")
            elif lease.accrued_at(now_chain) >= lease.deposit:
                self._release(name, [row], "its deposit is spent")
            else:
                live.append(row)
        if not live:
            return
        watch = self._watches.setdefault(name, _ClusterWatch())
        holder = self.store.holder(name)
        last_seen = holder["last_seen"] if holder else max(r["updated"] or 0 for r in live)
        gone_for = time.time() - last_seen
        if gone_for >= self.policy.idle_timeout:
            self._pull(name, live, watch)
            self._release(name, live, f"notebook gone: no kernel seen for {gone_for:.0f} s", watch)
            return
        self._check_idle(name, live, watch)

    def _check_idle(self, name: str, live: list[dict], watch: _ClusterWatch) -> None:
        record = self.store.cluster(name)
        if watch.probe is None:
            watch.probe = ClusterProbe(record["scheduler"], record["ca_path"], self.client.signer)
        now = time.monotonic()
        if not watch.probe.idle():
            watch.idle_from = None
            if watch.warning is not None:  # work resumed: the warning no longer holds
                self.store.update_notice(watch.warning, state="withdrawn")
                watch.warning = None
            return
        watch.idle_from = watch.idle_from or now
        idle_for = now - watch.idle_from
        if idle_for >= self.policy.idle_timeout:
            self._pull(name, live, watch)
            self._release(name, live, f"idle: no task ran for {idle_for:.0f} s", watch)
        elif idle_for >= self.policy.warn_at and watch.warning is None:
            self._pull(name, live, watch)
            left = self.policy.idle_timeout - idle_for
            saved = f"; latest checkpoint saved to {watch.checkpoint}" if watch.checkpoint else ""
            lease_ids = ", ".join(str(r["lease_id"]) for r in live)
            watch.warning = self.store.post_notice(
                name, _main_lease(live), "idle-warning",
                f"cluster {name} (lease {lease_ids}) ran no task for {idle_for:.0f} s; it will be released in "
                f"{left:.0f} s unless a task runs{saved}",
                release_at=time.time() + left, checkpoint=str(watch.checkpoint) if watch.checkpoint else None)
            self._note(f"lease {lease_ids}: idle warning posted")

    def _pull(self, name: str, live: list[dict], watch: _ClusterWatch) -> None:
        """Bring the cluster's latest checkpoint to this machine; a cluster already gone has none to give."""
        try:
            if watch.probe is None:
                record = self.store.cluster(name)
                watch.probe = ClusterProbe(record["scheduler"], record["ca_path"], self.client.signer)
            path = watch.probe.pull_checkpoint(self.checkpoints / str(_main_lease(live)))
        except (OSError, TimeoutError, GpuMarketError) as exc:
            logger.warning("cluster %s: no checkpoint pulled (%s)", name, exc)
            return
        if path is not None:
            watch.checkpoint = path
            self._note(f"lease {_main_lease(live)}: checkpoint saved to {path}")

    def _release(self, name: str, rows: list[dict], reason: str, watch: _ClusterWatch | None = None) -> None:
        # Joining workers first, the scheduler's host last (as a cluster's own close does).
        for row in sorted(rows, key=lambda r: r["hosts_scheduler"]):
            receipt = self.session.release_detached(row["lease_id"])
            money = self.session.money
            self.store.post_notice(
                name, row["lease_id"], "released",
                f"lease {row['lease_id']} was released by the watchdog ({reason}); the provider was paid "
                f"{money(receipt.cost)} and {money(receipt.refunded)} came back",
                checkpoint=str(watch.checkpoint) if watch and watch.checkpoint else None)
            self._note(f"lease {row['lease_id']}: released ({reason})")
        if watch is not None:
            if watch.warning is not None:
                self.store.update_notice(watch.warning, state="done")
                watch.warning = None
            if watch.probe is not None:  # its scheduler is gone with the lease
                watch.probe.close()
                watch.probe = None

    def _note(self, line: str) -> None:
        logger.info("%s", line)
        self.log.append(line)


def _main_lease(rows: list[dict]) -> int:
    """The lease that names a cluster: the scheduler's host, else the first."""
    hosts = [r["lease_id"] for r in rows if r["hosts_scheduler"]]
    return hosts[0] if hosts else min(r["lease_id"] for r in rows)


# -- starting, finding and stopping the process ------------------------------------------


def command_line(connection: dict, policy: WatchdogPolicy) -> list[str]:
    """``gpumarket watchdog run`` for a session's connection and the kernel's policy.

    No key on it: the key comes from the environment the watchdog inherits.
    """
    argv = [sys.executable, "-m", "jupyter_gpumarket.cli", "watchdog", "run", "--idle-timeout",
            str(policy.idle_timeout), "--warn-before", str(policy.warn_before), "--interval", str(policy.interval)]
    if connection.get("devnet"):
        argv += ["--devnet", "--state-dir", connection["state_dir"], "--account", connection["account"]]
    else:
        argv += ["--rpc", connection["rpc_url"], "--market", connection["market"]]
        if connection.get("keystore"):
            argv += ["--keystore", str(connection["keystore"])]
    return argv


def ensure_running(session) -> int | None:
    """Start the account's watchdog detached unless one runs; the pid of the one started, else None."""
    from .chain.devnet import default_state_dir

    lock = WatchdogLock(session.client.chain_id, session.client.market.address, session.client.address)
    if lock.running_pid() is not None:
        return None
    log = open(default_state_dir() / "watchdog.log", "ab")
    try:
        argv = command_line(session.connection, WatchdogPolicy.from_config())
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # outlives the kernel
    finally:
        log.close()
    threading.Thread(target=process.wait, name="gpumarket-watchdog-reaper", daemon=True).start()
    return process.pid


def run_watchdog(session, policy: WatchdogPolicy | None = None) -> int:
    """The body of ``gpumarket watchdog run``: take the lock (or leave), then loop."""
    lock = WatchdogLock(session.client.chain_id, session.client.market.address, session.client.address)
    if not lock.acquire():
        print(f"a watchdog already runs for {session.client.address} (pid {lock.running_pid()})")
        return 0
    dog = Watchdog(session, policy)
    signal.signal(signal.SIGTERM, lambda *_: dog.stop())
    logger.info("watchdog for %s on chain %s: %s", session.client.address, session.client.chain_id, dog.policy)
    try:
        return dog.run(lock)
    finally:
        lock.release()


def stop_watchdog(chain_id: int, market: str, account: str) -> int | None:
    """Ask the account's watchdog to stop (SIGTERM); its pid, or None if none runs."""
    pid = WatchdogLock(chain_id, market, account).running_pid()
    if pid is None or pid <= 0:
        return None
    os.kill(pid, signal.SIGTERM)
    return pid
