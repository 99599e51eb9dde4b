"""Availability and price estimates before ordering, read from the chain's own events.

For a request (GPU count, model pattern, memory, region, hours):

- **matching providers**: active registered providers whose on-chain hardware
  claim matches (:meth:`GpuSpec.matches`), with their recent bid prices;
- **recent winning prices**: ``LeaseCreated`` prices of those providers over the
  last ``recent`` leases (oldest first);
- **expected price**: the median (lower middle) of those winning prices, else of
  their recent bids, else unknown;
- **expected wait**: for each of the last ``recent`` orders, seconds from the
  ``OrderCreated`` block to the block of the bid by a matching provider that brought
  the GPUs offered up to the requested count (the *k-th* bid); the median of those;
- **estimated cost**: the contract's formula at the expected price,
  ``price x gpus x seconds // 3600`` in base units.

Anything without data says so (``None`` plus a note) instead of guessing.

    >>> median_low([3, 1, 2, 10])
    2
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median_low

from ..errors import InvalidRequest
from ..spec import SECONDS_PER_HOUR, GpuSpec

__all__ = ["Estimate", "ProviderOffer", "estimate", "median_low"]


@dataclass(frozen=True)
class ProviderOffer:
    """A matching provider and what it asked and won recently (base units per GPU-hour)."""

    provider_id: int
    gpu_model: str
    gpus: int
    memory_gib: int
    region: str
    reliability: float
    recent_bids: tuple[int, ...] = ()
    recent_wins: tuple[int, ...] = ()

    @property
    def typical_price(self) -> int | None:
        prices = self.recent_wins or self.recent_bids
        return median_low(prices) if prices else None


@dataclass(frozen=True)
class Estimate:
    """What a request would likely get, cost and wait for; ``None`` where the chain has no data yet."""

    spec: GpuSpec
    hours: float
    providers: tuple[ProviderOffer, ...]
    recent_prices: tuple[int, ...]  # winning prices of matching providers, oldest first
    expected_price: int | None
    price_source: str  # "winning bids", "bids" or "no data"
    wait_samples: tuple[int, ...]  # seconds to the k-th matching bid, per recent order that got there
    orders_seen: int
    expected_wait_s: int | None
    estimated_cost: int | None
    notes: tuple[str, ...] = field(default=())

    @property
    def capacity(self) -> int:
        """GPUs the matching providers have registered in all."""
        return sum(p.gpus for p in self.providers)

    def likely_providers(self) -> list[ProviderOffer]:
        """Matching providers, cheapest typical price first (those without prices last)."""
        return sorted(self.providers, key=lambda p: (p.typical_price is None, p.typical_price or 0, p.provider_id))


def estimate(client, spec: GpuSpec, hours: float, recent: int = 20, from_block: int = 0) -> Estimate:
    """Estimate from events since ``from_block``: the last ``recent`` leases and orders count."""
    if hours <= 0:
        raise InvalidRequest(f"hours is {hours}; estimate for more than 0 hours")
    if recent < 1:
        raise InvalidRequest(f"recent is {recent}; look at 1 or more recent orders")
    providers = {p.id: p for p in client.providers() if p.active and spec.matches(p.claim, p.region)}
    bids = client.get_logs("BidPlaced", from_block=from_block)
    leases = [ev for ev in client.get_logs("LeaseCreated", from_block=from_block)
              if ev["providerId"] in providers][-recent:]
    offers = tuple(
        ProviderOffer(
            p.id, p.claim.gpu_model, p.claim.gpu_count, p.claim.memory_gib, p.region, round(p.reliability, 3),
            tuple(b["pricePerGpuHour"] for b in bids if b["providerId"] == p.id)[-recent:],
            tuple(ev["pricePerGpuHour"] for ev in leases if ev["providerId"] == p.id),
        )
        for p in providers.values()
    )
    notes = []
    recent_prices = tuple(ev["pricePerGpuHour"] for ev in leases)
    matching_bids = [b["pricePerGpuHour"] for b in bids if b["providerId"] in providers][-recent:]
    if not providers:
        notes.append("no registered provider matches this GPU, memory and region")
    if recent_prices:
        expected, source = median_low(recent_prices), "winning bids"
    elif matching_bids:
        expected, source = median_low(matching_bids), "bids"
        notes.append("no winning bids yet from matching providers; the price is the median of their bids")
    else:
        expected, source = None, "no data"
        if providers:
            notes.append("no bids yet from matching providers: no price data")
    waits, orders_seen = _waits_to_kth_bid(client, spec.count, set(providers), bids, recent, from_block)
    if not waits:
        notes.append(f"no recent order got {spec.count} GPU(s) offered by matching providers: no wait data"
                     if orders_seen else "no orders yet: no wait data")
    duration = int(hours * SECONDS_PER_HOUR)
    cost = expected * spec.count * duration // SECONDS_PER_HOUR if expected is not None else None
    return Estimate(spec, hours, offers, recent_prices, expected, source, tuple(waits), orders_seen,
                    median_low(waits) if waits else None, cost, tuple(notes))


def _waits_to_kth_bid(client, gpus: int, providers: set[int], bids: list[dict], recent: int,
                      from_block: int) -> tuple[list[int], int]:
    """Seconds from each recent order to the matching bid that made ``gpus`` available; and orders looked at."""
    orders = client.get_logs("OrderCreated", from_block=from_block)[-recent:]
    by_order: dict[int, list[dict]] = {}
    for bid in bids:
        by_order.setdefault(bid["orderId"], []).append(bid)
    timestamps: dict[int, int] = {}

    def block_time(number: int) -> int:
        if number not in timestamps:
            timestamps[number] = client.w3.eth.get_block(number)["timestamp"]
        return timestamps[number]

    waits = []
    for order in orders:
        offered, bidders = 0, set()
        for bid in by_order.get(order["orderId"], []):  # oldest first, as get_logs returns them
            if bid["providerId"] not in providers or bid["providerId"] in bidders:
                continue  # a re-bid (undercutting) offers no new GPUs
            bidders.add(bid["providerId"])
            offered += bid["gpus"]
            if offered >= gpus:
                waits.append(block_time(bid["blockNumber"]) - block_time(order["blockNumber"]))
                break
    return waits, len(orders)
