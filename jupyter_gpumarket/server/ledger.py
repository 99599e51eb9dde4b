"""An account's leases as the chain records them, for the server extension's views.

The chain is the authority on what is live and what it cost; the shared lease
history store only adds what the chain does not know (which cluster a kernel
put a lease in). Settled leases never change, so their receipts are cached.

Example (against a running devnet)::

    book = LeaseBook(session.client, session.store)
    book.live(session.client.address)       # [LiveLease(lease=..., provider=..., ...)]
    book.settled(session.client.address)    # [(Receipt(...), closed_at), ...]
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from ..market.tenant import receipt_from_chain
from ..spec import DealStatus, Lease, Receipt


@dataclass(frozen=True)
class LiveLease:
    """One running lease with what the sidebar shows about it. Money in base units."""

    lease: Lease
    tenant: str
    gpu: str  # the provider's claimed model
    cluster: str  # the cluster a kernel or the server put it in ("" when no local record)

    def row(self, now: int) -> dict:
        """The JSON row of ``GET /gpumarket/leases`` (money as decimal strings)."""
        lease = self.lease
        return {
            "lease": lease.id,
            "order": lease.order_id,
            "provider": lease.provider_id,
            "gpu": self.gpu,
            "gpus": lease.gpus,
            "price_per_gpu_hour": str(lease.price_per_gpu_hour),
            "started_at": lease.started_at,
            "ends_at": lease.ends_at,
            "elapsed_s": max(0, min(now, lease.ends_at) - lease.started_at),
            "spent": str(lease.accrued_at(now)),
            "deposit": str(lease.deposit),
            "cluster": self.cluster,
            "student": self.tenant,
        }


class LeaseBook:
    """Reads one market's leases per tenant from chain events, caching what cannot change."""

    def __init__(self, client, store=None) -> None:
        self.client = client
        self.store = store
        self._order_class: dict[int, int] = {}  # order id -> class id (fixed at creation)
        self._settled: dict[int, tuple[Receipt, int]] = {}  # lease id -> (receipt, closed_at)
        self._lock = threading.Lock()

    # -- which leases ------------------------------------------------------------------

    def lease_ids(self, tenant: str, class_id: int | None = None) -> list[int]:
        """Every lease of ``tenant``'s orders (only those paid from ``class_id`` when given)."""
        orders = [ev["orderId"] for ev in self.client.get_logs("OrderCreated", tenant=tenant)]
        if class_id is not None:
            orders = [o for o in orders if self._class_of(o) == class_id]
        if not orders:
            return []
        return sorted(ev["leaseId"] for ev in self.client.get_logs("LeaseCreated", orderId=orders))

    def _class_of(self, order_id: int) -> int:
        with self._lock:
            known = self._order_class.get(order_id)
        if known is None:
            known = self.client.order(order_id).class_id
            with self._lock:
                self._order_class[order_id] = known
        return known

    # -- live and settled ----------------------------------------------------------------

    def live(self, tenant: str, class_id: int | None = None) -> list[LiveLease]:
        """``tenant``'s running leases, newest last; settles into the cache what has closed."""
        records = self._store_records()
        models: dict[int, str] = {}
        out = []
        for lease_id in self.lease_ids(tenant, class_id):
            if lease_id in self._settled:
                continue
            lease = self.client.lease(lease_id)
            if lease.status != DealStatus.ACTIVE:
                receipt = self._remember_settled(lease)
                if _cluster_of(lease, records):  # ended on chain (duration over, provider closed it)
                    self._settle_in_store(receipt)
                continue
            if lease.provider_id not in models:
                models[lease.provider_id] = self.client.provider(lease.provider_id).claim.gpu_model
            out.append(LiveLease(lease, tenant, models[lease.provider_id], _cluster_of(lease, records)))
        return out

    def settled(self, tenant: str, class_id: int | None = None) -> list[tuple[Receipt, int]]:
        """``(receipt, closed_at)`` of every closed or rejected lease of ``tenant``, oldest first."""
        out = []
        for lease_id in self.lease_ids(tenant, class_id):
            if lease_id not in self._settled:
                lease = self.client.lease(lease_id)
                if lease.status in (DealStatus.CLOSED, DealStatus.REJECTED):
                    self._remember_settled(lease)
            if lease_id in self._settled:
                out.append(self._settled[lease_id])
        return sorted(out, key=lambda pair: (pair[1], pair[0].lease_id))

    def _remember_settled(self, lease: Lease) -> Receipt:
        receipt = receipt_from_chain(self.client, lease.id)
        with self._lock:
            self._settled[lease.id] = (receipt, lease.ends_at)  # settling sets ends_at to the close time
        return receipt

    def _settle_in_store(self, receipt: Receipt) -> None:
        """Bring the shared history in line with the chain, so no kernel tries to re-attach to it."""
        self.store.settle_lease(self.client.chain_id, self.client.market.address, receipt.lease_id,
                                {**receipt.__dict__, "tx_hashes": list(receipt.tx_hashes)})

    def _store_records(self) -> dict[int, dict]:
        if self.store is None:
            return {}
        rows = self.store.live_leases(self.client.chain_id, self.client.market.address)
        return {row["lease_id"]: row for row in rows}


def _cluster_of(lease: Lease, records: dict[int, dict]) -> str:
    """The cluster the store filed this lease under, if the record is really this lease.

    Two devnets started alike share a chain id and market address, so a stale
    row from another devnet can carry the same lease id: match the order too.
    """
    row = records.get(lease.id)
    if row is None or row["order_id"] != lease.order_id or row["provider_id"] != lease.provider_id:
        return ""
    return row["cluster"] or ""
