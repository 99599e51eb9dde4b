"""The market's vocabulary: plain dataclasses, no I/O.

Every amount is an ``int`` in the payment token's base units (a 6-decimal
dollar: ``2_500_000`` is $2.50). :class:`Money` only formats and parses.
Prices are per GPU-hour; what a lease accrues is
``price * gpus * seconds // 3600``, as the contract computes it.

>>> Money.parse("2.50", decimals=6)
Money(amount=2500000, decimals=6, symbol='TUSD')
>>> str(Money(2_500_000))
'2.500000 TUSD'
>>> accrued(price_per_gpu_hour=3_600_000, gpus=2, seconds=10)
20000
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from .errors import InvalidRequest

SECONDS_PER_HOUR = 3600


def accrued(price_per_gpu_hour: int, gpus: int, seconds: int) -> int:
    """Base units a lease owes after ``seconds``, rounded down (the contract's rule)."""
    return price_per_gpu_hour * gpus * seconds // SECONDS_PER_HOUR


@dataclass(frozen=True, order=True)
class Money:
    """An integer amount of a token with its decimals, for display and parsing."""

    amount: int
    decimals: int = 6
    symbol: str = "TUSD"

    def __post_init__(self) -> None:
        if not isinstance(self.amount, int) or isinstance(self.amount, bool):
            raise TypeError(f"Money.amount must be an int of base units, got {type(self.amount).__name__}")

    @classmethod
    def parse(cls, text: str | int | Decimal, decimals: int = 6, symbol: str = "TUSD") -> "Money":
        """Parse a decimal string such as ``"2.5"`` exactly; refuse sub-unit precision."""
        try:
            value = Decimal(str(text).strip().lstrip("$"))
        except InvalidOperation:
            raise InvalidRequest(f"{text!r} is not an amount; write it like 2.50") from None
        scaled = value.scaleb(decimals)
        if scaled != scaled.to_integral_value():
            raise InvalidRequest(f"{text!r} has more than {decimals} decimals; round it to {decimals} places")
        if scaled < 0:
            raise InvalidRequest(f"{text!r} is negative; amounts must be zero or more")
        return cls(int(scaled), decimals, symbol)

    def to_decimal(self) -> Decimal:
        return Decimal(self.amount).scaleb(-self.decimals)

    def __str__(self) -> str:
        return f"{self.to_decimal():.{self.decimals}f} {self.symbol}"

    def short(self) -> str:
        """Two-decimal display, e.g. ``$2.50`` for dollar-like tokens."""
        return f"{self.to_decimal():,.2f} {self.symbol}"


@dataclass(frozen=True)
class GpuSpec:
    """What a tenant asks for. ``model`` is a regular expression over GPU names."""

    count: int = 1
    model: str = ""
    min_memory_gib: int = 0
    region: str = ""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InvalidRequest(f"GpuSpec.count is {self.count}; ask for at least 1 GPU")
        if self.min_memory_gib < 0:
            raise InvalidRequest("GpuSpec.min_memory_gib must be zero or more")
        try:
            re.compile(self.model)
        except re.error as exc:
            raise InvalidRequest(f"GpuSpec.model {self.model!r} is not a valid pattern: {exc}") from None

    def matches(self, claim: "HardwareClaim", region: str = "") -> bool:
        """Whether a provider's hardware (and region) fits this spec."""
        if self.model and not re.search(self.model, claim.gpu_model, re.IGNORECASE):
            return False
        if claim.memory_gib < self.min_memory_gib:
            return False
        return not self.region or self.region.lower() == region.lower()


@dataclass(frozen=True)
class HardwareClaim:
    """What a provider says it has; verified later by attestation."""

    gpu_model: str
    gpu_count: int
    memory_gib: int
    tflops: float  # dense throughput claimed, TFLOPS

    @property
    def tflops_x100(self) -> int:
        return round(self.tflops * 100)


class DealStatus(enum.IntEnum):
    """Mirror of the contract's ``DealStatus``: a bid, and the lease it became."""

    NONE = 0
    BID = 1
    BID_WITHDRAWN = 2
    ACTIVE = 3
    CLOSED = 4
    REJECTED = 5


@dataclass(frozen=True)
class Provider:
    id: int
    owner: str
    stake: int
    claim: HardwareClaim
    active: bool
    open_leases: int = 0
    open_disputes: int = 0
    leases_completed: int = 0
    leases_rejected: int = 0
    disputes_lost: int = 0
    unstake_ready_at: int = 0
    leases_dropped: int = 0  # closed at the provider's last heartbeat (its workers went silent)
    region: str = ""
    endpoint: str = ""

    @property
    def reliability(self) -> float:
        """Share of finished leases that were not rejected, dropped or lost in dispute (Laplace-smoothed)."""
        bad = self.leases_rejected + self.disputes_lost + self.leases_dropped
        return (self.leases_completed + 1) / (self.leases_completed + bad + 2)


@dataclass(frozen=True)
class Order:
    id: int
    tenant: str
    spec: GpuSpec
    max_price_per_gpu_hour: int
    duration: int  # seconds
    bidding_ends_at: int  # unix time
    deposit: int  # at creation
    escrow: int = 0  # not yet given to a lease
    gpus_leased: int = 0
    open: bool = True
    tenant_cert_fingerprint: bytes = b""
    class_id: int = 0  # paid from a class pool when not 0


@dataclass(frozen=True)
class Bid:
    id: int
    order_id: int
    provider_id: int
    price_per_gpu_hour: int
    gpus: int
    cert_fingerprint: bytes = b""
    endpoint: str = ""
    status: DealStatus = DealStatus.BID


@dataclass(frozen=True)
class Lease:
    id: int  # the accepted bid's id
    order_id: int
    provider_id: int
    price_per_gpu_hour: int
    gpus: int
    deposit: int
    started_at: int
    ends_at: int
    withdrawn: int = 0
    status: DealStatus = DealStatus.ACTIVE
    disputed: bool = False

    def accrued_at(self, now: int) -> int:
        """What the lease owes its provider at unix time ``now`` (capped by the deposit)."""
        seconds = max(0, min(now, self.ends_at) - self.started_at)
        return min(accrued(self.price_per_gpu_hour, self.gpus, seconds), self.deposit)


@dataclass(frozen=True)
class Receipt:
    """What one lease cost, with the transactions that prove it."""

    lease_id: int
    provider_id: int
    price_per_gpu_hour: int
    gpus: int
    seconds: int
    paid_to_provider: int
    fee: int
    refunded: int
    chain_id: int
    tx_hashes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cost(self) -> int:
        return self.paid_to_provider + self.fee

    @property
    def gpu_seconds(self) -> int:
        return self.gpus * self.seconds
