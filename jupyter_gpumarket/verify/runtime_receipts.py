"""Execution receipts made by the provider's runtime, and collected and checked by the tenant.

Provider side: :class:`ReceiptPlugin` is a ``distributed`` worker plugin that
the provider agent gives to every worker of a lease. For each task a worker
finishes it records the task's key and :func:`~.hashing.hash_result` of the
result it holds (what the tenant will receive), with the compute time window;
every ``batch_size`` tasks, or when the tenant asks, it signs one EIP-712
:class:`~.receipts.ExecutionReceipt` over the batch with the provider's chain
key. The plugin object is shared by the lease's workers, which run as threads
of the provider agent's process: the key never leaves that process, and one
sequence counter numbers the lease's receipts. :meth:`ReceiptPlugin.merkle_root`
is what the agent posts on chain (``postReceiptRoot``) when the lease ends.

Tenant side: :func:`fetch_receipts` runs on one worker of the lease
(``client.run``) and returns the signed receipts with their per-task hashes;
:class:`ReceiptCollector` checks each one (signed by the lease's provider, for
this lease, sequence increasing, and the listed per-task hashes fold into the
signed key-set and results hashes), keeps it in the lease's
:class:`~.receipts.ReceiptBook`, and indexes every task key to the receipt
that covers it, for spot checks and dispute evidence.

Example (a LocalCluster standing in for a provider's runtime)::

    plugin = ReceiptPlugin(lease_id=7, signer=provider_signer, domain=domain)
    client.register_plugin(plugin)          # in-process workers only: the signer is not picklable
    client.gather(client.map(square, range(10)))
    collector = ReceiptCollector(domain)
    collector.add_lease(7, provider_signer.address)
    collector.collect(client, {7: [worker_address]})
    collector.covering(key)                  # -> TaskReceipt(lease_id, receipt, result_hash)
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import GpuMarketError, InvalidRequest, NotAuthorized
from .challenge import BEHAVIOUR_PLUGIN
from .hashing import combine_result_hashes, hash_result, hash_task_keys
from .heartbeat import HeartbeatDomain
from .receipts import ExecutionReceipt, ReceiptBook, SignedReceipt, merkle_root

__all__ = ["RECEIPT_PLUGIN", "ReceiptCollector", "ReceiptPlugin", "TaskReceipt", "fetch_receipts"]

logger = logging.getLogger(__name__)

#: Worker plugin name of :class:`ReceiptPlugin`.
RECEIPT_PLUGIN = "gpumarket_receipts"


class ReceiptPlugin(WorkerPlugin):
    """Signs execution receipts for the tasks a lease's workers finish (provider side).

    One instance serves all workers of one lease (``Worker(plugins={plugin})`` for each).
    Results whose type :func:`hash_result` cannot hash are left out and counted in
    ``unhashable`` (a spot check cannot compare them either).
    """

    name = RECEIPT_PLUGIN

    def __init__(self, lease_id: int, signer, domain: HeartbeatDomain, batch_size: int = 64) -> None:
        if batch_size < 1:
            raise InvalidRequest(f"batch_size must be at least 1, got {batch_size!r}")
        self.lease_id = int(lease_id)
        self.domain = domain
        self.batch_size = batch_size
        self.unhashable = 0
        self._signer = signer  # the provider's chain key: stays in this process (Signer refuses pickling)
        self._workers: list = []
        self._pending: list[tuple[object, bytes, float, float]] = []  # key, result hash, start, stop
        self._signed: list[dict] = []  # {"receipt": json, "items": [(key, hash hex)]}
        self._lock = threading.Lock()

    def setup(self, worker) -> None:
        self._workers.append(worker)

    def teardown(self, worker) -> None:
        with self._lock:
            self._sign_pending()
        if worker in self._workers:
            self._workers.remove(worker)

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish != "memory" or start not in ("executing", "long-running"):
            return
        worker = next((w for w in self._workers if key in w.data), None)
        if worker is None:
            return
        behaviour = worker.plugins.get(BEHAVIOUR_PLUGIN)
        if behaviour is not None:  # devnet only: a dishonest provider signs what it delivers
            behaviour.tamper(worker, key)
        try:
            digest = hash_result(worker.data[key])
        except (InvalidRequest, KeyError):
            self.unhashable += 1
            return
        ts = worker.state.tasks.get(key)
        spans = [s for s in (ts.startstops if ts is not None else []) if s.get("action") == "compute"]
        now = time.time()
        begin, end = (spans[-1]["start"], spans[-1]["stop"]) if spans else (now, now)
        with self._lock:
            self._pending.append((key, digest, begin, end))
            if len(self._pending) >= self.batch_size:
                self._sign_pending()

    def _sign_pending(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        items = {key: digest for key, digest, _, _ in batch}
        receipt = ExecutionReceipt(
            self.lease_id,
            len(self._signed) + 1,
            hash_task_keys(items),
            combine_result_hashes(items),
            int(min(b for _, _, b, _ in batch)),
            int(max(e for _, _, _, e in batch)) + 1,  # whole seconds, rounded outwards
        )
        signed = receipt.sign(self._signer, self.domain)
        self._signed.append({"receipt": signed.to_json(), "items": [(k, "0x" + d.hex()) for k, d in items.items()]})

    def receipts(self, after: int = 0) -> list[dict]:
        """Signed receipts with sequence number above ``after`` (pending tasks are signed first)."""
        with self._lock:
            self._sign_pending()
            return list(self._signed[after:])

    def merkle_root(self) -> tuple[bytes, int]:
        """``(root, count)`` over every receipt signed so far, in sequence order (for ``postReceiptRoot``)."""
        with self._lock:
            self._sign_pending()
            leaves = [SignedReceipt.from_json(r["receipt"]).receipt.struct_hash() for r in self._signed]
        return merkle_root(leaves), len(leaves)

    def __reduce__(self):
        raise TypeError("ReceiptPlugin holds the provider's key; give it to in-process workers only")


def fetch_receipts(dask_worker=None, lease_id: int = 0, after: int = 0) -> list[dict]:
    """``client.run(fetch_receipts, lease_id=..., after=..., workers=[a])``: the lease's signed receipts."""
    plugin = dask_worker.plugins.get(RECEIPT_PLUGIN)
    if plugin is None or plugin.lease_id != lease_id:
        return []
    return plugin.receipts(after)


@dataclass(frozen=True)
class TaskReceipt:
    """The receipt that covers one task, and the result hash it lists for that task."""

    lease_id: int
    signed: SignedReceipt
    items: tuple[tuple[object, bytes], ...]
    result_hash: bytes


class ReceiptCollector:
    """The tenant's checked copy of every lease's execution receipts, indexed by task key."""

    def __init__(self, domain: HeartbeatDomain) -> None:
        self.domain = domain
        self.books: dict[int, ReceiptBook] = {}
        self._by_key: dict[object, TaskReceipt] = {}
        self.refused: list[str] = []  # why receipts were refused (forged, replayed, inconsistent)

    def add_lease(self, lease_id: int, provider: str) -> ReceiptBook:
        return self.books.setdefault(lease_id, ReceiptBook(lease_id, provider, self.domain))

    def accept(self, lease_id: int, record: dict) -> TaskReceipt | None:
        """Check one fetched record; returns None (and notes why) if it is refused."""
        book = self.books[lease_id]
        try:
            signed = SignedReceipt.from_json(record["receipt"])
            items = tuple((key, bytes.fromhex(h.removeprefix("0x"))) for key, h in record["items"])
            keys = [k for k, _ in items]
            if hash_task_keys(keys) != signed.receipt.task_keys_hash or len(set(keys)) != len(keys):
                raise NotAuthorized(f"receipt {signed.receipt.seq} of lease {lease_id} lists other tasks than it signs")
            if combine_result_hashes(dict(items)) != signed.receipt.results_hash:
                raise NotAuthorized(f"receipt {signed.receipt.seq} of lease {lease_id} lists other results than it signs")
            book.accept(signed)
        except (GpuMarketError, KeyError, TypeError, ValueError) as exc:
            self.refused.append(str(exc))
            logger.warning("execution receipt refused: %s", exc)
            return None
        last = None
        for key, digest in items:
            last = self._by_key[key] = TaskReceipt(lease_id, signed, items, digest)
        return last

    def collect(self, client, workers_by_lease: dict[int, list[str]]) -> int:
        """Fetch new receipts of each lease from one of its workers; returns how many were accepted."""
        accepted = 0
        for lease_id, workers in workers_by_lease.items():
            book = self.books.get(lease_id)
            if book is None or not workers:
                continue
            try:
                replies = client.run(fetch_receipts, lease_id=lease_id, after=book.last_seq or 0, workers=workers[:1])
            except Exception as exc:  # worker gone or refusing: checks go on, without evidence for this lease
                self.refused.append(f"lease {lease_id}: receipts not fetched ({type(exc).__name__})")
                continue
            for records in replies.values():
                accepted += sum(self.accept(lease_id, r) is not None for r in records)
        return accepted

    def covering(self, key) -> TaskReceipt | None:
        return self._by_key.get(key)
