"""How a provider prices an order: pluggable strategies, pure functions of what it sees.

A strategy returns a price per GPU-hour in token base units, or ``None`` to
sit the order out. The agent never bids above the order's max price.

>>> order_max = 3_000_000
>>> FixedFloor(2_000_000).price(order_max, MarketView())
2000000
>>> Undercut(floor=1_500_000, step=10_000).price(order_max, MarketView(best_bid=1_800_000))
1790000
>>> Undercut(floor=1_500_000).price(order_max, MarketView(best_bid=1_400_000)) is None
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidRequest


@dataclass(frozen=True)
class MarketView:
    """What a provider knows when it prices: rivals' bids on the order, its own load."""

    best_bid: int | None = None  # lowest visible bid on this order, per GPU-hour
    utilisation: float = 0.0  # share of this provider's GPUs already leased, 0..1


class PricingStrategy(Protocol):
    def price(self, max_price: int, view: MarketView) -> int | None: ...


@dataclass(frozen=True)
class FixedFloor:
    """Always ask the same price (if the order allows it)."""

    floor: int

    def __post_init__(self) -> None:
        _positive(self.floor, "floor")

    def price(self, max_price: int, view: MarketView) -> int | None:
        return self.floor if self.floor <= max_price else None


@dataclass(frozen=True)
class UtilisationBased:
    """Cheap when idle, dearer as GPUs fill up: ``floor + (ceiling-floor) * utilisation``."""

    floor: int
    ceiling: int

    def __post_init__(self) -> None:
        _positive(self.floor, "floor")
        if self.ceiling < self.floor:
            raise InvalidRequest(f"ceiling {self.ceiling} is below floor {self.floor}; raise the ceiling")

    def price(self, max_price: int, view: MarketView) -> int | None:
        load = min(max(view.utilisation, 0.0), 1.0)
        ask = self.floor + int((self.ceiling - self.floor) * load)
        return min(ask, max_price) if self.floor <= max_price else None


@dataclass(frozen=True)
class Undercut:
    """Beat the best visible bid by ``step``, never going under ``floor``; bid the max when alone."""

    floor: int
    step: int = 10_000

    def __post_init__(self) -> None:
        _positive(self.floor, "floor")
        _positive(self.step, "step")

    def price(self, max_price: int, view: MarketView) -> int | None:
        target = max_price if view.best_bid is None else min(view.best_bid - self.step, max_price)
        return target if target >= self.floor else None


def strategy_from_name(name: str, floor: int, ceiling: int | None = None) -> PricingStrategy:
    """``floor``, ``utilisation`` or ``undercut``, as the command line names them."""
    if name == "floor":
        return FixedFloor(floor)
    if name == "utilisation":
        return UtilisationBased(floor, ceiling if ceiling is not None else 2 * floor)
    if name == "undercut":
        return Undercut(floor)
    raise InvalidRequest(f"unknown pricing strategy {name!r}; choose floor, utilisation or undercut")


def _positive(value: int, name: str) -> None:
    if not isinstance(value, int) or value <= 0:
        raise InvalidRequest(f"{name} must be a positive int of base units per GPU-hour, got {value!r}")
