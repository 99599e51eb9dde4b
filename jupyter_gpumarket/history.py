"""The lease history store: every cluster and lease this user made, shared by kernels and the CLI.

A small SQLite database under the state directory (``$GPUMARKET_HOME`` or
``~/.gpumarket``), in WAL mode with a busy timeout so several kernels can write
at once. It holds what re-attaching needs (the scheduler address, each lease's
provider endpoint and certificate fingerprints, the path of the cluster's CA
file) and what each lease cost. No private key is ever written here: the CA
key lives in its own 0600 file, encrypted with a password derived from the
tenant's chain key (see :func:`ca_password`).

It also carries what the watchdog (:mod:`jupyter_gpumarket.watchdog`) and the
spending caps need across processes:

- ``holders``: which process holds each cluster and when it was last seen
  (a kernel refreshes it every few seconds; a dead kernel stops doing so);
- ``notices``: idle warnings and releases the watchdog posts for the notebook
  (and the server extension) to show;
- ``reservations``: money a kernel is about to commit, taken inside one
  ``BEGIN IMMEDIATE`` transaction with the cap check, so two kernels cannot
  both pass an account cap that fits only one of them.

Old databases are migrated in place (new tables, new nullable columns).

>>> store = LeaseStore(":memory:")
>>> store.record_cluster("c1", chain_id=31337, market="0xM", tenant="0xT", ca_path="/x", scheduler="tls://h:1")
>>> store.record_lease(7, chain_id=31337, market="0xM", cluster="c1", order_id=3, provider_id=2,
...                    endpoint="http://h:2", hosts_scheduler=True, gpus=1, price=2_000_000, deposit=2_000_000,
...                    started_at=100, provider_fingerprint="ab", tenant_ca_fingerprint="cd")
>>> [row["lease_id"] for row in store.live_leases(31337, "0xM", cluster="c1")]
[7]
>>> store.reserve(chain_id=31337, market="0xM", tenant="0xT", amount=5, cap=2_000_004, since=0)
(None, 2000000)
>>> store.reserve(chain_id=31337, market="0xM", tenant="0xT", amount=4, cap=2_000_004, since=0)[0] is not None
True
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path

from eth_account.messages import encode_defunct

from .processes import process_alive

SCHEMA = """
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY, chain_id INTEGER, market TEXT, tenant TEXT,
    ca_path TEXT, scheduler TEXT, request TEXT, created REAL, state TEXT DEFAULT 'live'
);
CREATE TABLE IF NOT EXISTS leases (
    chain_id INTEGER, market TEXT, lease_id INTEGER, cluster TEXT, order_id INTEGER,
    provider_id INTEGER, endpoint TEXT, hosts_scheduler INTEGER, gpus INTEGER, price INTEGER,
    deposit INTEGER, started_at INTEGER, provider_fingerprint TEXT, tenant_ca_fingerprint TEXT,
    state TEXT DEFAULT 'live', receipt TEXT, updated REAL,
    PRIMARY KEY (chain_id, market, lease_id)
);
CREATE TABLE IF NOT EXISTS holders (
    cluster TEXT PRIMARY KEY, pid INTEGER, host TEXT, last_seen REAL, since REAL
);
CREATE TABLE IF NOT EXISTS notices (
    id INTEGER PRIMARY KEY AUTOINCREMENT, cluster TEXT, lease_id INTEGER, kind TEXT, message TEXT,
    release_at REAL, checkpoint TEXT, created REAL, shown REAL, state TEXT DEFAULT 'open'
);
CREATE TABLE IF NOT EXISTS reservations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, chain_id INTEGER, market TEXT, tenant TEXT, amount INTEGER,
    pid INTEGER, host TEXT, created REAL
);
"""

#: Columns added after the first release: (table, column, type). Old rows get NULL.
MIGRATIONS = [("leases", "cost", "INTEGER"), ("leases", "settled_at", "REAL")]
HOST = socket.gethostname()



def default_path() -> Path:
    from .chain.devnet import default_state_dir

    return default_state_dir() / "history.sqlite"


def ca_password(signer) -> bytes:
    """A password only the tenant's chain key can produce (a deterministic signature)."""
    message = encode_defunct(text="jupyter_gpumarket: encrypt this tenant's cluster CA keys")
    return bytes(signer.sign_message(message).signature).hex().encode()


class LeaseStore:
    """Thread- and process-safe record of clusters and leases."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = str(path or default_path())
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._memory = (sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
                        if self.path == ":memory:" else None)
        with self._db() as db:
            db.executescript(SCHEMA)
            self._migrate(db)

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        for table, column, kind in MIGRATIONS:
            have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        # Settled leases of an old database: their cost is in the receipt JSON.
        for row in db.execute("SELECT chain_id, market, lease_id, receipt, updated FROM leases "
                              "WHERE state='settled' AND cost IS NULL AND receipt IS NOT NULL").fetchall():
            receipt = json.loads(row[3])
            db.execute("UPDATE leases SET cost=?, settled_at=? WHERE chain_id=? AND market=? AND lease_id=?",
                       (receipt.get("paid_to_provider", 0) + receipt.get("fee", 0), row[4], *row[:3]))

    def _db(self) -> sqlite3.Connection:
        if self._memory is not None:
            self._memory.row_factory = sqlite3.Row
            return self._memory
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")  # readers never block the one writer
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def record_cluster(self, name: str, *, chain_id: int, market: str, tenant: str, ca_path: str,
                       scheduler: str, request: dict | None = None) -> None:
        """``request``: what the cluster asked for (spec, prices, budget), to lease again after re-attaching."""
        with self._db() as db:
            db.execute(
                "INSERT INTO clusters (name, chain_id, market, tenant, ca_path, scheduler, request, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET scheduler=excluded.scheduler",
                (name, chain_id, market, tenant, ca_path, scheduler, json.dumps(request or {}), time.time()),
            )

    def record_lease(self, lease_id: int, *, chain_id: int, market: str, cluster: str, order_id: int,
                     provider_id: int, endpoint: str, hosts_scheduler: bool, gpus: int, price: int,
                     deposit: int, started_at: int, provider_fingerprint: str, tenant_ca_fingerprint: str) -> None:
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO leases (chain_id, market, lease_id, cluster, order_id, provider_id, endpoint, "
                "hosts_scheduler, gpus, price, deposit, started_at, provider_fingerprint, tenant_ca_fingerprint, "
                "state, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'live', ?)",
                (chain_id, market, lease_id, cluster, order_id, provider_id, endpoint, int(hosts_scheduler), gpus,
                 price, deposit, started_at, provider_fingerprint, tenant_ca_fingerprint, time.time()),
            )

    def settle_lease(self, chain_id: int, market: str, lease_id: int, receipt: dict | None = None) -> None:
        cost = receipt.get("paid_to_provider", 0) + receipt.get("fee", 0) if receipt else None
        now = time.time()
        with self._db() as db:
            db.execute(
                "UPDATE leases SET state='settled', receipt=?, cost=?, settled_at=?, updated=? "
                "WHERE chain_id=? AND market=? AND lease_id=?",
                (json.dumps(receipt) if receipt else None, cost, now, now, chain_id, market, lease_id),
            )

    def close_cluster(self, name: str) -> None:
        with self._db() as db:
            db.execute("UPDATE clusters SET state='closed' WHERE name=?", (name,))

    def cluster(self, name: str) -> dict | None:
        row = self._db().execute("SELECT * FROM clusters WHERE name=?", (name,)).fetchone()
        return dict(row) if row else None

    def lease(self, chain_id: int, market: str, lease_id: int) -> dict | None:
        row = self._db().execute(
            "SELECT * FROM leases WHERE chain_id=? AND market=? AND lease_id=?", (chain_id, market, lease_id)
        ).fetchone()
        return dict(row) if row else None

    def live_leases(self, chain_id: int, market: str, cluster: str | None = None) -> list[dict]:
        query = "SELECT * FROM leases WHERE chain_id=? AND market=? AND state='live'"
        args: tuple = (chain_id, market)
        if cluster is not None:
            query += " AND cluster=?"
            args += (cluster,)
        return [dict(r) for r in self._db().execute(query + " ORDER BY lease_id", args)]

    def settled(self, chain_id: int, market: str) -> list[dict]:
        rows = self._db().execute(
            "SELECT * FROM leases WHERE chain_id=? AND market=? AND state='settled' ORDER BY lease_id",
            (chain_id, market),
        )
        return [dict(r) for r in rows]

    # -- holders: which kernel holds a cluster, and is it still there ----------------------

    def touch_holder(self, cluster: str, pid: int | None = None) -> None:
        """Record that this process (``pid``) holds ``cluster`` and is alive now."""
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO holders (cluster, pid, host, last_seen, since) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(cluster) DO UPDATE SET pid=excluded.pid, host=excluded.host, last_seen=excluded.last_seen, "
                "since=CASE WHEN holders.pid=excluded.pid THEN holders.since ELSE excluded.since END",
                (cluster, pid or os.getpid(), HOST, now, now),
            )

    def holder(self, cluster: str) -> dict | None:
        row = self._db().execute("SELECT * FROM holders WHERE cluster=?", (cluster,)).fetchone()
        return dict(row) if row else None

    def drop_holder(self, cluster: str, pid: int | None = None) -> None:
        """Forget the holder of ``cluster`` (only if it is still ``pid``: a newer kernel may hold it)."""
        with self._db() as db:
            db.execute("DELETE FROM holders WHERE cluster=? AND pid=?", (cluster, pid or os.getpid()))

    # -- notices: what the watchdog tells the notebook ------------------------------------

    def post_notice(self, cluster: str, lease_id: int, kind: str, message: str, *,
                    release_at: float | None = None, checkpoint: str | None = None) -> int:
        """Post a notice (``kind``: ``idle-warning`` or ``released``); returns its id."""
        with self._db() as db:
            cur = db.execute(
                "INSERT INTO notices (cluster, lease_id, kind, message, release_at, checkpoint, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (cluster, lease_id, kind, message, release_at, checkpoint, time.time()),
            )
            return cur.lastrowid

    def notices(self, clusters=None, *, unshown: bool = False, state: str | None = None) -> list[dict]:
        """Notices, oldest first; only those of ``clusters``, not yet shown, or in ``state`` if asked."""
        query, args = "SELECT * FROM notices WHERE 1=1", []
        if clusters is not None:
            names = list(clusters)
            query += f" AND cluster IN ({','.join('?' * len(names))})"
            args += names
        if unshown:
            query += " AND shown IS NULL"
        if state is not None:
            query += " AND state=?"
            args.append(state)
        return [dict(r) for r in self._db().execute(query + " ORDER BY id", args)]

    def update_notice(self, notice_id: int, *, state: str | None = None, checkpoint: str | None = None,
                      shown: bool = False) -> None:
        with self._db() as db:
            if state is not None:
                db.execute("UPDATE notices SET state=? WHERE id=?", (state, notice_id))
            if checkpoint is not None:
                db.execute("UPDATE notices SET checkpoint=? WHERE id=?", (checkpoint, notice_id))
            if shown:
                db.execute("UPDATE notices SET shown=? WHERE id=?", (time.time(), notice_id))

    # -- the account cap: committed money across kernels ----------------------------------

    def account_committed(self, chain_id: int, market: str, tenant: str, since: float) -> int:
        """Deposits of live leases + cost of leases settled since ``since`` + live reservations."""
        return self._committed(self._db(), chain_id, market, tenant, since)

    def _committed(self, db, chain_id: int, market: str, tenant: str, since: float) -> int:
        mine = "FROM leases l JOIN clusters c ON c.name = l.cluster WHERE l.chain_id=? AND l.market=? AND c.tenant=?"
        live = db.execute(f"SELECT COALESCE(SUM(l.deposit), 0) {mine} AND l.state='live'",
                          (chain_id, market, tenant)).fetchone()[0]
        settled = db.execute(f"SELECT COALESCE(SUM(l.cost), 0) {mine} AND l.state='settled' AND l.settled_at >= ?",
                             (chain_id, market, tenant, since)).fetchone()[0]
        reserved = 0
        for row in db.execute("SELECT amount, pid, host FROM reservations WHERE chain_id=? AND market=? AND tenant=?",
                              (chain_id, market, tenant)):
            if row[2] != HOST or process_alive(row[1]):  # a dead kernel's reservation frees itself
                reserved += row[0]
        return live + settled + reserved

    def reserve(self, *, chain_id: int, market: str, tenant: str, amount: int, cap: int,
                since: float) -> tuple[int | None, int]:
        """Reserve ``amount`` under the account ``cap`` atomically across processes.

        Returns ``(reservation id, committed before)``, or ``(None, committed)`` when
        the amount does not fit; nothing is written then.
        """
        db = self._db()
        db.execute("BEGIN IMMEDIATE")  # one writer at a time: the check and the insert are one step
        try:
            committed = self._committed(db, chain_id, market, tenant, since)
            if committed + amount > cap:
                db.execute("ROLLBACK")
                return None, committed
            cur = db.execute(
                "INSERT INTO reservations (chain_id, market, tenant, amount, pid, host, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)", (chain_id, market, tenant, amount, os.getpid(), HOST, time.time()),
            )
            db.execute("COMMIT")
            return cur.lastrowid, committed
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def unreserve(self, reservation_id: int | None) -> None:
        if reservation_id is not None:
            with self._db() as db:
                db.execute("DELETE FROM reservations WHERE id=?", (reservation_id,))
