"""One user's view of the market: wallet, budget, live clusters, history, config.

Works without IPython; the magics and widgets are thin layers over it.

    session = Session.connect(devnet=True)           # or rpc_url=..., market=..., keystore=...
    session.set_budget("20")                        # no cell may commit beyond this
    cluster = session.rent(RentRequest(gpus=2, gpu="H100|A100"))
    ...
    receipts = session.release(cluster)

Settings come from dask config (``gpumarket.*``; defaults in ``gpumarket.yaml``
shipped with the package) and environment variables (``DASK_GPUMARKET__BUDGET``).

Spending caps. The session cap (``budget``) and the account cap
(``gpumarket.account-cap``: every kernel of this account on this machine, over
the last ``cap-period-days``) are checked before any transaction, and the check
is one step with reserving the request's commitment: under the session lock for
cells running in threads of one kernel, and inside one SQLite ``BEGIN IMMEDIATE``
transaction of the lease store for several kernels. So concurrent cells cannot
both pass a cap that fits only one of them. On chain, each order's deposit is
the most that lease can ever pay. ``meter()`` reports spent, committed, remaining.

The first lease of a session starts the account's watchdog
(:mod:`jupyter_gpumarket.watchdog`) if none runs, so a kernel that dies never
keeps paying (``gpumarket.watchdog: false`` turns that off).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dask.config
import yaml

from .errors import GpuMarketError, InsufficientFunds, InvalidRequest, NotFound
from .cluster.environment import PackageSet
from .market.tenant import receipt_from_chain
from .spec import SECONDS_PER_HOUR, DealStatus, GpuSpec, Money, Receipt

_DEFAULTS = Path(__file__).with_name("gpumarket.yaml")
dask.config.update_defaults(yaml.safe_load(_DEFAULTS.read_text()))


def config(key: str):
    """A ``gpumarket.<key>`` setting (dask config, env overrides included)."""
    return dask.config.get(f"gpumarket.{key}")


@dataclass(frozen=True)
class RentRequest:
    """What one ``%%gpurent`` cell (or ``Session.rent``) asks for. Money as base units."""

    gpus: int = 1
    gpu: str = ""
    min_vram: int = 0
    region: str = ""
    max_price: int = 3_000_000
    hours: float = 1.0
    budget: int | None = None  # for this cluster; None = what the full lease costs at max price
    window: int = 3
    select: str = "cost"
    partial: str = "accept"
    attest: bool = False  # check the hardware within the grace period; failures are refunded
    packages: tuple[str, ...] = ()  # what the workers need beyond the provider's base (environment sync)

    def __post_init__(self) -> None:
        GpuSpec(self.gpus, self.gpu, self.min_vram, self.region)  # validates count, pattern, memory
        if self.max_price <= 0:
            raise InvalidRequest(f"max price must be above 0, got {self.max_price}")
        if self.hours <= 0:
            raise InvalidRequest(f"hours must be above 0, got {self.hours}")
        if self.budget is not None and self.budget <= 0:
            raise InvalidRequest("budget must be above 0; give the most this cell may spend, e.g. --budget 5")
        if self.window <= 0:
            raise InvalidRequest(f"window must be at least 1 second, got {self.window}")
        if self.select not in ("cost", "price"):
            raise InvalidRequest(f"select must be 'cost' or 'price', got {self.select!r}")
        PackageSet.parse(self.packages)  # refuses what is not a plain requirement

    @property
    def spec(self) -> GpuSpec:
        return GpuSpec(self.gpus, self.gpu, self.min_vram, self.region)

    @property
    def commitment(self) -> int:
        """The most this request can tie up: its budget, or the full lease at the max price."""
        full = self.max_price * self.gpus * int(self.hours * SECONDS_PER_HOUR) // SECONDS_PER_HOUR
        return min(self.budget, full) if self.budget is not None else full

    def fits(self, cluster) -> bool:
        """Whether a live cluster already serves this request (same GPUs, pattern and region)."""
        leaser = cluster.leaser
        return (
            leaser.gpus >= self.gpus
            and leaser.spec.model == self.gpu
            and leaser.spec.min_memory_gib >= self.min_vram
            and leaser.spec.region == self.region
            and leaser.packages == PackageSet.parse(self.packages)
        )


@dataclass
class Session:
    """A tenant account with a spending cap and the clusters it holds."""

    client: object  # MarketClient with the tenant's signer
    budget: int | None = None  # session cap in base units; None = none
    class_id: int = 0  # classroom mode: leases draw on this class's pool within the student's cap
    store: object = None  # history.LeaseStore shared with other kernels, or None
    clusters: list = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    account_cap: int | None = None  # every kernel of this account on this machine, per cap period
    connection: dict = field(default_factory=dict)  # how to connect again (the watchdog does); never a key
    _reserved: int = 0  # commitments of rents between their cap check and their leases
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    # -- connecting -------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        devnet: bool | None = None,
        rpc_url: str | None = None,
        market: str | None = None,
        keystore: str | None = None,
        state_dir: str | None = None,
        account: str | None = None,
        class_id: int | None = None,
    ) -> "Session":
        """Connect to the recorded devnet or to ``rpc_url``/``market`` with a keystore or env key."""
        from .chain import Devnet, MarketClient, Signer
        from .chain.accounts import PASSWORD_ENV

        use_devnet = config("devnet") if devnet is None else devnet
        rpc_url = rpc_url or config("rpc-url")
        if use_devnet or not rpc_url:
            net = Devnet.load(state_dir or config("devnet-dir"))
            client = net.client(account or config("devnet-account"))
        else:
            market = market or config("market")
            if not market:
                raise InvalidRequest("no market address; pass --market or set gpumarket.market")
            keystore = keystore or config("keystore")
            signer = Signer.from_keystore(keystore, os.environ.get(PASSWORD_ENV, "")) if keystore else Signer.from_env()
            client = MarketClient.connect(rpc_url, market, signer, expected_chain_id=config("chain-id"))
        from .history import LeaseStore

        connection = ({"devnet": True, "state_dir": str(net.state_dir), "account": account or config("devnet-account")}
                      if use_devnet or not rpc_url else
                      {"devnet": False, "rpc_url": rpc_url, "market": market, "keystore": keystore})
        session = cls(client, class_id=int(class_id if class_id is not None else config("class-id") or 0),
                      store=LeaseStore() if config("history") else None, connection=connection)
        budget = config("budget")
        if budget is not None:
            session.set_budget(budget)
        cap = config("account-cap")
        if cap is not None:
            session.account_cap = session.parse(cap, "gpumarket.account-cap")
        return session

    @property
    def decimals(self) -> int:
        return self.client.token_decimals()

    def money(self, amount: int) -> Money:
        return Money(amount, self.decimals, self.client.token_symbol())

    def parse(self, text, name: str) -> int:
        """A token amount ("2.50") into base units; one clear error otherwise."""
        try:
            return Money.parse(text, self.decimals).amount
        except InvalidRequest as exc:
            raise InvalidRequest(f"{name}: {exc}") from None

    # -- budget -------------------------------------------------------------------------

    def set_budget(self, amount: int | str | None) -> None:
        self.budget = None if amount is None else (amount if isinstance(amount, int) else self.parse(amount, "budget"))
        if self.budget is not None and self.budget <= 0:
            raise InvalidRequest("the session budget must be above 0")

    def committed(self) -> int:
        """Base units tied up by live clusters, rents under way, and what closed leases cost."""
        with self._lock:
            live = sum(c.leaser.committed for c in self.clusters)
            return live + self._reserved + self._closed_elsewhere_cost()

    def spent(self) -> int:
        with self._lock:
            return sum(c.spent() for c in self.clusters) + self._closed_elsewhere_cost()

    def _closed_elsewhere_cost(self) -> int:
        """Cost of settled leases not already counted by a live cluster's own receipts."""
        counted = {r.lease_id for c in self.clusters for r in c.leaser.receipts}
        return sum(r.cost for r in self.receipts if r.lease_id not in counted)

    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self.committed()

    def account_committed(self) -> int | None:
        """What every kernel of this account has committed in the cap period (None without a store)."""
        if self.store is None:
            return None
        return self.store.account_committed(self.client.chain_id, self.client.market.address, self.client.address,
                                            self._cap_since())

    @staticmethod
    def _cap_since() -> float:
        return time.time() - float(config("cap-period-days")) * 86_400

    def meter(self) -> dict:
        """The live spending meter: spent, committed and remaining, for the session and the account.

        >>> session.meter()                                              # doctest: +SKIP
        {'spent': 1250, 'committed': 2900000, 'cap': 5000000, 'remaining': 2100000, 'account': {...}}
        """
        committed = self.committed()
        out = {"spent": self.spent(), "committed": committed, "cap": self.budget,
               "remaining": None if self.budget is None else max(0, self.budget - committed)}
        account = self.account_committed()
        out["account"] = {"committed": account, "cap": self.account_cap,
                          "remaining": None if self.account_cap is None or account is None
                          else max(0, self.account_cap - account)}
        return out

    def check_budget(self, request: RentRequest) -> None:
        """Refuse, before any transaction, a request the session budget (or class cap) cannot cover."""
        if self.class_id:
            left = self.client.allowance_of(self.class_id)["remaining"]
            if request.commitment > left:
                raise InsufficientFunds(
                    f"this request may commit {self.money(request.commitment).short()} but your class allowance has "
                    f"{self.money(left).short()} left; ask for less or ask the instructor to raise your cap"
                )
        remaining = self.remaining()
        if remaining is not None and request.commitment > remaining:
            raise InsufficientFunds(
                f"this request may commit {self.money(request.commitment).short()} but the session has "
                f"{self.money(max(remaining, 0)).short()} of its {self.money(self.budget).short()} budget left; "
                "lower --budget/--hours/--gpus or raise the session budget (%gpumarket budget)"
            )
        account = self.account_committed()
        if self.account_cap is not None and account is not None and request.commitment > self.account_cap - account:
            raise self._over_account_cap(request, account)

    def _over_account_cap(self, request: RentRequest, committed: int) -> InsufficientFunds:
        left = max(0, self.account_cap - committed)
        return InsufficientFunds(
            f"this request may commit {self.money(request.commitment).short()} but the account has "
            f"{self.money(left).short()} of its {self.money(self.account_cap).short()} cap left (all kernels, last "
            f"{config('cap-period-days')} days); lower --budget/--hours/--gpus, release a lease, or raise "
            "gpumarket.account-cap"
        )

    @contextlib.contextmanager
    def _reservation(self, request: RentRequest):
        """Check the caps and reserve the request's commitment in one step; free it when the rent ends.

        Threads of this kernel serialise on the session lock; other kernels on the store's
        ``BEGIN IMMEDIATE`` transaction. The reservation ends once the cluster (whose leases
        then count themselves) is in ``self.clusters``, or when the rent fails.
        """
        amount = request.commitment
        with self._lock:
            self.check_budget(request)
            reservation = None
            if self.account_cap is not None and self.store is not None:
                reservation, committed = self.store.reserve(
                    chain_id=self.client.chain_id, market=self.client.market.address, tenant=self.client.address,
                    amount=amount, cap=self.account_cap, since=self._cap_since())
                if reservation is None:
                    raise self._over_account_cap(request, committed)
            self._reserved += amount
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= amount
                if self.store is not None:
                    self.store.unreserve(reservation)

    # -- clusters -----------------------------------------------------------------------

    def find(self, request: RentRequest):
        """A running cluster of this session that fits, else one a previous kernel left live (re-attached)."""
        with self._lock:
            for cluster in self.clusters:
                if cluster.status.name == "running" and request.fits(cluster):
                    return cluster
        return self._reattach(request)

    def _reattach(self, request: RentRequest):
        if self.store is None:
            return None
        from .cluster.leased import LeasedCluster

        chain_id, market = self.client.chain_id, self.client.market.address
        clusters: dict[str, list[dict]] = {}
        for row in self.store.live_leases(chain_id, market):
            clusters.setdefault(row["cluster"], []).append(row)
        mine = {c.name for c in self.clusters}
        for name, rows in clusters.items():
            record = self.store.cluster(name)
            if name in mine or record is None or record["tenant"] != self.client.address:
                continue
            try:
                cluster = LeasedCluster.from_lease(rows[0]["lease_id"], market=self.client, store=self.store,
                                                   holder_interval=float(config("holder-interval")))
            except GpuMarketError:
                continue  # its leases ended meanwhile; the store now says so
            if request.fits(cluster):
                with self._lock:
                    self.clusters.append(cluster)
                self.start_watchdog()
                return cluster
            cluster.detach()  # another kernel's cluster that does not fit: leave its leases alone
        return None

    def rent(self, request: RentRequest, on_bid=None, reuse: bool = True):
        """A running cluster for the request: a live one that fits, else a new auction."""
        if reuse:
            found = self.find(request)
            if found is not None:
                return found
        with self._reservation(request):
            cluster = self._new_cluster(request, on_bid)
            with self._lock:
                self.clusters.append(cluster)
        self.start_watchdog()
        return cluster

    def _new_cluster(self, request: RentRequest, on_bid):
        from .cluster.leased import LeasedCluster

        budget = request.commitment if request.budget is None else request.budget
        return LeasedCluster(
            gpus=request.gpus,
            gpu=request.gpu,
            max_price=request.max_price,
            hours=request.hours,
            budget=budget,
            market=self.client,
            min_memory_gib=request.min_vram,
            region=request.region,
            window=request.window,
            select=request.select,
            partial=request.partial,
            on_bid=on_bid,
            heartbeat_timeout=float(config("heartbeat-timeout")),
            class_id=self.class_id,
            store=self.store,
            attest=request.attest,
            packages=PackageSet.parse(request.packages),
            holder_interval=float(config("holder-interval")),
        )

    def start_watchdog(self) -> None:
        """Start this account's watchdog unless one runs (``gpumarket.watchdog: false``: never)."""
        if self.store is None or not config("watchdog") or not self.connection:
            return
        from .watchdog import ensure_running

        ensure_running(self)

    def release(self, target=None) -> list[Receipt]:
        """Release one cluster, one lease id, or everything (``None``)."""
        with self._lock:
            if target is None:
                targets = list(self.clusters)
            elif isinstance(target, int):
                targets = [c for c in self.clusters if target in c.leaser.leases]
                if not targets:
                    receipt = self.release_detached(target)
                    self.receipts.append(receipt)
                    return [receipt]
                receipt = targets[0].leaser.release(target)
                self.receipts.append(receipt)
                return [receipt]
            else:
                targets = [target]
            out = []
            for cluster in targets:
                cluster.close()
                out.extend(cluster.receipts)
                self.clusters.remove(cluster)
            self.receipts.extend(out)
            return out

    def release_detached(self, lease_id: int) -> Receipt:
        """Close a live lease of this account that no cluster here holds (an earlier kernel's, say).

        Used by the watchdog and the server extension, which never held the Dask cluster:
        the chain is the authority, the store is brought in line afterwards.
        """

        lease = self.client.lease(lease_id)
        if lease.status != DealStatus.ACTIVE:
            raise NotFound(f"lease {lease_id} is not live (it is {lease.status.name.lower()}); see %gpumarket leases")
        order = self.client.order(lease.order_id)
        if order.tenant != self.client.address:
            raise NotFound(f"lease {lease_id} is not a lease of {self.client.address}; see %gpumarket leases")
        tx = self.client.close_lease(lease_id)
        receipt = receipt_from_chain(self.client, lease_id, tx_hashes=(tx.hash,))
        if self.store is not None:
            self.store.settle_lease(self.client.chain_id, self.client.market.address, lease_id,
                                    {**receipt.__dict__, "tx_hashes": list(receipt.tx_hashes)})
        return receipt

    def settle_closed(self, cluster_name: str) -> list[Receipt]:
        """Bring this session's view of a cluster in line after its leases were closed elsewhere
        (the watchdog, the sidebar): closed leases are settled without a transaction, and a
        cluster left with none is dropped. Returns the receipts of the leases settled here."""
        with self._lock:
            cluster = next((c for c in self.clusters if c.name == cluster_name), None)
        if cluster is None:
            return []
        closed = [i for i in list(cluster.leaser.leases) if self.client.lease(i).status != DealStatus.ACTIVE]
        receipts = [cluster.leaser.release(i) for i in closed]  # no transaction: the chain says closed
        with self._lock:
            self.receipts.extend(receipts)
            if not cluster.leaser.leases:
                self.clusters.remove(cluster)
                cluster.close()
        return receipts

    # -- looking around -------------------------------------------------------------------

    def leases(self) -> list[dict]:
        """Live leases of this session's clusters."""
        now = int(time.time())
        rows = []
        for cluster in self.clusters:
            for handle in cluster.leaser.leases.values():
                lease = handle.lease
                rows.append({
                    "lease": lease.id,
                    "provider": handle.provider.id,
                    "gpu": handle.provider.claim.gpu_model,
                    "gpus": lease.gpus,
                    "price_per_gpu_hour": lease.price_per_gpu_hour,
                    "elapsed_s": max(0, now - lease.started_at),
                    "spent": lease.accrued_at(now),
                    "cluster": cluster.name,
                    "attached": True,
                })
        if self.store is not None:  # live leases an earlier kernel left: re-attachable
            attached = {r["lease"] for r in rows}
            for rec in self.store.live_leases(self.client.chain_id, self.client.market.address):
                if rec["lease_id"] in attached:
                    continue
                lease = self.client.lease(rec["lease_id"])
                if lease.status != DealStatus.ACTIVE:
                    continue
                rows.append({
                    "lease": lease.id, "provider": lease.provider_id, "gpu": "", "gpus": lease.gpus,
                    "price_per_gpu_hour": lease.price_per_gpu_hour, "elapsed_s": max(0, now - lease.started_at),
                    "spent": lease.accrued_at(now), "cluster": rec["cluster"], "attached": False,
                })
        return rows

    def estimate(self, request: RentRequest, recent: int = 20):
        """Likely providers, recent winning prices, expected wait and cost of ``request``; sends nothing.

        See :mod:`jupyter_gpumarket.market.estimates`.
        """
        from .market.estimates import estimate

        return estimate(self.client, request.spec, request.hours, recent)

    def offers(self, recent_orders: int = 20) -> list[dict]:
        """Registered providers with their hardware, reputation and recent bid prices."""
        bids: dict[int, list[int]] = {}
        for ev in self.client.get_logs("BidPlaced")[-recent_orders * 5:]:
            bids.setdefault(ev["providerId"], []).append(ev["pricePerGpuHour"])
        rows = []
        for p in self.client.providers():
            prices = bids.get(p.id, [])
            rows.append({
                "provider": p.id,
                "gpu": p.claim.gpu_model,
                "gpus": p.claim.gpu_count,
                "memory_gib": p.claim.memory_gib,
                "tflops": p.claim.tflops,
                "region": p.region,
                "active": p.active,
                "reliability": round(p.reliability, 3),
                "last_price": prices[-1] if prices else None,
                "min_price": min(prices) if prices else None,
            })
        return rows

    def history(self) -> list[Receipt]:
        """Every settled lease of this account, from the chain (survives kernel restarts)."""
        me = self.client.address
        mine = {ev["orderId"] for ev in self.client.get_logs("OrderCreated", tenant=me)}
        out = []
        for ev in self.client.get_logs("LeaseCreated"):
            if ev["orderId"] not in mine:
                continue
            lease = self.client.lease(ev["leaseId"])
            if lease.status in (DealStatus.CLOSED, DealStatus.REJECTED):
                out.append(receipt_from_chain(self.client, lease.id))
        return out

    def close(self) -> None:
        self.release(None)
