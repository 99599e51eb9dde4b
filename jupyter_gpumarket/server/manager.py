"""`MarketManager`: what the JupyterLab sidebar shows and does, as plain dicts.

No web-server code here: the handlers call these methods in a worker thread
and send the result as JSON. The manager connects lazily through
:meth:`Session.connect` (the same ``gpumarket.*`` dask config as kernels, e.g.
``DASK_GPUMARKET__DEVNET=true``), reconnects once the chain answers again, and
is safe to call from several threads at once.

Money leaves here as decimal strings of base units (JavaScript numbers lose
precision past 2**53), with the token's ``decimals`` and ``symbol``; times are
unix seconds.

Example (against a running devnet)::

    manager = MarketManager()
    manager.wallet()       # {"connected": True, "address": "0x...", "balance": "10000000000", ...}
    manager.rent({"gpus": 1, "max_price": "3.00", "hours": 1})    # {"lease_ids": [4], "cluster": "..."}
    manager.release(4)     # {"receipt": {"lease_id": 4, "refunded": "2991667", ...}}
"""

from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import requests

from ..errors import ChainUnavailable, InvalidRequest, NotFound
from ..spec import Receipt

if TYPE_CHECKING:
    from ..session import Session
    from .ledger import LeaseBook

logger = logging.getLogger(__name__)

#: The most notices one ``GET notices`` returns (the newest): a page back after hours catches up cheaply.
NOTICE_LIMIT = 50


class MarketManager:
    """One Jupyter server's view of the tenant account: wallet, offers, leases, history, budget, classes.

    ``connect`` makes a :class:`Session`; by default :meth:`Session.connect` with dask config.
    Leases rented here are held (with their Dask clusters) until released; leases a kernel
    made are listed from the chain and the shared history store and can be released too.
    """

    def __init__(self, connect: Callable[[], Session] | None = None) -> None:
        self._connect = connect
        self._session: Session | None = None
        self._book: LeaseBook | None = None
        self._units: dict = {}  # the token's decimals and symbol, fixed per market
        self._lock = threading.Lock()  # guards (re)connecting and the set of held clusters

    # -- connection ----------------------------------------------------------------------

    def _connected(self) -> tuple[Session, LeaseBook, dict]:
        """Session, lease book and token units; connects (again) when there is none or its chain went quiet."""
        with self._lock:
            current = self._session
            if current is not None and current.client.w3.is_connected():
                return current, self._book, self._units
            fresh = self._new_session()  # raises ChainUnavailable saying what to start or fix
            if current is not None and _same_market(current, fresh):
                return current, self._book, self._units  # a passing hiccup: keep the clusters held here
            if current is not None:
                self._abandon(current)
            from .ledger import LeaseBook

            self._session, self._book = fresh, LeaseBook(fresh.client, fresh.store)
            self._units = {"decimals": fresh.decimals, "symbol": fresh.client.token_symbol()}
            return fresh, self._book, self._units

    def _new_session(self) -> Session:
        # Imported on first use: the chain and Dask stack takes seconds to import, which
        # would otherwise delay every Jupyter server start, market used or not.
        from ..session import Session

        return (self._connect or Session.connect)()

    @staticmethod
    def _abandon(old: Session) -> None:
        """The chain the old session spoke to is gone (a devnet restarted): its leases went with it."""
        for cluster in list(old.clusters):
            logger.warning("gpumarket: dropping cluster %s of a chain that no longer answers", cluster.name)
            cluster.leaser.close()
        old.clusters.clear()

    @contextmanager
    def _chain(self):
        """(session, lease book, token units), with a connection lost midway reported as ChainUnavailable."""
        session, book, units = self._connected()
        try:
            yield session, book, units
        except (requests.ConnectionError, requests.Timeout):
            raise ChainUnavailable(
                f"lost the connection to the chain at {session.client.w3.provider.endpoint_uri}; "
                "check that it runs (gpumarket devnet status) and try again"
            ) from None

    # -- reading ---------------------------------------------------------------------------

    def wallet(self) -> dict:
        """The account, its token balance and the market, or why there is no connection (not an error)."""
        try:
            with self._chain() as (session, _, units):
                client = session.client
                return {
                    "connected": True,
                    "address": client.address,
                    "chain_id": client.chain_id,
                    "market": client.market.address,
                    "balance": str(client.balance()),
                    "class_id": session.class_id,
                    **units,
                }
        except ChainUnavailable as exc:
            return {"connected": False, "reason": str(exc)}

    def offers(self) -> dict:
        """Registered providers with hardware, reliability and recent bid prices."""
        with self._chain() as (session, _, units):
            rows = session.offers()
            for row in rows:
                for key in ("last_price", "min_price"):
                    row[key] = None if row[key] is None else str(row[key])
            return {"offers": rows, **units}

    def leases(self) -> dict:
        """Live leases of this account: from the chain, named after their cluster where one is recorded."""
        with self._chain() as (session, book, units):
            now = int(time.time())
            live = book.live(session.client.address)
            rate = sum(item.lease.price_per_gpu_hour * item.lease.gpus for item in live)
            return {
                "leases": [item.row(now) for item in live],
                "spend_rate_per_hour": str(rate),
                "now": now,
                **units,
            }

    def history(self) -> dict:
        """Settled leases of this account, oldest first, and the cumulative spend over time."""
        with self._chain() as (session, book, units):
            rows, series, total = [], [], 0
            for receipt, closed_at in book.settled(session.client.address):
                rows.append({**receipt_json(receipt), "closed_at": closed_at})
                total += receipt.cost
                series.append([closed_at, str(total)])
            return {"history": rows, "spend_series": series, **units}

    def budget(self) -> dict:
        """This server's session cap (``gpumarket.budget``) and the account cap across all kernels
        on this machine (``gpumarket.account-cap``): spent, committed and what is left."""
        with self._chain() as (session, _, units):
            meter = session.meter()
            account = {key: _text(value) for key, value in meter["account"].items()}
            return {key: _text(meter[key]) for key in ("cap", "spent", "committed", "remaining")} | {
                "account": account, **units}

    def classroom(self) -> dict:
        """Classes this account sponsors: the pool, and each student's cap, spend and live leases."""
        with self._chain() as (session, book, units):
            client, now = session.client, int(time.time())
            classes = []
            for created in client.get_logs("ClassCreated", sponsor=client.address):
                class_id = created["classId"]
                students = dict.fromkeys(ev["student"] for ev in client.get_logs("AllowanceSet", classId=class_id))
                rows = []
                for student in students:
                    allowance = client.allowance_of(class_id, student)
                    live = book.live(student, class_id)
                    spent = sum(r.cost for r, _ in book.settled(student, class_id))
                    spent += sum(item.lease.accrued_at(now) for item in live)
                    rows.append({
                        "address": student,
                        "cap": str(allowance["cap"]),
                        "drawn": str(allowance["drawn"]),
                        "remaining": str(allowance["remaining"]),
                        "spent": str(spent),
                        "leases": [item.row(now) for item in live],
                    })
                pool = client.class_info(class_id)["balance"]
                classes.append({"class_id": class_id, "pool": str(pool), "students": rows})
            return {"classes": classes, "now": now, **units}

    def notices(self, since=0) -> dict:
        """The watchdog's notices for this account on this market posted after notice ``since``
        (at most :data:`NOTICE_LIMIT`, newest last), and the idle warnings still open whatever ``since``."""
        from .notices import NoticeBoard, parse_since

        since = parse_since(since)
        with self._chain() as (session, _, _):
            now = time.time()
            if session.store is None:  # gpumarket.history is off: no watchdog, no notices
                return {"notices": [], "warnings": [], "last_id": since, "now": now}
            client = session.client
            board = NoticeBoard(session.store, chain_id=client.chain_id, market=client.market.address,
                                tenant=client.address)
            rows, last_id = board.since(since, NOTICE_LIMIT)
            return {"notices": rows, "warnings": board.open_warnings(), "last_id": last_id, "now": now}

    # -- acting ------------------------------------------------------------------------------

    def rent(self, body: dict) -> dict:
        """Run an auction for the GPUs in ``body`` (see :mod:`.rentform`) and hold the cluster here."""
        from .rentform import rent_request

        with self._chain() as (session, _, units):
            request = rent_request(body, units["decimals"])
            cluster = session.rent(request, reuse=False)  # a new lease each time: never take over a kernel's
            return {"lease_ids": sorted(cluster.leaser.leases), "cluster": cluster.name}

    def release(self, lease_id) -> dict:
        """Close one live lease of this account, held here or made elsewhere (a kernel's)."""
        lease_id = parse_lease_id(lease_id)
        with self._chain() as (session, _, _):
            (receipt,) = session.release(lease_id)
            self._drop_empty_clusters(session)
            return {"receipt": receipt_json(receipt)}

    def release_all(self) -> dict:
        """Close every live lease of this account: the ones held here, then any a kernel left."""
        with self._chain() as (session, book, _):
            # Lease by lease (each receipt counted once in the session); scheduler hosts last.
            held = [h.id for c in list(session.clusters)
                    for h in sorted(c.leaser.leases.values(), key=lambda h: h.hosts_scheduler)]
            receipts = [receipt for lease_id in held for receipt in session.release(lease_id)]
            self._drop_empty_clusters(session)
            for item in book.live(session.client.address):  # what is still live was made elsewhere
                try:
                    receipts.extend(session.release(item.lease.id))
                except NotFound:
                    continue  # its kernel released it meanwhile
            return {"receipts": [receipt_json(r) for r in receipts]}

    def _drop_empty_clusters(self, session: Session) -> None:
        """A cluster whose last lease was released has nothing left to run on: shut its Dask side."""
        with self._lock:
            for cluster in [c for c in session.clusters if not c.leaser.leases]:
                session.clusters.remove(cluster)
                cluster.close()  # settles nothing more: every lease already has its receipt


def parse_lease_id(value) -> int:
    """A lease id from a URL or body: a whole number above 0, else one clear error.

    >>> parse_lease_id("7")
    7
    >>> parse_lease_id("seven")
    Traceback (most recent call last):
    ...
    jupyter_gpumarket.errors.InvalidRequest: lease id must be a whole number such as 7, got 'seven'
    """
    text = str(value)
    if not (text.isascii() and text.isdigit()) or int(text) < 1:  # "²" is a digit to isdigit
        raise InvalidRequest(f"lease id must be a whole number such as 7, got {text!r}")
    return int(text)


def _text(amount: int | None) -> str | None:
    """Money for JSON: a decimal string of base units, or null for "no cap"."""
    return None if amount is None else str(amount)


def receipt_json(receipt: Receipt) -> dict:
    """A receipt with money as decimal strings of base units."""
    return {
        "lease_id": receipt.lease_id,
        "provider": receipt.provider_id,
        "gpus": receipt.gpus,
        "price_per_gpu_hour": str(receipt.price_per_gpu_hour),
        "seconds": receipt.seconds,
        "paid_to_provider": str(receipt.paid_to_provider),
        "fee": str(receipt.fee),
        "refunded": str(receipt.refunded),
        "cost": str(receipt.cost),
        "tx_hashes": list(receipt.tx_hashes),
    }


def _same_market(a: Session, b: Session) -> bool:
    """Whether two sessions speak to the same market at the same RPC URL as the same account."""
    return _identity(a) == _identity(b)


def _identity(session: Session) -> tuple:
    client = session.client
    return client.w3.provider.endpoint_uri, client.chain_id, client.market.address, client.address
