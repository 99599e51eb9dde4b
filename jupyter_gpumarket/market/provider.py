"""The provider agent: turns an idle GPU box into a bidder.

It registers (stake, hardware claim, region, control endpoint), watches the
chain for orders it can serve, prices them with a :class:`PricingStrategy`,
bids, and when a bid becomes a lease it starts the lease's Dask runtime once
the tenant hands over TLS (see :mod:`.control`). While a runtime lives it signs
heartbeats; it withdraws what accrued on a schedule and settles at lease end.

    agent = ProviderAgent(client, profile, FixedFloor(2_500_000), gpus=2).start()
    ...
    agent.stop()

Everything runs in threads of this process, Dask workers included, so a
provider that dies takes its workers with it (as a real machine would).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field

from cryptography import x509

from ..cluster.environment import EnvironmentBuilder, EnvironmentRefused, PackageSet
from ..cluster.runtime import GpuProfile, LeaseRuntime
from ..cluster.tls import ProviderKey, cert_fingerprint, key_fingerprint
from ..errors import GpuMarketError, NotAuthorized, NotFound, WrongState
from ..spec import DealStatus, GpuSpec, HardwareClaim
from ..verify.heartbeat import Heartbeat, HeartbeatDomain
from ..verify.runtime_receipts import ReceiptPlugin
from .control import ControlServer, recover_start_signer
from .pricing import MarketView, PricingStrategy

logger = logging.getLogger(__name__)


@dataclass
class _LeaseState:
    lease_id: int
    order_id: int
    gpus: int
    started_at: int
    runtime: LeaseRuntime | None = None
    receipts: ReceiptPlugin | None = None  # signs execution receipts for the lease's in-process workers
    seq: int = 0
    last_heartbeat: dict | None = None
    last_withdraw: float = field(default_factory=time.monotonic)


@dataclass
class _BidState:
    bid_id: int
    order_id: int
    gpus: int
    price: int
    bidding_ends_at: int


class ProviderAgent:
    """One provider account serving ``gpus`` GPUs of one ``profile``."""

    def __init__(
        self,
        client,
        profile: GpuProfile,
        pricing: PricingStrategy,
        gpus: int = 1,
        region: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        stake: int | None = None,
        poll_interval: float = 0.2,
        heartbeat_interval: float = 1.0,
        withdraw_interval: float = 30.0,
        behaviour=None,
        environments: EnvironmentBuilder | None = None,
    ) -> None:
        self.client = client
        self.profile = profile
        self.pricing = pricing
        self.gpus = gpus
        self.region = region
        self.host = host
        self.stake = stake
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.withdraw_interval = withdraw_interval
        # Devnet only: a verify.challenge.SimulatedBehaviour that makes this provider weak or dishonest.
        self.behaviour = behaviour
        self.key = ProviderKey.generate()
        self.control = ControlServer(self, host, port)
        self.domain = HeartbeatDomain(client.chain_id, client.market.address)
        self.provider_id = 0
        self._leases: dict[int, _LeaseState] = {}
        self._bids: dict[int, _BidState] = {}  # order id -> our live bid
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_block = 0
        self._workdir = tempfile.TemporaryDirectory(prefix="gpumarket-provider-")
        # Builds the tenant's package set for a lease's workers; without an index only the base is served.
        self.environments = environments or EnvironmentBuilder.from_config()

    # -- lifecycle ---------------------------------------------------------------

    @property
    def claim(self) -> HardwareClaim:
        return HardwareClaim(self.profile.model, self.gpus, self.profile.memory_gib, self.profile.tflops)

    @property
    def endpoint(self) -> str:
        return self.control.url

    def start(self) -> "ProviderAgent":
        """Register (or update the endpoint of) this account, then serve in background threads."""
        self.control.start()
        self.provider_id = self.client.provider_id_of()
        if self.provider_id == 0:
            stake = self.stake if self.stake is not None else self.client.params()["min_stake"]
            self.provider_id = self.client.register_provider(self.claim, self.region, self.endpoint, stake,
                                                             approve=stake > 0).result
        else:
            self.client.update_provider(self.claim, self.region, self.endpoint)
        self._next_block = self.client.w3.eth.block_number + 1
        for target, name in ((self._watch_chain, "chain"), (self._beat, "heartbeat")):
            thread = threading.Thread(target=self._loop, args=(target,), name=f"provider-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("provider %s serving %d x %s at %s", self.provider_id, self.gpus, self.profile.model, self.endpoint)
        return self

    def stop(self) -> None:
        """Stop bidding and serving; runtimes are torn down (leases settle on chain as usual)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        with self._lock:
            for state in self._leases.values():
                if state.runtime is not None:
                    state.runtime.close()
        self.control.close()
        self._workdir.cleanup()

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    @property
    def leased_gpus(self) -> int:
        with self._lock:
            return sum(s.gpus for s in self._leases.values())

    def _reserved_gpus(self) -> int:
        return self.leased_gpus + sum(b.gpus for b in self._bids.values())

    def _loop(self, step) -> None:
        interval = self.poll_interval if step == self._watch_chain else self.heartbeat_interval
        while not self._stop.is_set():
            try:
                step()
            except GpuMarketError as exc:
                logger.warning("provider %s: %s", self.provider_id, exc)
            except Exception:
                logger.exception("provider %s: unexpected error", self.provider_id)
            self._stop.wait(interval)

    # -- watching the chain ----------------------------------------------------------

    def _watch_chain(self) -> None:
        latest = self.client.w3.eth.block_number
        if latest < self._next_block:
            self._settle_due()
            return
        span = {"from_block": self._next_block, "to_block": latest}
        for ev in self.client.get_logs("OrderCreated", **span):
            self._consider_order(ev)
        for ev in self.client.get_logs("BidPlaced", **span):
            self._consider_rival(ev)
        for ev in self.client.get_logs("LeaseCreated", providerId=self.provider_id, **span):
            self._on_lease_created(ev)
        for ev in self.client.get_logs("OrderClosed", **span):
            with self._lock:  # a closed order accepts nothing more: free what our bid reserved
                self._bids.pop(ev["orderId"], None)
        for name in ("LeaseClosed", "LeaseRejected"):
            for ev in self.client.get_logs(name, **span):
                self._on_lease_ended(ev["leaseId"])
        self._next_block = latest + 1
        self._expire_bids()
        self._settle_due()

    def _consider_order(self, ev: dict) -> None:
        spec = GpuSpec(ev["gpus"], ev["gpuModel"], ev["minMemoryGiB"], ev["region"])
        if not spec.matches(self.claim, self.region) or self.client.now() >= ev["biddingEndsAt"]:
            return
        with self._lock:
            offer = min(self.gpus - self._reserved_gpus(), ev["gpus"])
            if offer <= 0:
                return
            view = MarketView(best_bid=None, utilisation=self._reserved_gpus() / self.gpus)
            price = self.pricing.price(ev["maxPricePerGpuHour"], view)
            if price is None:
                return
            self._place(ev["orderId"], price, offer, ev["biddingEndsAt"])

    def _consider_rival(self, ev: dict) -> None:
        """Re-price when a rival bids lower on an order we bid on (undercutting strategies)."""
        with self._lock:
            ours = self._bids.get(ev["orderId"])
            if ours is None or ev["providerId"] == self.provider_id or ev["pricePerGpuHour"] >= ours.price:
                return
            if self.client.now() >= ours.bidding_ends_at:
                return
            max_price = self.client.order(ours.order_id).max_price_per_gpu_hour
            price = self.pricing.price(max_price, MarketView(best_bid=ev["pricePerGpuHour"],
                                                             utilisation=self.leased_gpus / self.gpus))
            if price is None or price >= ours.price:
                return
            self.client.withdraw_bid(ours.bid_id)
            del self._bids[ours.order_id]
            self._place(ours.order_id, price, ours.gpus, ours.bidding_ends_at)

    def _place(self, order_id: int, price: int, gpus: int, ends_at: int) -> None:
        tx = self.client.place_bid(order_id, price, gpus, self.key.fingerprint, self.endpoint)
        self._bids[order_id] = _BidState(tx.result, order_id, gpus, price, ends_at)
        logger.info("provider %s bid %s on order %s at %s/GPU-h", self.provider_id, tx.result, order_id, price)

    def _expire_bids(self) -> None:
        """Withdraw bids the tenant left unaccepted well after the window (frees the GPUs they reserve)."""
        now = self.client.now()
        with self._lock:
            for order_id, bid in list(self._bids.items()):
                if now < bid.bidding_ends_at + 30:
                    continue
                del self._bids[order_id]
                try:
                    self.client.withdraw_bid(bid.bid_id)
                except WrongState:
                    pass  # already accepted or withdrawn

    def _on_lease_created(self, ev: dict) -> None:
        with self._lock:
            self._bids.pop(ev["orderId"], None)
            # The tenant may have started the workers before this poll saw the event: keep that state.
            self._leases.setdefault(ev["leaseId"], _LeaseState(ev["leaseId"], ev["orderId"], ev["gpus"], ev["startedAt"]))

    def _on_lease_ended(self, lease_id: int) -> None:
        with self._lock:
            state = self._leases.pop(lease_id, None)
        if state is not None and state.receipts is not None:
            root, count = state.receipts.merkle_root()
            if count:
                try:
                    self.client.post_receipt_root(lease_id, root, count)
                except GpuMarketError as exc:
                    logger.warning("provider %s: receipt root of lease %s not posted: %s", self.provider_id, lease_id, exc)
        if state is not None and state.runtime is not None:
            state.runtime.close()
            logger.info("provider %s: lease %s ended, workers stopped", self.provider_id, lease_id)

    def _settle_due(self) -> None:
        """Withdraw accrued pay on schedule; close leases that have run their course."""
        now = self.client.now()
        grace = self.client.params()["attestation_grace"] if self._leases else 0
        for state in list(self._leases.values()):
            if self.client.lease(state.lease_id).status != DealStatus.ACTIVE:
                self._on_lease_ended(state.lease_id)  # settled by the tenant in the meantime
            elif now >= self.client.effective_end(state.lease_id):
                try:
                    self.client.close_lease(state.lease_id)  # LeaseClosed stops the runtime next poll
                except WrongState:
                    pass  # the tenant settled it first
            elif now >= state.started_at + grace and time.monotonic() - state.last_withdraw >= self.withdraw_interval:
                state.last_withdraw = time.monotonic()
                if self.client.accrued(state.lease_id) > self.client.lease(state.lease_id).withdrawn:
                    self.client.withdraw(state.lease_id)

    # -- heartbeats ------------------------------------------------------------------

    def _beat(self) -> None:
        with self._lock:
            running = [s for s in self._leases.values() if s.runtime is not None and s.runtime.alive]
        for state in running:
            state.seq += 1
            hb = Heartbeat(state.lease_id, state.seq, int(time.time()), gpu_util_bps=0)
            state.last_heartbeat = hb.sign(self.client.signer, self.domain).to_json()

    # -- control endpoint (ControlHandler) --------------------------------------------

    def info(self) -> dict:
        return {
            "provider_id": self.provider_id,
            "address": self.client.address,
            "key_fingerprint": "0x" + self.key.fingerprint.hex(),
            "profile": self.profile.to_dict(),
            "gpus": self.gpus,
            "leased_gpus": self.leased_gpus,
        }

    def lease_csr(self, lease_id: int) -> bytes:
        self._own_active_lease(lease_id)
        return self.key.csr([self.host])

    def start_lease(self, lease_id: int, ca_pem: bytes, cert_pem: bytes, scheduler: str, signature: str,
                    packages: PackageSet = PackageSet()) -> dict:
        """Start this lease's workers (and the scheduler, if none is given) once the tenant proves it is the tenant,
        in an environment with the tenant's ``packages`` (built once per set), or refuse with the reason."""
        lease = self._own_active_lease(lease_id)
        order = self.client.order(lease.order_id)
        signer = recover_start_signer(self.client.chain_id, self.client.market.address, lease_id, ca_pem, cert_pem,
                                      scheduler, signature, packages)
        if signer != order.tenant:
            raise NotAuthorized(f"start request for lease {lease_id} signed by {signer}, not its tenant")
        if cert_fingerprint(ca_pem) != order.tenant_cert_fingerprint:
            raise NotAuthorized(f"the CA offered for lease {lease_id} is not the one pinned on order {order.id}")
        cert = x509.load_pem_x509_certificate(cert_pem)
        if key_fingerprint(cert.public_key()) != self.key.fingerprint:
            raise NotAuthorized(f"the certificate for lease {lease_id} is not for this provider's key")
        environment = self._environment(packages)  # may take a while: outside the lock
        with self._lock:
            state = self._leases.setdefault(
                lease_id, _LeaseState(lease_id, lease.order_id, lease.gpus, lease.started_at)
            )
            if state.runtime is None:
                security = self.key.security(ca_pem, cert_pem, self._workdir.name)
                plugins = (self.behaviour,) if self.behaviour is not None else ()
                state.runtime = LeaseRuntime(lease_id, security, self.profile, lease.gpus, scheduler or None, self.host,
                                             plugins=plugins, python=environment.python)
                if state.runtime.python is None and not state.runtime.use_cuda:
                    # Execution receipts are signed with our chain key, so only by workers in this process.
                    state.receipts = ReceiptPlugin(lease_id, self.client.signer, self.domain)
                    state.runtime.extra_plugins += (state.receipts,)
                runtime = state.runtime
            else:
                runtime = state.runtime
        address = runtime.start()  # idempotent: a repeated start request gets the same answer
        self._beat()
        return {"scheduler": address, "workers": runtime.workers, "dashboard": runtime.dashboard_link}

    def check_environment(self, packages: PackageSet) -> dict:
        """Could this provider run ``packages``? What it would install, or EnvironmentRefused."""
        return {"install": self._refusing(lambda: self.environments.check(packages))}

    def _environment(self, packages: PackageSet):
        started = time.monotonic()
        environment = self._refusing(lambda: self.environments.prepare(packages))
        if not environment.is_base:
            logger.info("provider %s: environment %s %s in %.1f s", self.provider_id, environment.digest[:12],
                        "reused" if environment.reused else "built", time.monotonic() - started)
        return environment

    def _refusing(self, build):
        try:
            return build()
        except EnvironmentRefused as exc:
            logger.warning("provider %s refused a package set: %s", self.provider_id, exc)
            raise EnvironmentRefused(exc.package, exc.wanted, exc.reason, self.provider_id) from None

    def heartbeat(self, lease_id: int) -> dict:
        with self._lock:
            state = self._leases.get(lease_id)
            if state is None or state.last_heartbeat is None:
                raise NotFound(f"no running workers for lease {lease_id} here")
            return state.last_heartbeat

    def _own_active_lease(self, lease_id: int):
        lease = self.client.lease(lease_id)
        if lease.provider_id != self.provider_id:
            raise NotFound(f"lease {lease_id} is not served by this provider")
        if lease.status != DealStatus.ACTIVE:
            raise WrongState(f"lease {lease_id} is {lease.status.name.lower()}, not active")
        return lease

    def __repr__(self) -> str:
        return f"ProviderAgent(id={self.provider_id}, {self.gpus}x {self.profile.model}, endpoint={self.endpoint})"

