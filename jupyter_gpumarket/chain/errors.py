"""Solidity custom errors, decoded into named Python exceptions.

Every refusal of the contract (and the ERC-20 errors the token raises for
allowance and balance) has a class here named as in Solidity, with the
error's arguments as typed attributes and a message that says what to change:

>>> err = PriceAboveMax(price=5_000_000, max_price=4_000_000)
>>> err.price, isinstance(err, ValueError)
(5000000, True)
>>> str(err)
'bid price 5000000 is above the order max 4000000 (base units per GPU-hour); bid at or under the max'
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from eth_abi import decode as abi_decode
from eth_utils import keccak, to_checksum_address

from ..errors import GpuMarketError, InsufficientFunds, InvalidRequest, NotAuthorized, NotFound, WrongState


class ContractError(GpuMarketError):
    """A refusal decoded from a revert. Attributes carry the error's arguments."""

    template: ClassVar[str] = "{name}"

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)
        super().__init__(self.template.format(name=type(self).__name__, **fields))


_TEMPLATES: dict[str, tuple[type[GpuMarketError], str]] = {
    # -- bad requests --------------------------------------------------------
    "ZeroAddress": (InvalidRequest, "an address is zero; pass a real account address"),
    "ZeroGpus": (InvalidRequest, "the GPU count is 0; ask for or offer at least 1 GPU"),
    "ZeroDuration": (InvalidRequest, "the duration is 0; lease for at least 1 second"),
    "ZeroBiddingWindow": (InvalidRequest, "the bidding window is 0; give providers at least 1 second to bid"),
    "ZeroPrice": (InvalidRequest, "the price is 0; set a price per GPU-hour above 0"),
    "ZeroAmount": (InvalidRequest, "the amount is 0; send more than 0 base units"),
    "FeeTooHigh": (InvalidRequest, "fee {bps} bps is over the cap of {maxBps} bps; choose at most {maxBps}"),
    "StakeTooLow": (InsufficientFunds, "stake {stake} is under the minimum {minStake}; stake at least {minStake}"),
    "PriceAboveMax": (
        InvalidRequest,
        "bid price {price} is above the order max {maxPrice} (base units per GPU-hour); bid at or under the max",
    ),
    "TooManyGpus": (InvalidRequest, "{requested} GPUs asked but only {available} available; ask for {available} or fewer"),
    "DuplicateBid": (
        InvalidRequest,
        "this provider already has live bid {bidId} on order {orderId}; withdraw it before bidding again",
    ),
    "BidNotForOrder": (InvalidRequest, "bid {bidId} belongs to another order than {orderId}; accept bids of this order"),
    "EscrowExhausted": (InsufficientFunds, "order {orderId} has no escrow left for another lease; create a new order"),
    "AllowanceExceeded": (
        InsufficientFunds,
        "{student} may draw {remaining} more from class {classId} but {needed} is needed; "
        "ask the instructor to raise the cap, or ask for less",
    ),
    "EmptyReceiptRoot": (
        InvalidRequest,
        "the receipt root for lease {leaseId} is zero or covers no receipts; post the root of at least one receipt",
    ),
    "ClassFundsLow": (
        InsufficientFunds,
        "class {classId} has {balance} left but {needed} is needed; the sponsor must fund the class",
    ),
    # -- who may do it -------------------------------------------------------
    "NotClassSponsor": (NotAuthorized, "{caller} is not the sponsor of class {classId}; use the sponsor's account"),
    "NotRegistered": (NotAuthorized, "{account} is not a registered provider; register with a stake first"),
    "AlreadyRegistered": (InvalidRequest, "{account} is already provider {providerId}; use updateProvider instead"),
    "NotOrderTenant": (NotAuthorized, "{caller} is not the tenant of order {orderId}; use the tenant's account"),
    "NotBidProvider": (NotAuthorized, "{caller} did not place bid {bidId}; only its provider can withdraw it"),
    "NotLeaseTenant": (NotAuthorized, "{caller} is not the tenant of lease {leaseId}; use the tenant's account"),
    "NotLeaseParty": (
        NotAuthorized,
        "{caller} is neither tenant nor provider of lease {leaseId}; close it from the tenant's or provider's account",
    ),
    "NotLeaseProvider": (NotAuthorized, "{caller} is not the provider of lease {leaseId}; use the provider's account"),
    "OwnableUnauthorizedAccount": (NotAuthorized, "{account} is not the token's owner; mint from the deployer account"),
    "InvalidHeartbeat": (
        NotAuthorized,
        "the heartbeat for lease {leaseId} was signed by {signer}, not by its provider, or is for another lease; "
        "close with a heartbeat the provider signed for this lease",
    ),
    "AccessControlUnauthorizedAccount": (
        NotAuthorized,
        "{account} lacks role {neededRole}; ask the market admin to grant it",
    ),
    # -- missing things ------------------------------------------------------
    "OrderNotFound": (NotFound, "no order {orderId}; check the order id"),
    "BidNotFound": (NotFound, "no bid {bidId}; check the bid id"),
    "LeaseNotFound": (NotFound, "no lease {leaseId}; check the lease id"),
    "ClassNotFound": (NotFound, "no class {classId}; check the class id"),
    # -- wrong state ---------------------------------------------------------
    "ProviderInactive": (WrongState, "provider {providerId} is unstaking or inactive and cannot bid"),
    "UnstakeNotRequested": (WrongState, "provider {providerId} has not requested unstake; call requestUnstake first"),
    "UnstakeNotReady": (WrongState, "the stake unlocks at unix time {readyAt}; try again then"),
    "ProviderBusy": (
        WrongState,
        "the provider has {openLeases} open leases and {openDisputes} open disputes; settle them first",
    ),
    "OrderNotOpen": (WrongState, "order {orderId} is closed; create a new order"),
    "BiddingClosed": (
        WrongState,
        "bidding on order {orderId} ended at unix time {biddingEndedAt}; bid on an order whose window is open",
    ),
    "BidNotLive": (WrongState, "bid {bidId} is no longer live (accepted or withdrawn); pick a live bid of the order"),
    "LeaseNotActive": (
        WrongState,
        "lease {leaseId} is not active (already closed, rejected or never accepted); check its id and status",
    ),
    "LeaseEnded": (WrongState, "lease {leaseId} ended at unix time {endedAt}; start a new order instead"),
    "LeaseNotEnded": (WrongState, "lease {leaseId} runs until unix time {endsAt}; only the tenant can close it early"),
    "GracePeriodActive": (WrongState, "lease {leaseId} is in its attestation grace period until unix time {until}"),
    "GracePeriodOver": (WrongState, "lease {leaseId}'s attestation grace period ended at {endedAt}; open a dispute instead"),
    "NothingToWithdraw": (
        WrongState,
        "nothing has accrued on lease {leaseId} since the last withdrawal; withdraw again later",
    ),
    "DisputeAlreadyOpen": (WrongState, "lease {leaseId} already has an open dispute; wait for the arbiter's decision"),
    "NoOpenDispute": (WrongState, "lease {leaseId} has no open dispute; open one before resolving it"),
    "ReceiptRootAlreadyPosted": (
        WrongState,
        "lease {leaseId} already has receipt root {root}; a root is posted once per lease and cannot be replaced",
    ),
    "DisputeWindowOver": (WrongState, "lease {leaseId} closed at {closedAt}; its dispute window is over"),
    "EnforcedPause": (WrongState, "the market is paused; try again when it is unpaused"),
    "ExpectedPause": (WrongState, "the market is not paused"),
    # -- the token's refusals (OpenZeppelin ERC-20) --------------------------
    "ERC20InsufficientAllowance": (
        InsufficientFunds,
        "allowance {allowance} for {spender} is below the {needed} needed; approve at least {needed} first",
    ),
    "ERC20InsufficientBalance": (
        InsufficientFunds,
        "{sender} holds {balance} but {needed} is needed; fund the account first",
    ),
    "ERC2612ExpiredSignature": (InvalidRequest, "the permit expired at {deadline}; sign a new one"),
    "ERC2612InvalidSigner": (InvalidRequest, "the permit was signed by {signer}, not {owner}; sign with the owner's key"),
}


def snake_case(name: str) -> str:
    """``maxPrice`` -> ``max_price``: Solidity argument names as Python attributes."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _make_class(name: str, base: type[GpuMarketError], template: str) -> type[ContractError]:
    template = re.sub(r"\{(\w+)\}", lambda m: "{" + snake_case(m.group(1)) + "}", template)
    return type(name, (ContractError, base), {"template": template, "__module__": __name__})


ERRORS: dict[str, type[ContractError]] = {name: _make_class(name, *spec) for name, spec in _TEMPLATES.items()}
globals().update(ERRORS)  # so `from jupyter_gpumarket.chain.errors import PriceAboveMax` works


class UnknownRevert(ContractError, WrongState):
    template = "the transaction reverted: {reason}"


class TransactionFailed(ContractError, WrongState):
    template = "transaction {tx_hash} was mined but failed (status 0)"


class ErrorDecoder:
    """Maps revert data (selector + ABI-encoded args) to the exceptions above."""

    def __init__(self, *abis: list[dict]) -> None:
        self._by_selector: dict[bytes, tuple[str, list[str], list[str]]] = {}
        for abi in abis:
            for entry in abi:
                if entry.get("type") != "error":
                    continue
                types = [_abi_type(i) for i in entry["inputs"]]
                signature = f"{entry['name']}({','.join(types)})"
                names = [snake_case(i["name"]) for i in entry["inputs"]]
                self._by_selector[keccak(text=signature)[:4]] = (entry["name"], types, names)

    def decode(self, data: bytes | str | None, fallback: str = "") -> ContractError:
        raw = _to_bytes(data)
        found = self._by_selector.get(raw[:4]) if len(raw) >= 4 else None
        if found is None:
            return UnknownRevert(reason=fallback or (raw.hex() if raw else "no reason given"))
        name, types, names = found
        values = abi_decode(types, raw[4:])
        fields = {n: _plain(t, v) for n, t, v in zip(names, types, values)}
        cls = ERRORS.get(name)
        if cls is None:
            return UnknownRevert(reason=f"{name}({', '.join(f'{k}={v}' for k, v in fields.items())})")
        return cls(**fields)


def _abi_type(param: dict) -> str:
    if param["type"].startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in param["components"])
        return f"({inner}){param['type'][5:]}"
    return param["type"]


def _plain(abi_type: str, value: Any) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return value


def _to_bytes(data: bytes | str | None) -> bytes:
    if data is None:
        return b""
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    text = data[2:] if data.startswith("0x") else data
    try:
        return bytes.fromhex(text)
    except ValueError:
        return b""
