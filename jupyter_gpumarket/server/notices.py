"""The watchdog's notices for one account on one market, as the sidebar reads them.

The watchdog (:mod:`jupyter_gpumarket.watchdog`) posts ``idle-warning`` and
``released`` notices into the shared lease store; kernels print them. This
module picks out the ones that belong to this account on this chain and market
(through the cluster each notice names) and turns them into JSON rows. It never
marks a notice as shown: that flag is the kernels', so a notebook still prints
what the sidebar also shows.

>>> from jupyter_gpumarket.history import LeaseStore
>>> store = LeaseStore(":memory:")
>>> store.record_cluster("c1", chain_id=31337, market="0xM", tenant="0xT", ca_path="/x", scheduler="tls://h:1")
>>> first = store.post_notice("c1", 7, "released", "lease 7 was released by the watchdog (idle)")
>>> board = NoticeBoard(store, chain_id=31337, market="0xM", tenant="0xT")
>>> rows, newest = board.since(0)
>>> [(row["lease"], row["kind"]) for row in rows], newest == first
([(7, 'released')], True)
>>> board.since(first)[0]
[]
"""

from __future__ import annotations

from ..errors import InvalidRequest

#: What the watchdog posts; anything else in the store is not shown.
KINDS = ("idle-warning", "released")
#: A notice's text is the watchdog's own sentence; longer than this is cut, never sent whole.
MAX_TEXT = 600


class NoticeBoard:
    """Notices of ``tenant``'s clusters on one chain and market, read from a :class:`LeaseStore`."""

    def __init__(self, store, *, chain_id: int, market: str, tenant: str) -> None:
        self.store = store
        self.owner = (chain_id, market, tenant)

    def since(self, notice_id: int, limit: int = 50) -> tuple[list[dict], int]:
        """Notices posted after ``notice_id`` (at most the ``limit`` newest, newest last), and
        the id to ask from next time: the store's newest.

        A ``notice_id`` past the store's newest means the store was replaced (a new
        ``$GPUMARKET_HOME``): everything it holds is new then.
        """
        rows = self.store.notices()
        newest = rows[-1]["id"] if rows else 0
        if notice_id > newest:
            notice_id = 0
        mine = self._owned()
        fresh = [row for row in rows if row["id"] > notice_id and row["kind"] in KINDS and mine(row["cluster"])]
        return [notice_json(row) for row in fresh[-limit:]], newest

    def open_warnings(self) -> list[dict]:
        """Idle warnings still pending: not withdrawn by a task, not done, and their cluster still live here."""
        mine = self._owned()
        chain_id, market, _ = self.owner
        return [notice_json(row) for row in self.store.notices(state="open")
                if row["kind"] == "idle-warning" and mine(row["cluster"])
                and self.store.live_leases(chain_id, market, cluster=row["cluster"])]

    def _owned(self):
        """A test ``cluster name -> belongs to this account here``, looking each name up once."""
        known: dict[str, bool] = {}

        def mine(name: str) -> bool:
            if name not in known:
                record = self.store.cluster(name)
                known[name] = record is not None and (record["chain_id"], record["market"], record["tenant"]) == self.owner
            return known[name]

        return mine


def notice_json(row: dict) -> dict:
    """One store row as ``GET /gpumarket/notices`` sends it.

    ``state`` tells whether an idle warning still holds (``open``), was withdrawn
    because a task ran (``withdrawn``) or ended in a release (``done``); a
    ``released`` notice is always ``done``.
    """
    text = row["message"] or ""
    return {
        "id": row["id"],
        "lease": row["lease_id"],
        "cluster": row["cluster"],
        "kind": row["kind"],
        "text": text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 1] + "…",
        "time": row["created"],
        "state": "done" if row["kind"] == "released" else row["state"],
        "release_at": row["release_at"],
    }


def parse_since(value) -> int:
    """The ``since`` query argument: a notice id (0 for everything), else one clear error.

    >>> parse_since("12"), parse_since(None)
    (12, 0)
    >>> parse_since("-1")
    Traceback (most recent call last):
    ...
    jupyter_gpumarket.errors.InvalidRequest: since must be a notice id, a whole number such as 12 (0 for all), got '-1'
    """
    text = "0" if value is None or value == "" else str(value)
    if not (text.isascii() and text.isdigit()):
        raise InvalidRequest(f"since must be a notice id, a whole number such as 12 (0 for all), got {text!r}")
    return int(text)
