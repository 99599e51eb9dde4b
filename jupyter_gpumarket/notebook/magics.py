"""IPython magics: ``%%gpurent`` and ``%gpumarket``, thin over :mod:`jupyter_gpumarket.session`.

    %load_ext jupyter_gpumarket
    %gpumarket connect --devnet
    %gpumarket budget 20

    %%gpurent --gpus 2 --gpu "H100|A100" --max-price 3.00 --hours 1 --budget 5
    df = dd.read_parquet("data/").groupby("zone").fare.mean().compute()   # runs on the leased GPUs

Refusals (bad flags, a budget the session cannot cover, no chain) print one
``UsageError`` line and move no money; errors in the cell body are the user's
and show as usual.

``%%gpurent --packages "scikit-learn==1.7.2 ..."`` (or ``--packages auto``: the
distributions behind what the notebook namespace imports, or ``--requirements
FILE``) has the workers built with those packages; a provider that cannot
answers with its reason. ``%%gpurent --dry-run`` prints what the cell would order
and spend and sends nothing; ``%gpumarket offers --gpus 2 --gpu H100`` adds the
availability, price, wait and cost estimate for such a request.
"""

from __future__ import annotations

import contextlib
import shlex
import time

from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.display import display

from ..errors import GpuMarketError
from ..session import RentRequest, Session, config
from .receipts import CellReceipt, LeaseLine
from .widgets import BidBoard, BudgetMeter, LeaseCard, NoticeWatcher


@magics_class
class GpuMarketMagics(Magics):
    def __init__(self, shell=None) -> None:
        super().__init__(shell)
        self.session: Session | None = None
        self._clients: dict[str, object] = {}  # cluster name -> distributed.Client
        self._cards: dict[str, LeaseCard] = {}
        self._notices: NoticeWatcher | None = None  # the watchdog's warnings, shown as they come
        self._meter: BudgetMeter | None = None

    # -- %%gpurent ----------------------------------------------------------------------

    @magic_arguments()
    @argument("--gpus", type=int, default=None, help="GPUs to lease (default gpumarket.gpus)")
    @argument("--gpu", default=None, help="regular expression over GPU models, e.g. 'A100|H100'")
    @argument("--min-vram", type=int, default=None, help="minimum GPU memory in GiB")
    @argument("--region", default=None, help="provider region")
    @argument("--max-price", default=None, help="max price per GPU-hour in tokens, e.g. 3.00")
    @argument("--hours", type=float, default=None, help="lease duration in hours")
    @argument("--budget", default=None, help="most this cluster may spend, in tokens")
    @argument("--window", type=int, default=None, help="seconds providers have to bid")
    @argument("--select", choices=["cost", "price"], default=None, help="selection rule")
    @argument("--attest", action="store_true", default=None,
              help="check each provider's hardware at lease start; failures are refunded and re-leased")
    @argument("--packages", default=None,
              help="requirements the workers need, space-separated ('auto': what this notebook imports)")
    @argument("--requirements", default=None, help="a lock file of requirements the workers need")
    @argument("--spot-check", type=float, default=None, metavar="RATE",
              help="re-run this fraction of the cell's Dask tasks here (e.g. 0.05); a wrong result opens a dispute")
    @argument("--dry-run", action="store_true", help="print what would be ordered and spent; send nothing")
    @argument("--keep", dest="release", action="store_false", default=False,
              help="keep the lease for later cells (default)")
    @argument("--release", dest="release", action="store_true", help="release the lease after this cell")
    @cell_magic
    def gpurent(self, line: str, cell: str):
        """Lease GPUs (or reuse a live lease that fits) and run the cell on them."""
        request, release = self._request(line)
        session = self._session()
        args = self._parse(self.gpurent, line)
        if args.dry_run:
            return self._call(lambda: print(self._dry_run(session, request)))
        checker = None
        if args.spot_check is not None:  # refused before anything is ordered
            from ..verify.spotcheck import SpotChecker

            checker = self._call(lambda: SpotChecker(args.spot_check))
        cluster = self._call(lambda: self._cluster_for(session, request))
        if self._notices is None or self._notices.session is not session:
            self._notices = NoticeWatcher(session, on_released=self._released_elsewhere)
        self._notices.start()
        client = self._client_for(cluster)
        started, started_wall = time.monotonic(), int(time.time())
        if checker is not None:
            cluster.spot_checker = checker
        with client.as_current(), cluster.spot_checked(client) if checker else contextlib.nullcontext():
            self.shell.run_cell(cell)  # the body's own errors show as usual
        if checker is not None:
            print(checker.summary())
        receipt = self._call(
            lambda: self._cell_receipt(session, cluster, started_wall, time.monotonic() - started, release)
        )
        self.shell.user_ns["_gpurent"] = receipt  # like `_`: the last %%gpurent cell's receipt
        display(receipt.bundle(), raw=True)

    def _cluster_for(self, session: Session, request: RentRequest):
        cluster = session.find(request)
        if cluster is not None:
            return cluster
        session.check_budget(request)  # refuse before any transaction
        board = BidBoard(session.money)
        board.display()
        cluster = session.rent(request, on_bid=board.add, reuse=False)
        card = LeaseCard(cluster, session.money, on_release=lambda c=cluster: self._release_cluster(c))
        self._cards[cluster.name] = card
        card.display()
        return cluster

    # -- %gpumarket -----------------------------------------------------------------------

    @magic_arguments()
    @argument("command", choices=["connect", "offers", "leases", "release", "budget", "history", "devnet"])
    @argument("value", nargs="?", default=None, help="release: lease id or 'all'; budget: amount; devnet: up|down")
    @argument("--devnet", action="store_true", help="connect: use the recorded devnet")
    @argument("--rpc", default=None, help="connect: JSON-RPC URL")
    @argument("--market", default=None, help="connect: GpuMarket address")
    @argument("--keystore", default=None, help="connect: keystore file (password from GPUMARKET_KEYSTORE_PASSWORD)")
    @argument("--account", default=None, help="connect --devnet: which devnet account")
    @argument("--providers", type=int, default=3, help="devnet up: provider agents to start")
    @argument("--class-id", type=int, default=None, help="connect: pay from this class pool (classroom mode)")
    @argument("--gpus", type=int, default=None, help="offers: estimate for this many GPUs")
    @argument("--gpu", default=None, help="offers: estimate for GPUs matching this pattern, e.g. 'H100'")
    @argument("--min-vram", type=int, default=None, help="offers: estimate for at least this much GPU memory (GiB)")
    @argument("--hours", type=float, default=None, help="offers: estimate for this many hours (default 1)")
    @line_magic
    def gpumarket(self, line: str):
        """Market commands: connect, offers, leases, release, budget, history, devnet up|down."""
        args = self._parse(self.gpumarket, line)
        handler = getattr(self, f"_cmd_{args.command}")
        return self._call(lambda: handler(args))

    def _cmd_connect(self, args) -> None:
        self.session = Session.connect(devnet=args.devnet or None, rpc_url=args.rpc, market=args.market,
                                       keystore=args.keystore, account=args.account, class_id=args.class_id)
        client = self.session.client
        print(f"connected to chain {client.chain_id}, market {client.market.address}, as {client.address}; "
              f"balance {self.session.money(client.balance()).short()}")
        if self.session.class_id:
            allowance = client.allowance_of(self.session.class_id)
            print(f"class {self.session.class_id}: {self.session.money(allowance['remaining']).short()} "
                  f"of your {self.session.money(allowance['cap']).short()} cap left")

    def _cmd_offers(self, args) -> None:
        session = self._session()
        print(f"{'provider':>8}  {'GPU':<26}{'GPUs':>5}{'GiB':>5}{'TFLOPS':>8}  {'last price':>12}  reliability")
        for row in session.offers():
            price = session.money(row["last_price"]).short() if row["last_price"] is not None else "-"
            print(f"{row['provider']:>8}  {row['gpu'][:25]:<26}{row['gpus']:>5}{row['memory_gib']:>5}"
                  f"{row['tflops']:>8.0f}  {price:>12}  {row['reliability']:.2f}")
        if any(v is not None for v in (args.gpus, args.gpu, args.min_vram, args.hours)):
            request = RentRequest(gpus=args.gpus or 1, gpu=args.gpu or "", min_vram=args.min_vram or 0,
                                  hours=args.hours or 1.0)
            est = session.estimate(request)
            print(f"\nestimate for {request.gpus} GPU(s) matching {request.gpu or 'any model'!r} "
                  f"for {request.hours:g} h:")
            print("\n".join(_estimate_lines(est, lambda amount: session.money(amount).short())))

    def _cmd_leases(self, args) -> None:
        session = self._session()
        rows = session.leases()
        if not rows:
            print("no live leases")
        for r in rows:
            where = "" if r["attached"] else f" (left by an earlier kernel in cluster {r['cluster']}; " \
                                             "a matching %%gpurent re-attaches)"
            print(f"lease {r['lease']}: provider {r['provider']} {r['gpus']}x {r['gpu']} at "
                  f"{session.money(r['price_per_gpu_hour']).short()}/GPU-h, {r['elapsed_s']} s, "
                  f"spent {session.money(r['spent']).short()}{where}")

    def _cmd_release(self, args) -> None:
        session = self._session()
        if args.value in (None, "all"):
            for name in list(self._clients):
                self._close_client(name)
            receipts = session.release(None)
        else:
            try:
                lease_id = int(args.value)
            except ValueError:
                raise UsageError(f"release takes a lease id or 'all', not {args.value!r}") from None
            receipts = session.release(lease_id)
        for r in receipts:
            print(f"released lease {r.lease_id}: paid {session.money(r.cost)}, refunded {session.money(r.refunded)}")
        if not receipts:
            print("nothing to release")

    def _cmd_budget(self, args) -> None:
        session = self._session()
        if args.value is not None:
            session.set_budget(args.value)
        if self._meter is not None:
            self._meter.stop()  # one ticking meter is enough
        self._meter = BudgetMeter(session)
        self._meter.display()  # spent, committed, remaining: live in Jupyter, one line elsewhere

    def _cmd_history(self, args) -> None:
        session = self._session()
        receipts = session.history()
        if not receipts:
            print("no settled leases yet")
        for r in receipts:
            print(f"lease {r.lease_id}: provider {r.provider_id}, {r.gpus} GPU(s) at "
                  f"{session.money(r.price_per_gpu_hour).short()}/GPU-h, {r.seconds} s, "
                  f"cost {session.money(r.cost)}")

    def _cmd_devnet(self, args) -> None:
        from ..chain.devnet import Devnet, DevnetParams

        if args.value == "up":
            net = Devnet.up(params=DevnetParams(providers=args.providers), detach=True)
            net.start_agents(detach=True)
            net.wait_for_providers(args.providers)
            print(f"devnet up at {net.info.rpc_url} with {args.providers} provider agents")
        elif args.value == "down":
            Devnet.load().down()
            print("devnet stopped")
        else:
            raise UsageError("use %gpumarket devnet up or %gpumarket devnet down")

    # -- helpers ---------------------------------------------------------------------------

    def _parse(self, magic, line: str):
        """Parse like a shell (quotes removed), refusing with one UsageError line."""
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"invalid arguments {line!r}: {exc}") from None
        try:
            return magic.parser.parse_args(argv)
        except UsageError as exc:
            raise UsageError(f"invalid arguments: {exc}; see %{magic.__name__}?") from None
        except SystemExit:  # argparse's way of refusing
            raise UsageError(f"invalid arguments: {line!r}; see %{magic.__name__}?") from None

    def _request(self, line: str) -> tuple[RentRequest, bool]:
        args = self._parse(self.gpurent, line)
        session = self._session()

        def pick(value, key):
            return config(key) if value is None else value

        try:
            request = RentRequest(
                gpus=pick(args.gpus, "gpus"),
                gpu=pick(args.gpu, "gpu"),
                min_vram=pick(args.min_vram, "min-vram"),
                region=pick(args.region, "region"),
                max_price=session.parse(pick(args.max_price, "max-price"), "--max-price"),
                hours=float(pick(args.hours, "hours")),
                budget=session.parse(args.budget, "--budget") if args.budget is not None else None,
                window=int(pick(args.window, "window")),
                select=pick(args.select, "select"),
                partial=config("partial"),
                attest=bool(pick(args.attest, "attest")),
                packages=self._packages(args),
            )
        except GpuMarketError as exc:
            raise UsageError(str(exc)) from None
        return request, args.release

    def _packages(self, args) -> tuple[str, ...]:
        from ..cluster.environment import PackageSet

        found = PackageSet()
        if args.requirements:
            found = found | PackageSet.from_requirements_file(args.requirements)
        if args.packages == "auto":
            found = found | PackageSet.from_namespace(self.shell.user_ns)
        elif args.packages:
            found = found | PackageSet.parse(args.packages)
        return found.requirements

    def _dry_run(self, session: Session, request: RentRequest) -> str:
        """What ``%%gpurent`` would do for ``request``, from the chain's recent events; no transaction."""
        money = lambda amount: session.money(amount).short()  # noqa: E731
        est = session.estimate(request)
        try:
            session.check_budget(request)
            cap = "passes" + (f" (session budget {money(session.budget)}, {money(session.committed())} committed)"
                              if session.budget is not None else " (no session budget set)")
        except GpuMarketError as exc:
            cap = f"would be refused: {exc}"
        balance = session.client.balance()
        lines = [
            "dry run: nothing was sent to the chain",
            f"request: {request.gpus} GPU(s) matching {request.gpu or 'any model'!r}, {request.hours:g} h, "
            f"max {money(request.max_price)}/GPU-h, {request.window} s bidding window",
            f"deposit: {money(request.commitment)} into escrow (the most this cell can spend); wallet holds "
            f"{money(balance)}" + ("" if balance >= request.commitment else " -- NOT ENOUGH"),
            f"cap check: {cap}",
        ]
        for offer in est.likely_providers()[:5]:
            price = money(offer.typical_price) + "/GPU-h" if offer.typical_price is not None else "no price yet"
            lines.append(f"likely provider {offer.provider_id}: {offer.gpus}x {offer.gpu_model}, {price}")
        lines += _estimate_lines(est, money)
        if request.packages:
            lines.append(f"packages for the workers: {' '.join(request.packages)}")
        return "\n".join(lines)

    def _session(self) -> Session:
        if self.session is None:
            self.session = self._call(Session.connect)
        return self.session

    @staticmethod
    def _call(fn):
        try:
            return fn()
        except GpuMarketError as exc:
            raise UsageError(str(exc)) from None

    def _client_for(self, cluster):
        from distributed import Client

        client = self._clients.get(cluster.name)
        if client is None or client.status != "running":
            client = Client(cluster, set_as_default=True)
            self._clients[cluster.name] = client
        return client

    def _close_client(self, name: str) -> None:
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()
        card = self._cards.pop(name, None)
        if card is not None:
            card.stop()

    def _released_elsewhere(self, name: str) -> None:
        """The watchdog released this cluster's leases: settle them here and drop its client."""
        session = self._session()
        session.settle_closed(name)
        if all(c.name != name for c in session.clusters):
            self._close_client(name)

    def _release_cluster(self, cluster) -> None:
        self._close_client(cluster.name)
        if cluster in self._session().clusters:
            self._session().release(cluster)

    def _cell_receipt(self, session: Session, cluster, started: int, wall: float, release: bool) -> CellReceipt:
        """What each lease accrued during the cell (the contract's formula), or its final bill if released."""
        handles = list(cluster.leaser.leases.values())
        receipts, refunded, lines = {}, 0, []
        if release:
            self._close_client(cluster.name)
            receipts = {r.lease_id: r for r in session.release(cluster)}
        now = int(time.time())
        for h in handles:
            lease = h.lease
            before = lease.accrued_at(started)
            if h.id in receipts:
                r = receipts[h.id]
                ended = session.client.lease(h.id).ends_at
                cost, status, hashes, refunded = r.cost - before, "closed", r.tx_hashes, refunded + r.refunded
            else:
                ended, status, hashes = now, "active", tuple(h.tx_hashes)
                cost = lease.accrued_at(now) - before
            seconds = max(0, min(ended, lease.ends_at) - max(started, lease.started_at))
            lines.append(LeaseLine(h.id, h.provider.id, h.provider.claim.gpu_model, lease.gpus,
                                   lease.price_per_gpu_hour, seconds * lease.gpus, cost, status, hashes))
        return CellReceipt(session.client.chain_id, session.client.market.address, session.client.token_symbol(),
                           session.decimals, wall, lines, refunded)


def _estimate_lines(est, money) -> list[str]:
    """The estimate's price, wait and cost as lines, saying so where the chain has no data yet."""
    price = (f"{money(est.expected_price)}/GPU-h (median of {len(est.recent_prices) or 'recent'} {est.price_source})"
             if est.expected_price is not None else "no data yet")
    wait = (f"{est.expected_wait_s} s until {est.spec.count} GPU(s) were offered (median of {len(est.wait_samples)} "
            f"of {est.orders_seen} recent orders), then the bidding window" if est.expected_wait_s is not None
            else "no data yet")
    cost = f"{money(est.estimated_cost)} for {est.hours:g} h" if est.estimated_cost is not None else "no data yet"
    return [f"matching providers: {len(est.providers)} with {est.capacity} GPUs",
            f"expected price: {price}", f"expected wait: {wait}", f"estimated cost: {cost}",
            *(f"note: {n}" for n in est.notes)]


def current_session() -> Session:
    """The session the magics use in this kernel (connecting on first use)."""
    from IPython import get_ipython

    shell = get_ipython()
    magics = shell.magics_manager.registry.get("GpuMarketMagics") if shell else None
    if magics is None:
        raise UsageError("run %load_ext jupyter_gpumarket first")
    return magics._session()


def load_ipython_extension(ipython) -> None:
    ipython.register_magics(GpuMarketMagics)


def unload_ipython_extension(ipython) -> None:
    """Unloading releases this session's leases: nothing keeps paying for a kernel that let go."""
    magics = ipython.magics_manager.registry.get("GpuMarketMagics")
    if magics is not None and magics.session is not None:
        for name in list(magics._clients):
            magics._close_client(name)
        magics.session.close()
