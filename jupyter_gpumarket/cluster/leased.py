"""`LeasedCluster`: GPUs from the market as a Dask cluster users already know::

    cluster = LeasedCluster(gpus=2, gpu="A100|H100", max_price="3.00", hours=1, budget="10", market=tenant)
    client = Client(cluster)      # mutual TLS, handled out of sight
    cluster.scale(4)              # lease 2 more GPUs
    cluster.close()               # release: paid what accrued, rest refunded

One worker per leased GPU. ``scale(n)`` runs another auction or releases
leases; ``adapt(minimum, maximum)`` does so on load, never beyond the budget;
``close()`` settles every lease and keeps the receipts in ``cluster.receipts``.
A provider that stops sending heartbeats is closed out at its last one and
its GPUs are leased again; Dask recomputes what its workers held.
With a lease store, the cluster marks itself as held by this process every
``holder_interval`` seconds, so the tenant's watchdog can tell a live kernel
from a dead one (see :mod:`jupyter_gpumarket.watchdog`).

The auction and the TLS handover live in :mod:`jupyter_gpumarket.market.tenant`
(this module reaches up to it for its default leaser; see DESIGN notes).
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
from decimal import Decimal

from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from tornado.ioloop import PeriodicCallback

from ..errors import GpuMarketError, InvalidRequest, NotFound
from .environment import PackageSet
from ..spec import GpuSpec, Money

logger = logging.getLogger(__name__)


def to_base_units(value: int | str | Decimal, decimals: int, name: str) -> int:
    """Ints are base units already; strings and Decimals are token amounts ("2.50")."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{name} must be an amount, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        raise InvalidRequest(f"{name}={value!r} is a float; pass a string like '{value}' or an int of base units")
    return Money.parse(value, decimals).amount


class LeasedCluster(Cluster):
    """A Dask cluster made of GPUs leased on the market.

    Parameters
    ----------
    gpus: GPUs (= workers) to lease at start.
    gpu: regular expression over GPU model names ("A100|H100"); "" takes any.
    max_price: per GPU-hour, token amount as a string ("3.00") or int base units.
    hours: lease duration.
    budget: most this cluster may ever commit, same units as ``max_price``.
    market: a :class:`~jupyter_gpumarket.chain.MarketClient` with the tenant's account.
    window: seconds providers have to bid; select: "cost" (expected cost to complete) or "price".
    partial: "accept" what is offered, or "cancel" (refund) when fewer GPUs are offered.
    class_id: pay from this class pool within the account's allowance (classroom mode).
    store: a :class:`~jupyter_gpumarket.history.LeaseStore` to record leases in, so another
        kernel can re-attach with :meth:`from_lease`.
    attest: check every lease's hardware (inventory and a timed, seeded benchmark) within the
        attestation grace period; a lease that fails is rejected with a full refund and re-leased.
    spot_check: fraction of tasks (e.g. 0.05) that :meth:`spot_checked` re-runs locally; a lease
        caught returning a wrong result gets a dispute on chain with the provider's signed receipt.
    packages: what the workers need beyond the provider's environment: a
        :class:`~jupyter_gpumarket.cluster.environment.PackageSet` or requirement strings
        (``["scikit-learn==1.7.2"]``); providers that cannot build it are passed over, and if
        none can, the error carries their reason and no money moves.
    """

    def __init__(
        self,
        gpus: int = 1,
        gpu: str = "",
        max_price: int | str = "3.00",
        hours: float = 1.0,
        budget: int | str = "10",
        *,
        market,
        min_memory_gib: int = 0,
        region: str = "",
        window: int = 5,
        select: str = "cost",
        partial: str = "accept",
        on_bid=None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 6.0,
        worker_timeout: float = 60.0,
        class_id: int = 0,
        store=None,
        attest: bool = False,
        spot_check: float = 0.0,
        packages=None,
        holder_interval: float = 3.0,
        asynchronous: bool = False,
        loop=None,
        name: str | None = None,
        leaser=None,
    ) -> None:
        super().__init__(asynchronous=asynchronous, loop=loop, name=name)
        if leaser is None:
            from ..market.tenant import TenantLeaser  # the market sits above the cluster layer

            decimals = market.token_decimals()
            leaser = TenantLeaser(
                market,
                GpuSpec(gpus, gpu, min_memory_gib, region),
                to_base_units(max_price, decimals, "max_price"),
                hours,
                to_base_units(budget, decimals, "budget"),
                window=window,
                rule=select,
                partial=partial,
                on_bid=on_bid,
                heartbeat_timeout=heartbeat_timeout,
                class_id=class_id,
                name=self.name,
                store=store,
                attest=attest,
                packages=packages if isinstance(packages, PackageSet) or packages is None
                else PackageSet.parse(packages),
            )
        self.leaser = leaser
        self.market = leaser.client
        self._initial_gpus = gpus
        self._heartbeat_interval = heartbeat_interval
        self._holder_interval = holder_interval
        self._worker_timeout = worker_timeout
        self._checking = False
        self._detaching = False  # detach(): close the Dask side, keep the leases
        self.failures: list[str] = []
        self.spot_checker = None
        if spot_check:
            from ..verify.spotcheck import SpotChecker  # verify sits beside the market, above this layer

            self.spot_checker = SpotChecker(spot_check)
        if not self.asynchronous:
            self._loop_runner.start()
            self.sync(self._start)

    # -- Dask Cluster API -----------------------------------------------------------

    @property
    def security(self):
        """The tenant's client credentials; ``Client(cluster)`` picks them up."""
        return self.leaser.security

    @property
    def receipts(self):
        return list(self.leaser.receipts)

    async def _start(self) -> None:
        if self.status == Status.running:
            return
        self.status = Status.starting
        try:
            if self.leaser.scheduler_address is None:  # a re-attached cluster has its leases already
                await asyncio.to_thread(self.leaser.lease, self._initial_gpus)
            self.scheduler_comm = rpc(
                self.leaser.scheduler_address, connection_args=self.security.get_connection_args("client")
            )
            await super()._start()
            await self._wait_for_workers(self.leaser.gpus, timeout=self._worker_timeout)
        except BaseException:
            await asyncio.to_thread(self.leaser.release_all)
            self.status = Status.failed
            raise
        callback = PeriodicCallback(self._check_heartbeats, self._heartbeat_interval * 1000)
        self.periodic_callbacks["heartbeats"] = callback
        callback.start()
        if self.leaser.store is not None:  # "this kernel still holds the cluster", for the watchdog
            await self._mark_holder()
            holder = PeriodicCallback(self._mark_holder, self._holder_interval * 1000)
            self.periodic_callbacks["holder"] = holder
            holder.start()
        self.status = Status.running

    @classmethod
    def from_lease(cls, lease_id: int, *, market, store=None, **kwargs) -> "LeasedCluster":
        """Re-attach to the live cluster that lease ``lease_id`` belongs to (e.g. after a kernel restart).

        No order is made: the leases, scheduler and CA come from the lease history store.
        """
        from ..history import LeaseStore
        from ..market.tenant import TenantLeaser

        store = store or LeaseStore()
        record = store.lease(market.chain_id, market.market.address, lease_id)
        if record is None:
            raise NotFound(f"lease {lease_id} is not in this machine's lease history; it cannot be re-attached here")
        leaser = TenantLeaser.restore(market, store, record["cluster"],
                                      heartbeat_timeout=kwargs.pop("heartbeat_timeout", 6.0))
        return cls(gpus=leaser.gpus, market=market, leaser=leaser, name=record["cluster"], **kwargs)

    def __await__(self):
        async def _():
            if self.status == Status.created:
                await self._start()
            return self

        return _().__await__()

    def scale(self, n: int) -> None:
        """Have ``n`` GPUs (one worker each): lease more, or release the dearest leases."""
        if n < 0:
            raise InvalidRequest(f"cannot scale to {n} GPUs; use 0 or more")
        return self.sync(self._scale, n)

    async def _scale(self, n: int) -> None:
        have = self.leaser.gpus
        if n > have:
            allowed = self.leaser.max_gpus_in_budget()
            if n > allowed:
                raise InvalidRequest(f"scaling to {n} GPUs exceeds the budget (it affords {allowed}); raise the budget")
            await asyncio.to_thread(self.leaser.lease, n - have)
            await self._wait_for_workers(self.leaser.gpus, timeout=self._worker_timeout)
        elif n < have:
            for lease_id in self.leaser.pick_for_release(have - n):
                await asyncio.to_thread(self.leaser.release, lease_id)

    def adapt(self, minimum: int = 0, maximum: int | None = None, **kwargs):
        """Adaptive scaling between ``minimum`` and ``maximum`` GPUs, capped by what the budget affords."""
        cap = self.leaser.max_gpus_in_budget()
        maximum = cap if maximum is None else min(maximum, cap)
        # A lease takes a bidding window to arrive; do not thrash on every tick.
        kwargs.setdefault("wait_count", 5)
        kwargs.setdefault("interval", "2s")
        return super().adapt(minimum=minimum, maximum=maximum, **kwargs)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        for name in ("heartbeats", "holder"):
            callback = self.periodic_callbacks.pop(name, None)
            if callback:
                callback.stop()
        await super()._close()
        if not self._detaching:
            await asyncio.to_thread(self.leaser.release_all)
        self.leaser.close()
        if self.leaser.store is not None:
            if not self._detaching:
                self.leaser.store.close_cluster(self.name)
            self.leaser.store.drop_holder(self.name, os.getpid())

    def detach(self) -> None:
        """Let go of this cluster without releasing its leases: they stay live on chain and in the
        lease history, for another kernel to re-attach or for the watchdog to settle."""
        self._detaching = True
        self.close()

    # -- liveness ---------------------------------------------------------------------

    async def _mark_holder(self) -> None:
        try:
            await asyncio.to_thread(self.leaser.store.touch_holder, self.name, os.getpid())
        except Exception as exc:  # a busy or unwritable store must not stop the cluster
            logger.warning("could not mark cluster %s as held: %s", self.name, exc)

    async def _check_heartbeats(self) -> None:
        if self._checking or self.status != Status.running:
            return
        self._checking = True
        try:
            closed = await asyncio.to_thread(self.leaser.check_heartbeats)
            for lease_id in closed:
                self.failures.append(f"lease {lease_id}: provider went silent; closed at its last heartbeat")
        except GpuMarketError as exc:
            self.failures.append(str(exc))
            logger.error("%s", exc)
        finally:
            self._checking = False

    # -- display ----------------------------------------------------------------------

    def spent(self) -> int:
        return self.leaser.spent()

    def spot_checked(self, client):
        """``with cluster.spot_checked(client): x.compute()`` spot-checks every ``dask.compute`` inside;
        reports in ``cluster.spot_checker.reports``, disputes opened in ``.disputes``."""
        if self.spot_checker is None:
            raise InvalidRequest("this cluster has no spot checks; create it with spot_check=0.05 (a fraction)")
        import functools

        import dask

        return dask.config.set(scheduler=functools.partial(self.leaser.spot_get, client, self.spot_checker))

    def _repr_html_(self, cluster_status=None) -> str:
        money = lambda amount: html.escape(Money(amount).short())  # noqa: E731
        rows = "".join(
            f"<tr><td>{h.id}</td><td>{h.provider.id}</td><td>{html.escape(h.provider.claim.gpu_model)}</td>"
            f"<td>{h.lease.gpus}</td><td>{money(h.lease.price_per_gpu_hour)}</td>"
            f"<td>{'scheduler + workers' if h.hosts_scheduler else 'workers'}</td></tr>"
            for h in self.leaser.leases.values()
        )
        dashboard = self.dashboard_link if self.scheduler_info.get("services", {}).get("dashboard") else None
        link = f'<p>Dashboard: <a href="{html.escape(dashboard)}">{html.escape(dashboard)}</a></p>' if dashboard else ""
        return (
            f"<div><h4>LeasedCluster {html.escape(self.name)}</h4>"
            f"<p>{self.leaser.gpus} GPUs · {money(self.leaser.hourly_rate())}/h · spent {money(self.spent())}"
            f" of {money(self.leaser.budget)}</p>{link}"
            "<table><tr><th>lease</th><th>provider</th><th>GPU</th><th>GPUs</th><th>price/GPU-h</th><th>role</th></tr>"
            f"{rows}</table></div>"
        )

    def __repr__(self) -> str:
        return (
            f"LeasedCluster({self.name!r}, {self.scheduler_address}, gpus={self.leaser.gpus}, "
            f"leases={sorted(self.leaser.leases)})"
        )
