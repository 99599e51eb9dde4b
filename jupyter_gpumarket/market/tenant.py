"""The tenant's lease manager for one Dask cluster (no Dask cluster code here).

:class:`TenantLeaser` runs auctions, hands each accepted provider its TLS
certificate signed by the cluster's own CA (whose fingerprint is on every
order), tells the first lease to host the scheduler and the others to join
it, watches heartbeats, replaces silent providers, and settles leases into
:class:`~jupyter_gpumarket.spec.Receipt` objects.

Environment sync: with a :class:`~jupyter_gpumarket.cluster.environment.PackageSet`,
every bidder is asked over its control endpoint whether it can run the set before
any bid is accepted (refusing bidders are passed over; when all refuse, the order
is closed, the deposit refunded and the providers' reasons raised as one
:class:`EnvironmentRefused`). The set also travels, signed, in the handover; a
provider that still refuses there has its lease rejected within the grace period
(full refund) and its reason raised.
``cluster.leased.LeasedCluster`` is the Dask face of it.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlparse

from ..cluster.environment import EnvironmentRefused, PackageSet
from ..cluster.tls import TenantCA
from ..errors import GpuMarketError, InsufficientFunds, NotAuthorized, NotFound, ProviderUnreachable, WrongState
from ..spec import Bid, DealStatus, GpuSpec, Lease, Provider, Receipt
from ..verify.heartbeat import HeartbeatDomain, HeartbeatMonitor, SignedHeartbeat
from ..verify.runtime_receipts import ReceiptCollector
from .auction import AuctionResult, PartialPolicy, Rule, request_gpus
from .control import ControlClient, sign_start

logger = logging.getLogger(__name__)


@dataclass
class LeaseHandle:
    """One live lease of this cluster: who serves it and how we reach it."""

    lease: Lease
    provider: Provider
    endpoint: str
    hosts_scheduler: bool
    workers: list[str]
    monitor: HeartbeatMonitor
    tx_hashes: list[str] = field(default_factory=list)
    last_seen: float = field(default_factory=time.monotonic)

    @property
    def id(self) -> int:
        return self.lease.id


class TenantLeaser:
    """Leases GPUs for one cluster within one budget, and keeps them honest."""

    def __init__(
        self,
        client,
        spec: GpuSpec,
        max_price: int,
        hours: float,
        budget: int,
        window: int = 5,
        rule: Rule = "cost",
        partial: PartialPolicy = "accept",
        on_bid: Callable[[Bid, Provider | None], None] | None = None,
        heartbeat_timeout: float = 6.0,
        class_id: int = 0,
        name: str = "",
        store=None,
        ca: TenantCA | None = None,
        attest: bool = False,
        attest_tolerance: float = 0.6,
        packages: PackageSet | None = None,
    ) -> None:
        self.client = client
        self.spec = spec
        self.max_price = max_price
        self.hours = hours
        self.budget = budget
        self.window = window
        self.rule = rule
        self.partial = partial
        self.on_bid = on_bid
        self.heartbeat_timeout = heartbeat_timeout
        self.class_id = class_id  # pay from this class pool (classroom mode); 0 = own wallet
        self.name = name or "cluster"
        self.store = store  # a history.LeaseStore, or None to keep nothing on disk
        self.ca = ca or TenantCA.create()
        self.attest = attest  # check each lease's hardware within the grace period (verify.attest)
        self.attest_tolerance = attest_tolerance
        self.packages = packages or PackageSet()  # what the workers must have beyond the provider's base
        self._env_answers: dict[int, EnvironmentRefused | None] = {}  # provider id -> its answer for self.packages
        self.attestations: dict[int, object] = {}  # lease id -> AttestationReport
        self.measured_tflops: dict[int, float] = {}  # provider id -> attested TFLOPS, for later auctions
        self._workdir = tempfile.TemporaryDirectory(prefix="gpumarket-tenant-")
        self.security = self.ca.client_security(self._workdir.name)
        self.domain = HeartbeatDomain(client.chain_id, client.market.address)
        self.execution_receipts = ReceiptCollector(self.domain)  # providers' signed receipts, checked
        self.scheduler_address: str | None = None
        self.dashboard_link: str | None = None
        self.leases: dict[int, LeaseHandle] = {}
        self.receipts: list[Receipt] = []
        self.auctions: list[AuctionResult] = []
        self.timings: list[dict[str, float]] = []  # per lease() call: bidding, chain, worker start-up
        self._lock = threading.RLock()

    # -- leasing ---------------------------------------------------------------------

    @property
    def gpus(self) -> int:
        return sum(h.lease.gpus for h in self.leases.values())

    @property
    def committed(self) -> int:
        """Budget tied up: deposits of live leases plus what closed ones cost."""
        return sum(h.lease.deposit for h in self.leases.values()) + sum(r.cost for r in self.receipts)

    def lease(self, gpus: int, exclude: set[int] = frozenset()) -> list[LeaseHandle]:
        """Run an auction for ``gpus`` more GPUs and bring their workers up."""
        with self._lock:
            remaining = self.budget - self.committed
            if remaining <= 0:
                raise InsufficientFunds(f"the cluster's budget of {self.budget} is committed; raise the budget")
            spec = GpuSpec(gpus, self.spec.model, self.spec.min_memory_gib, self.spec.region)
            try:
                result = request_gpus(
                    self.client, spec, self.max_price, self.hours, remaining, self.ca.fingerprint, self.window,
                    self.rule, self.partial, self.on_bid, exclude_providers=exclude, class_id=self.class_id,
                    measured_tflops=self.measured_tflops, bid_filter=self._can_run if self.packages else None,
                )
            except EnvironmentRefused as exc:
                raise EnvironmentRefused(exc.package, exc.wanted, f"{exc.reason} (no bidder can run the package set; "
                                         "the order was closed and its deposit refunded)", exc.provider_id) from None
            self.auctions.append(result)
            bids = {b.id: b for b in result.bids}
            handles = []
            handover_started = time.monotonic()
            try:
                for lease in result.leases:
                    handles.append(self._bring_up(lease, bids[lease.id], result.tx_hashes))
            except GpuMarketError as exc:
                settled = [self._settle(lease.id, reason="workers did not start")
                           for lease in result.leases if lease.id not in self.leases]
                if isinstance(exc, EnvironmentRefused):
                    refund = "rejected with a full refund" if all(r.cost == 0 for r in settled) else "closed"
                    raise EnvironmentRefused(exc.package, exc.wanted, f"{exc.reason} (the new lease was {refund})",
                                             exc.provider_id) from None
                raise
            self.timings.append({
                "bidding_window_s": result.seconds_bidding,
                "chain_s": result.seconds_chain,
                "worker_startup_s": time.monotonic() - handover_started,
            })
            if self.attest:
                failed = self._attest(handles)
                if failed:
                    handles = [h for h in handles if h.provider.id not in failed]
                    handles += self.lease(sum(failed.values()), exclude=set(exclude) | set(failed))
            return handles

    def _can_run(self, bid: Bid) -> EnvironmentRefused | None:
        """None if the bidder can run this cluster's package set, else its refusal (asked once per provider)."""
        cache = self._env_answers
        if bid.provider_id not in cache:
            try:
                ControlClient(bid.endpoint).check_environment(self.packages)
                cache[bid.provider_id] = None
            except EnvironmentRefused as exc:
                cache[bid.provider_id] = EnvironmentRefused(exc.package, exc.wanted, exc.reason, bid.provider_id)
            except NotFound:
                cache[bid.provider_id] = None  # an agent without the check: the handover decides
        return cache[bid.provider_id]

    def _attest(self, handles: list[LeaseHandle]) -> dict[int, int]:
        """Check each new lease's hardware; reject (full refund) the ones that fail.

        Returns ``{provider id: gpus}`` of the rejected leases, to lease again elsewhere.
        """
        from distributed import Client

        from ..verify.attest import attest_lease

        failed: dict[int, int] = {}
        with Client(self.scheduler_address, security=self.security, timeout="30s") as client:
            for handle in handles:
                # A generous per-call timeout: a busy machine is slow, not dishonest (the grace period bounds it).
                report = attest_lease(client, workers=handle.workers, claim_tflops=handle.provider.claim,
                                      tolerance=self.attest_tolerance, timeout=20.0)
                self.attestations[handle.id] = report
                if report.passed:
                    self.measured_tflops[handle.provider.id] = report.measured_tflops
                    continue
                logger.warning("lease %s failed attestation: %s", handle.id, report.reason)
                self._settle(handle.id, reason=f"attestation failed: {report.reason}")  # rejected: full refund
                if handle.hosts_scheduler:
                    raise WrongState(f"the provider hosting the scheduler failed attestation ({report.reason}); "
                                     "its lease was rejected with a full refund. Start the cluster again.")
                failed[handle.provider.id] = failed.get(handle.provider.id, 0) + handle.lease.gpus
        return failed

    def _bring_up(self, lease: Lease, bid: Bid, tx_hashes: list[str]) -> LeaseHandle:
        provider = self.client.provider(lease.provider_id)
        control = ControlClient(bid.endpoint)
        host = urlparse(bid.endpoint).hostname or "127.0.0.1"
        cert = self.ca.sign_provider(control.csr(lease.id), bid.cert_fingerprint, hosts=[host])
        scheduler = self.scheduler_address or ""
        signature = sign_start(self.client.signer, self.client.chain_id, self.client.market.address, lease.id,
                               self.ca.cert_pem, cert, scheduler, self.packages)
        try:
            started = control.start(lease.id, self.ca.cert_pem, cert, scheduler, signature, packages=self.packages)
        except EnvironmentRefused as exc:
            raise EnvironmentRefused(exc.package, exc.wanted, exc.reason, provider.id) from None
        handle = LeaseHandle(
            lease, provider, bid.endpoint, hosts_scheduler=not scheduler, workers=started["workers"],
            monitor=HeartbeatMonitor(lease.id, provider.owner, self.domain), tx_hashes=list(tx_hashes),
        )
        if not scheduler:
            self.scheduler_address = started["scheduler"]
            self.dashboard_link = started.get("dashboard")
            self._record_cluster()
        self.leases[lease.id] = handle
        self.execution_receipts.add_lease(lease.id, provider.owner)
        if self.store is not None:
            self.store.record_lease(
                lease.id, chain_id=self.client.chain_id, market=self.client.market.address, cluster=self.name,
                order_id=lease.order_id, provider_id=provider.id, endpoint=bid.endpoint,
                hosts_scheduler=handle.hosts_scheduler, gpus=lease.gpus, price=lease.price_per_gpu_hour,
                deposit=lease.deposit, started_at=lease.started_at, provider_fingerprint=bid.cert_fingerprint.hex(),
                tenant_ca_fingerprint=self.ca.fingerprint.hex(),
            )
        return handle

    def _record_cluster(self) -> None:
        """Keep what a restarted kernel needs to re-attach: the CA (encrypted), the scheduler, the request."""
        if self.store is None:
            return
        from ..chain.devnet import default_state_dir
        from ..history import ca_password

        ca_path = self.ca.save(default_state_dir() / "clusters" / f"{self.name}.ca.pem", ca_password(self.client.signer))
        request = {"gpu": self.spec.model, "min_memory_gib": self.spec.min_memory_gib, "region": self.spec.region,
                   "max_price": self.max_price, "hours": self.hours, "budget": self.budget, "window": self.window,
                   "rule": self.rule, "partial": self.partial, "class_id": self.class_id,
                   "packages": self.packages.to_dict()}
        self.store.record_cluster(self.name, chain_id=self.client.chain_id, market=self.client.market.address,
                                  tenant=self.client.address, ca_path=str(ca_path), scheduler=self.scheduler_address,
                                  request=request)

    @classmethod
    def restore(cls, client, store, name: str, heartbeat_timeout: float = 6.0) -> "TenantLeaser":
        """The leaser of cluster ``name`` as a previous kernel left it: live leases from the chain and the store."""
        import json

        from ..history import ca_password

        row = store.cluster(name)
        if row is None:
            raise NotFound(f"no cluster {name!r} in the lease history; see %gpumarket leases")
        if row["tenant"] != client.address:
            raise NotAuthorized(f"cluster {name} belongs to {row['tenant']}; connect with that account")
        request = json.loads(row["request"] or "{}")
        spec = GpuSpec(1, request.get("gpu", ""), request.get("min_memory_gib", 0), request.get("region", ""))
        leaser = cls(client, spec, request.get("max_price", 1), request.get("hours", 1.0), request.get("budget", 1),
                     window=request.get("window", 5), rule=request.get("rule", "cost"),
                     partial=request.get("partial", "accept"), heartbeat_timeout=heartbeat_timeout,
                     class_id=request.get("class_id", 0), name=name, store=store,
                     ca=TenantCA.load(row["ca_path"], ca_password(client.signer)),
                     packages=PackageSet.from_dict(request["packages"]) if request.get("packages") else None)
        leaser.scheduler_address = row["scheduler"]
        for rec in store.live_leases(client.chain_id, client.market.address, cluster=name):
            lease = client.lease(rec["lease_id"])
            if lease.status != DealStatus.ACTIVE:
                store.settle_lease(client.chain_id, client.market.address, lease.id,
                                   receipt_from_chain(client, lease.id).__dict__ | {"tx_hashes": []})
                continue
            provider = client.provider(lease.provider_id)
            leaser.leases[lease.id] = LeaseHandle(
                lease, provider, rec["endpoint"], bool(rec["hosts_scheduler"]), workers=[],
                monitor=HeartbeatMonitor(lease.id, provider.owner, leaser.domain),
            )
        if not leaser.leases:
            raise WrongState(f"cluster {name} has no live lease left to re-attach to; start a new one")
        return leaser

    # -- releasing -------------------------------------------------------------------

    def release(self, lease_id: int) -> Receipt:
        """Close a lease now: the provider is paid what accrued, the rest comes back."""
        with self._lock:
            return self._settle(lease_id)

    def release_all(self) -> list[Receipt]:
        with self._lock:
            # Joining workers first, the scheduler's host last.
            order = sorted(self.leases.values(), key=lambda h: h.hosts_scheduler)
            return [self._settle(h.id) for h in order]

    def pick_for_release(self, gpus_to_free: int) -> list[int]:
        """Leases to close to free ``gpus_to_free`` GPUs, sparing the scheduler's host."""
        chosen, freed = [], 0
        for handle in sorted(self.leases.values(), key=lambda h: (h.hosts_scheduler, -h.lease.price_per_gpu_hour)):
            if freed >= gpus_to_free or (handle.hosts_scheduler and len(self.leases) - len(chosen) == 1
                                         and freed + handle.lease.gpus > gpus_to_free):
                break
            chosen.append(handle.id)
            freed += handle.lease.gpus
        return chosen

    def _settle(self, lease_id: int, heartbeat: SignedHeartbeat | None = None, reason: str = "") -> Receipt:
        handle = self.leases.pop(lease_id, None)
        lease = self.client.lease(lease_id)
        hashes = list(handle.tx_hashes) if handle else []
        if lease.status == DealStatus.ACTIVE:
            in_grace = self.client.now() < lease.started_at + self.client.params()["attestation_grace"]
            if heartbeat is not None:
                tx = self.client.close_lease_at_heartbeat(lease_id, heartbeat)
            elif in_grace and reason:
                tx = self.client.reject_lease(lease_id, reason)
            else:
                tx = self.client.close_lease(lease_id)
            hashes.append(tx.hash)
        receipt = self.receipt(lease_id, hashes)
        self.receipts.append(receipt)
        if self.store is not None:
            book = self.execution_receipts.books.get(lease_id)
            self.store.settle_lease(self.client.chain_id, self.client.market.address, lease_id,
                                    {**receipt.__dict__, "tx_hashes": list(receipt.tx_hashes),
                                     "execution_receipts": book.to_json() if book is not None else []})
        return receipt

    def spot_get(self, dask_client, checker, dsk, keys, **kwargs):
        """A Dask ``get`` through ``checker`` (verify.spotcheck): a sampled fraction of tasks is re-run
        here; a lease caught returning a wrong result gets a dispute on chain (``checker.disputes``)."""
        from ..verify.spotcheck import dispute_mismatches

        workers = {h.id: h.workers for h in self.leases.values()}
        outputs = checker.get(dask_client, dsk, keys, self.execution_receipts, workers)
        checker.disputes.extend(dispute_mismatches(self.client, checker.reports[-1]))
        return outputs

    def receipt(self, lease_id: int, tx_hashes: list[str] = ()) -> Receipt:
        return receipt_from_chain(self.client, lease_id, tx_hashes)

    # -- liveness --------------------------------------------------------------------

    def check_heartbeats(self) -> list[int]:
        """Poll every provider once; close out the silent ones and re-lease their GPUs.

        Returns the ids of leases closed for silence. A silent scheduler host
        cannot be replaced (its cluster is gone): it is settled and reported.
        """
        silent = []
        with self._lock:
            handles = list(self.leases.values())
        for handle in handles:
            try:
                raw = ControlClient(handle.endpoint, timeout=2.0).heartbeat(handle.id)
                handle.monitor.accept(SignedHeartbeat.from_json(raw))
                handle.last_seen = time.monotonic()
            except (ProviderUnreachable, GpuMarketError) as exc:
                if time.monotonic() - handle.last_seen > self.heartbeat_timeout:
                    logger.warning("lease %s: provider silent (%s)", handle.id, exc)
                    silent.append(handle)
        for handle in silent:
            with self._lock:
                self._settle(handle.id, heartbeat=handle.monitor.last, reason="provider went silent")
            if handle.hosts_scheduler:
                raise WrongState(
                    f"lease {handle.id} hosted the scheduler and its provider went silent; the cluster is lost "
                    "(results already gathered are kept). Start a new cluster."
                )
            try:
                self.lease(handle.lease.gpus, exclude={handle.provider.id})
            except GpuMarketError as exc:
                logger.warning("could not re-lease %d GPUs after lease %s failed: %s", handle.lease.gpus, handle.id, exc)
        return [h.id for h in silent]

    # -- accounting ------------------------------------------------------------------

    def spent(self) -> int:
        """What this cluster has cost so far, to the base unit (live leases accrue by the second)."""
        # The contract's formula at wall-clock time: a devnet's latest block can lag the clock.
        now = int(time.time())
        live = sum(h.lease.accrued_at(now) for h in list(self.leases.values()))
        return live + sum(r.cost for r in self.receipts)

    def hourly_rate(self) -> int:
        return sum(h.lease.price_per_gpu_hour * h.lease.gpus for h in self.leases.values())

    def hours_affordable(self) -> float:
        rate = self.hourly_rate() or self.max_price * max(1, self.spec.count)
        return (self.budget - self.spent()) / rate if rate else 0.0

    def max_gpus_in_budget(self) -> int:
        """How many GPUs the remaining budget could keep for the requested hours at the max price."""
        per_gpu = self.max_price * self.hours
        return self.gpus + int((self.budget - self.committed) // per_gpu) if per_gpu else self.gpus

    def close(self) -> None:
        self._workdir.cleanup()


def receipt_from_chain(client, lease_id: int, tx_hashes=()) -> Receipt:
    """What a settled lease cost, from its on-chain events (withdrawals, close or rejection)."""
    lease = client.lease(lease_id)
    withdrawals = client.get_logs("PaymentWithdrawn", leaseId=lease_id)
    paid = sum(w["amount"] - w["fee"] for w in withdrawals)
    fee = sum(w["fee"] for w in withdrawals)
    refunded = 0
    hashes = list(tx_hashes)
    for closed in client.get_logs("LeaseClosed", leaseId=lease_id):
        paid, fee, refunded = paid + closed["paid"], fee + closed["fee"], closed["refunded"]
        hashes.append(closed["transactionHash"])
    for rejected in client.get_logs("LeaseRejected", leaseId=lease_id):
        refunded = rejected["refunded"]
        hashes.append(rejected["transactionHash"])
    return Receipt(
        lease_id=lease_id,
        provider_id=lease.provider_id,
        price_per_gpu_hour=lease.price_per_gpu_hour,
        gpus=lease.gpus,
        seconds=max(0, lease.ends_at - lease.started_at),
        paid_to_provider=paid,
        fee=fee,
        refunded=refunded,
        chain_id=client.chain_id,
        tx_hashes=tuple(dict.fromkeys(hashes)),
    )
