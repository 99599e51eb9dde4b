"""The lease history store: every cluster and lease this user made, shared by kernels and the CLI.

A small SQLite database under the state directory (``$GPUMARKET_HOME`` or
``~/.gpumarket``), in WAL mode with a busy timeout so several kernels can write
at once. It holds what re-attaching needs (the scheduler address, each lease's
provider endpoint and certificate fingerprints, the path of the cluster's CA
file) and what each lease cost. No private key is ever written here: the CA
key lives in its own 0600 file, encrypted with a password derived from the
tenant's chain key (see :func:`ca_password`).

>>> store = LeaseStore(":memory:")
>>> store.record_cluster("c1", chain_id=31337, market="0xM", tenant="0xT", ca_path="/x", scheduler="tls://h:1")
>>> store.record_lease(7, chain_id=31337, market="0xM", cluster="c1", order_id=3, provider_id=2,
...                    endpoint="http://h:2", hosts_scheduler=True, gpus=1, price=2_000_000, deposit=2_000_000,
...                    started_at=100, provider_fingerprint="ab", tenant_ca_fingerprint="cd")
>>> [row["lease_id"] for row in store.live_leases(31337, "0xM", cluster="c1")]
[7]
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from eth_account.messages import encode_defunct

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
"""


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
        self._memory = sqlite3.connect(":memory:", check_same_thread=False) if self.path == ":memory:" else None
        with self._db() as db:
            db.executescript(SCHEMA)

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
        with self._db() as db:
            db.execute(
                "UPDATE leases SET state='settled', receipt=?, updated=? WHERE chain_id=? AND market=? AND lease_id=?",
                (json.dumps(receipt) if receipt else None, time.time(), chain_id, market, lease_id),
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
