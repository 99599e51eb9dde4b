"""Heartbeats: a provider's signed statement that its workers for a lease are alive.

Signed with the provider's chain key as EIP-712 typed data for the market
contract, so the tenant can check them locally and the contract can check the
last one when the tenant closes a lease whose provider went silent
(``closeLeaseAtHeartbeat``: payment stops at that heartbeat).

>>> from jupyter_gpumarket.chain.accounts import Signer
>>> provider = Signer.from_key("0x" + "22" * 32)
>>> domain = HeartbeatDomain(chain_id=31337, market="0x" + "11" * 20)
>>> hb = Heartbeat(lease_id=7, seq=1, timestamp=1_700_000_000, gpu_util_bps=9_500)
>>> signed = hb.sign(provider, domain)
>>> signed.signer(domain) == provider.address
True
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data

from ..errors import NotAuthorized

HEARTBEAT_TYPES = {
    "Heartbeat": [
        {"name": "leaseId", "type": "uint256"},
        {"name": "seq", "type": "uint64"},
        {"name": "timestamp", "type": "uint64"},
        {"name": "gpuUtilBps", "type": "uint16"},
    ]
}


@dataclass(frozen=True)
class HeartbeatDomain:
    """The EIP-712 domain of one deployed market."""

    chain_id: int
    market: str

    def as_dict(self) -> dict:
        return {"name": "GpuMarket", "version": "1", "chainId": self.chain_id, "verifyingContract": self.market}


@dataclass(frozen=True)
class Heartbeat:
    lease_id: int
    seq: int
    timestamp: int  # unix seconds, provider's clock
    gpu_util_bps: int = 0  # GPU utilisation in basis points (10_000 = 100%)

    def message(self) -> dict:
        return {"leaseId": self.lease_id, "seq": self.seq, "timestamp": self.timestamp, "gpuUtilBps": self.gpu_util_bps}

    def as_tuple(self) -> tuple[int, int, int, int]:
        """The contract's ``Heartbeat`` struct."""
        return (self.lease_id, self.seq, self.timestamp, self.gpu_util_bps)

    def sign(self, signer, domain: HeartbeatDomain) -> "SignedHeartbeat":
        signature = signer.sign_typed_data(domain.as_dict(), HEARTBEAT_TYPES, self.message()).signature
        return SignedHeartbeat(self, bytes(signature))


@dataclass(frozen=True)
class SignedHeartbeat:
    heartbeat: Heartbeat
    signature: bytes

    def signer(self, domain: HeartbeatDomain) -> str:
        encoded = encode_typed_data(domain.as_dict(), HEARTBEAT_TYPES, self.heartbeat.message())
        return Account.recover_message(encoded, signature=self.signature)

    def to_json(self) -> dict:
        return {**asdict(self.heartbeat), "signature": "0x" + self.signature.hex()}

    @classmethod
    def from_json(cls, data: dict) -> "SignedHeartbeat":
        hb = Heartbeat(int(data["lease_id"]), int(data["seq"]), int(data["timestamp"]), int(data.get("gpu_util_bps", 0)))
        return cls(hb, bytes.fromhex(str(data["signature"]).removeprefix("0x")))


class HeartbeatMonitor:
    """Tenant-side check of one lease's heartbeat stream.

    Accepts only heartbeats signed by the lease's provider, for this lease,
    with a sequence number above the last one (replays and forgeries are refused),
    and keeps the last good one for ``closeLeaseAtHeartbeat``.
    """

    def __init__(self, lease_id: int, provider: str, domain: HeartbeatDomain, max_skew: float = 60.0) -> None:
        self.lease_id = lease_id
        self.provider = provider
        self.domain = domain
        self.max_skew = max_skew  # seconds a provider's clock may run ahead of ours
        self.last: SignedHeartbeat | None = None

    def accept(self, signed: SignedHeartbeat) -> Heartbeat:
        hb = signed.heartbeat
        if hb.lease_id != self.lease_id:
            raise NotAuthorized(f"heartbeat is for lease {hb.lease_id}, not {self.lease_id}")
        try:
            signer = signed.signer(self.domain)
        except Exception:
            raise NotAuthorized(f"heartbeat for lease {self.lease_id} has a malformed signature") from None
        if signer != self.provider:
            raise NotAuthorized(f"heartbeat for lease {self.lease_id} signed by {signer}, not its provider {self.provider}")
        if hb.timestamp > time.time() + self.max_skew:
            raise NotAuthorized(f"heartbeat for lease {self.lease_id} is stamped {hb.timestamp}, in the future")
        if self.last is not None and hb.seq <= self.last.heartbeat.seq:
            raise NotAuthorized(f"heartbeat seq {hb.seq} replays an old one (last was {self.last.heartbeat.seq})")
        self.last = signed
        return hb

    @property
    def last_timestamp(self) -> int | None:
        return self.last.heartbeat.timestamp if self.last else None
