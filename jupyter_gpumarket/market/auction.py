"""The tenant's side of the reverse auction.

Selection is a pure function over ``spec`` objects (:func:`select_bids`);
:func:`request_gpus` runs it against the chain: create the order with the
tenant's CA fingerprint, gather bids for the window (streaming each to a
callback), select, accept, and refund what no lease needs.

Default rule: lowest *expected cost to complete*, i.e. price per unit of
throughput, discounted by reliability — a fast GPU at a higher hourly price
often finishes the job for less. ``rule="price"`` takes the lowest hourly price.

``bid_filter`` lets the caller pass over bidders before anything is accepted
(the tenant asks each whether it can run the cluster's package set); when every
bid is refused that way the order is closed, the deposit refunded, and the
bidders' refusal raised.

>>> from jupyter_gpumarket.spec import Bid, HardwareClaim, Provider
>>> fast = Provider(1, "0xA", 0, HardwareClaim("H100", 8, 80, 989.0), True)
>>> slow = Provider(2, "0xB", 0, HardwareClaim("RTX 4090", 2, 24, 165.0), True)
>>> bids = [Bid(1, 1, 1, 2_900_000, 1), Bid(2, 1, 2, 900_000, 1)]
>>> [b.id for b in select_bids(bids, {1: fast, 2: slow}, gpus=1).accepted]
[1]
>>> [b.id for b in select_bids(bids, {1: fast, 2: slow}, gpus=1, rule="price").accepted]
[2]
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

from ..errors import GpuMarketError, InsufficientFunds, InvalidRequest, WrongState
from ..spec import SECONDS_PER_HOUR, Bid, GpuSpec, Lease, Provider

Rule = Literal["cost", "price"]
PartialPolicy = Literal["accept", "cancel"]


class NoBids(WrongState):
    """No acceptable bid arrived in the window; the order was closed and the deposit refunded."""

    def __init__(self, order_id: int, message: str) -> None:
        self.order_id = order_id
        super().__init__(message)


class OverBudget(InsufficientFunds):
    """Even the cheapest suitable bid costs more than the budget allows."""

    def __init__(self, cheapest_per_hour: int, budget: int, message: str) -> None:
        self.cheapest_per_hour = cheapest_per_hour
        self.budget = budget
        super().__init__(message)


class PartialFill(WrongState):
    """Fewer GPUs were offered than asked, and the caller chose to cancel; deposit refunded."""

    def __init__(self, offered: int, wanted: int) -> None:
        self.offered, self.wanted = offered, wanted
        super().__init__(
            f"only {offered} of {wanted} GPUs were offered; the order was cancelled and the deposit refunded "
            "(pass partial='accept' to take what there is)"
        )


def throughput(provider: Provider, measured_tflops: dict[int, float] | None = None) -> float:
    """Per-GPU TFLOPS: the attested measurement when there is one, else the claim."""
    if measured_tflops and provider.id in measured_tflops:
        return measured_tflops[provider.id]
    return provider.claim.tflops


def cost_score(bid: Bid, provider: Provider, measured_tflops: dict[int, float] | None = None) -> float:
    """Expected cost per unit of work: price / (throughput x reliability). Lower is better."""
    speed = throughput(provider, measured_tflops) * provider.reliability
    return bid.price_per_gpu_hour / speed if speed > 0 else float("inf")


@dataclass(frozen=True)
class Selection:
    accepted: list[Bid]
    gpus: int
    wanted: int
    cost_per_hour: int  # base units per hour for all accepted GPUs
    passed_over: dict[int, str] = field(default_factory=dict)  # bid id -> why not taken

    @property
    def complete(self) -> bool:
        return self.gpus >= self.wanted


def select_bids(
    bids: Iterable[Bid],
    providers: dict[int, Provider],
    gpus: int,
    spec: GpuSpec | None = None,
    rule: Rule = "cost",
    budget: int | None = None,
    hours: float = 1.0,
    measured_tflops: dict[int, float] | None = None,
) -> Selection:
    """Choose bids to fill ``gpus``: best first by ``rule``, whole bids only, within ``budget``.

    Ties go to the lower price, then to the earlier bid. A bid from a provider whose
    hardware does not match ``spec`` (checked against its on-chain claim) is passed over.
    """
    if rule not in ("cost", "price"):
        raise InvalidRequest(f"unknown selection rule {rule!r}; use 'cost' or 'price'")
    passed: dict[int, str] = {}
    candidates = []
    for bid in bids:
        provider = providers.get(bid.provider_id)
        if provider is None:
            passed[bid.id] = "unknown provider"
        elif spec is not None and not spec.matches(provider.claim, provider.region):
            passed[bid.id] = f"hardware {provider.claim.gpu_model} does not match the spec"
        else:
            candidates.append((bid, provider))

    def key(item: tuple[Bid, Provider]):
        bid, provider = item
        primary = cost_score(bid, provider, measured_tflops) if rule == "cost" else bid.price_per_gpu_hour
        return (primary, bid.price_per_gpu_hour, bid.id)

    accepted: list[Bid] = []
    taken = cost_per_hour = 0
    for bid, _ in sorted(candidates, key=key):
        if taken >= gpus:
            passed[bid.id] = "enough GPUs already"
            continue
        if taken + bid.gpus > gpus:
            passed[bid.id] = f"offers {bid.gpus} GPUs, only {gpus - taken} still wanted"
            continue
        hourly = bid.price_per_gpu_hour * bid.gpus
        if budget is not None and (cost_per_hour + hourly) * hours > budget:
            passed[bid.id] = "over budget"
            continue
        accepted.append(bid)
        taken += bid.gpus
        cost_per_hour += hourly
    return Selection(accepted, taken, gpus, cost_per_hour, passed)


@dataclass
class AuctionResult:
    order_id: int
    leases: list[Lease]
    bids: list[Bid]
    selection: Selection
    tx_hashes: list[str] = field(default_factory=list)
    seconds_bidding: float = 0.0
    seconds_chain: float = 0.0


def request_gpus(
    client,
    spec: GpuSpec,
    max_price: int,
    hours: float,
    budget: int,
    cert_fingerprint: bytes,
    window: int = 5,
    rule: Rule = "cost",
    partial: PartialPolicy = "accept",
    on_bid: Callable[[Bid, Provider | None], None] | None = None,
    measured_tflops: dict[int, float] | None = None,
    poll_interval: float = 0.1,
    exclude_providers: Iterable[int] = (),
    class_id: int = 0,
    bid_filter: Callable[[Bid], GpuMarketError | None] | None = None,
) -> AuctionResult:
    """Run one auction on chain and return the leases made.

    Refusals that can be known before ordering (a pattern no provider's GPU matches,
    a budget below one hour at the max price when nothing cheaper can exist) raise
    before any money moves; after the window, an order that cannot be served is
    closed and its deposit refunded before the error is raised.
    """
    _check_request(spec, max_price, hours, budget, window)
    providers = {p.id: p for p in client.providers()}
    if spec.model and not any(spec.matches(p.claim, p.region) for p in providers.values() if p.active):
        known = sorted({p.claim.gpu_model for p in providers.values() if p.active})
        raise InvalidRequest(
            f"no registered provider has a GPU matching {spec.model!r} with the memory/region asked; "
            f"known GPUs: {', '.join(known) or 'none'}"
        )
    duration = int(hours * SECONDS_PER_HOUR)
    deposit = min(budget, max_price * spec.count * duration // SECONDS_PER_HOUR)
    started = time.monotonic()
    if class_id:
        remaining = client.allowance_of(class_id)["remaining"]
        if deposit > remaining:
            raise InsufficientFunds(f"class {class_id} lets this account draw {remaining} more but the order needs "
                                    f"{deposit}; ask the instructor to raise the cap, or ask for less")
    elif client.allowance() < deposit:
        client.approve(deposit)
    order_tx = client.create_order(spec, max_price, duration, window, deposit, cert_fingerprint, class_id=class_id)
    order_id = order_tx.result
    hashes = [order_tx.hash]
    chain_seconds = time.monotonic() - started

    bids = _gather_bids(client, order_id, client.order(order_id).bidding_ends_at, providers, on_bid, poll_interval)
    bidding_seconds = time.monotonic() - started - chain_seconds

    t0 = time.monotonic()
    excluded = set(exclude_providers)
    eligible = [b for b in bids if b.provider_id not in excluded]
    refusals = _filter_bids(eligible, bid_filter)
    eligible = [b for b in eligible if b.id not in refusals]
    selection = select_bids(eligible, providers, spec.count, spec, rule, budget, hours, measured_tflops)
    try:
        if not eligible and refusals:
            raise next(iter(refusals.values()))
        _refuse_unservable(order_id, eligible, selection, spec, budget, hours, partial)
    except GpuMarketError:
        hashes.append(client.close_order(order_id).hash)
        raise
    accept_tx = client.accept_bids(order_id, [b.id for b in selection.accepted])
    hashes.append(accept_tx.hash)
    hashes.append(client.close_order(order_id).hash)  # refund escrow no lease needs
    leases = [client.lease(lease_id) for lease_id in accept_tx.result]
    return AuctionResult(
        order_id, leases, bids, selection, hashes, bidding_seconds, chain_seconds + time.monotonic() - t0
    )


def _filter_bids(bids: list[Bid], bid_filter) -> dict[int, GpuMarketError]:
    """``{bid id: refusal}`` for the bids ``bid_filter`` turns down, asked of all bidders at once."""
    if bid_filter is None or not bids:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(bids))) as pool:
        answers = list(pool.map(bid_filter, bids))
    return {bid.id: answer for bid, answer in zip(bids, answers) if answer is not None}


def _check_request(spec: GpuSpec, max_price: int, hours: float, budget: int, window: int) -> None:
    for name, value in (("max_price", max_price), ("budget", budget)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise InvalidRequest(f"{name} must be a positive int of base units, got {value!r}")
    if hours <= 0:
        raise InvalidRequest(f"hours is {hours}; lease for more than 0 hours")
    if window <= 0:
        raise InvalidRequest(f"window is {window}; give providers at least 1 second to bid")


def _gather_bids(client, order_id, ends_at, providers, on_bid, poll_interval) -> list[Bid]:
    """Collect bids until the window closes on the chain's clock, streaming each new one."""
    seen: dict[int, Bid] = {}
    while True:
        for bid in client.bids(order_id):
            if bid.id not in seen:
                seen[bid.id] = bid
                if bid.provider_id not in providers:
                    providers[bid.provider_id] = client.provider(bid.provider_id)
                if on_bid is not None:
                    on_bid(bid, providers.get(bid.provider_id))
        if client.now() >= ends_at or _wall_past(ends_at):
            break
        time.sleep(poll_interval)
    return [b for b in client.bids(order_id)]  # still live at the close of the window


def _wall_past(ends_at: int) -> bool:
    # Anvil mines on demand: its latest block may lag the wall clock while no one transacts.
    return time.time() >= ends_at


def _refuse_unservable(order_id, bids, selection, spec, budget, hours, partial) -> None:
    if not bids:
        raise NoBids(order_id, f"no provider bid on order {order_id} within the window at or under your max price; "
                     "raise the max price, widen the GPU pattern, or lengthen the window")
    if not selection.accepted:
        over = [b for b in bids if selection.passed_over.get(b.id) == "over budget"]
        if over:
            cheapest = min(b.price_per_gpu_hour * b.gpus for b in over)
            raise OverBudget(cheapest, budget, f"the cheapest suitable bid costs {cheapest} per hour but the budget is "
                             f"{budget} for {hours} h; raise the budget or shorten the lease")
        reasons = "; ".join(sorted(set(selection.passed_over.values())))
        raise NoBids(order_id, f"no bid on order {order_id} fits the request ({reasons}); the deposit was refunded")
    if not selection.complete and partial == "cancel":
        raise PartialFill(selection.gpus, spec.count)
