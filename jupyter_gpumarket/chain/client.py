"""`MarketClient`: one typed Python method per GpuMarket function.

The only module that speaks web3 to the market. Transactions are signed
locally by a :class:`~jupyter_gpumarket.chain.accounts.Signer`; every revert
is decoded into a named exception from :mod:`.errors` before anything is
sent (gas estimation runs the call first), so a refused call moves nothing.
Amounts are ``int`` base units everywhere.

Example (against a running devnet)::

    client = MarketClient.connect(rpc_url, market_address, signer=tenant)
    tx = client.create_order(GpuSpec(2, "A100|H100"), max_price_per_gpu_hour=3_000_000,
                             duration=3600, bidding_window=30, deposit=6_000_000,
                             cert_fingerprint=fp, approve=True)
    order = client.order(tx.result)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Iterable

from web3 import HTTPProvider, Web3
from web3.exceptions import ContractCustomError, ContractLogicError, ContractPanicError

from ..errors import ChainUnavailable, InvalidRequest
from ..spec import Bid, DealStatus, GpuSpec, HardwareClaim, Lease, Order, Provider
from . import contracts
from .accounts import Signer
from .errors import ERRORS, ErrorDecoder, TransactionFailed

ROLES = {name: Web3.keccak(text=name) for name in ("ARBITER_ROLE", "PAUSER_ROLE")}
ROLES["DEFAULT_ADMIN_ROLE"] = b"\x00" * 32


@dataclass(frozen=True)
class Tx:
    """A mined transaction: its hash, gas, block, decoded events and main result."""

    hash: str
    gas_used: int
    block_number: int
    events: dict[str, list[dict]] = field(default_factory=dict)
    result: Any = None

    def event(self, name: str) -> dict:
        """The single event ``name`` this transaction emitted."""
        (found,) = self.events[name]
        return found


class MarketClient:
    """Typed access to a deployed GpuMarket and its payment token.

    ``signer`` is needed for transactions only; views work without one.
    ``with_signer`` returns a client for another account sharing the connection.
    """

    def __init__(self, w3: Web3, market_address: str, signer: Signer | None = None) -> None:
        self.w3 = w3
        self.market = w3.eth.contract(address=Web3.to_checksum_address(market_address), abi=contracts.abi("GpuMarket"))
        self.token = w3.eth.contract(address=self.market.functions.token().call(), abi=contracts.abi("TestDollar"))
        self.signer = signer
        self.chain_id = w3.eth.chain_id
        self._decoder = ErrorDecoder(contracts.abi("GpuMarket"), contracts.abi("TestDollar"))
        self._topics = {ev.topic: ev for ev in (*self._events(self.market), *self._events(self.token))}
        self._lock = threading.Lock()

    # -- construction -------------------------------------------------------

    @classmethod
    def connect(
        cls,
        rpc_url: str,
        market_address: str,
        signer: Signer | None = None,
        expected_chain_id: int | None = None,
        timeout: float = 10.0,
    ) -> "MarketClient":
        w3 = Web3(HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))
        try:
            chain_id = w3.eth.chain_id
        except Exception:
            raise ChainUnavailable(f"no chain answers at {rpc_url}; start it (gpumarket devnet up) or fix the URL") from None
        if expected_chain_id is not None and chain_id != expected_chain_id:
            raise ChainUnavailable(f"{rpc_url} is chain {chain_id}, not the expected {expected_chain_id}; check the RPC URL")
        if not w3.eth.get_code(Web3.to_checksum_address(market_address)):
            raise ChainUnavailable(f"no contract at {market_address} on chain {chain_id}; deploy it or fix the address")
        return cls(w3, market_address, signer)

    def with_signer(self, signer: Signer) -> "MarketClient":
        other = object.__new__(MarketClient)
        other.__dict__.update(self.__dict__)
        other.signer = signer
        other._lock = threading.Lock()
        return other

    @property
    def address(self) -> str:
        """The signer's address."""
        return self._require_signer().address

    # -- token ----------------------------------------------------------------

    def balance(self, account: str | None = None) -> int:
        return self.token.functions.balanceOf(account or self.address).call()

    def allowance(self, owner: str | None = None) -> int:
        return self.token.functions.allowance(owner or self.address, self.market.address).call()

    def approve(self, amount: int) -> Tx:
        return self._send(self.token.functions.approve(self.market.address, _amount(amount, "amount")))

    def transfer(self, to: str, amount: int) -> Tx:
        return self._send(self.token.functions.transfer(to, _amount(amount, "amount")))

    def mint(self, to: str, amount: int) -> Tx:
        """TestDollar only: the deployer mints test money."""
        return self._send(self.token.functions.mint(to, _amount(amount, "amount")))

    def token_decimals(self) -> int:
        return self.token.functions.decimals().call()

    def token_symbol(self) -> str:
        return self.token.functions.symbol().call()

    # -- administration -------------------------------------------------------

    def set_params(self, min_stake: int, unstake_delay: int, dispute_window: int) -> Tx:
        min_stake = _amount(min_stake, "min_stake", allow_zero=True)
        return self._send(self.market.functions.setParams(min_stake, unstake_delay, dispute_window))

    def set_fee(self, bps: int, treasury: str) -> Tx:
        return self._send(self.market.functions.setFee(bps, treasury))

    def pause(self) -> Tx:
        return self._send(self.market.functions.pause())

    def unpause(self) -> Tx:
        return self._send(self.market.functions.unpause())

    def grant_role(self, role: str, account: str) -> Tx:
        return self._send(self.market.functions.grantRole(ROLES[role], account))

    def params(self) -> dict[str, int]:
        f = self.market.functions
        return {
            "min_stake": f.minStake().call(),
            "unstake_delay": f.unstakeDelay().call(),
            "attestation_grace": f.attestationGrace().call(),
            "dispute_window": f.disputeWindow().call(),
            "fee_bps": f.feeBps().call(),
        }

    # -- providers ------------------------------------------------------------

    def register_provider(
        self, claim: HardwareClaim, region: str, endpoint: str, stake: int, approve: bool = False
    ) -> Tx:
        """Register the signer as a provider; ``tx.result`` is the provider id."""
        stake = _amount(stake, "stake", allow_zero=True)
        if approve and stake:
            self.approve(stake)
        tx = self._send(self.market.functions.registerProvider(_claim(claim), region, endpoint, stake))
        return _with_result(tx, tx.event("ProviderRegistered")["providerId"])

    def update_provider(self, claim: HardwareClaim, region: str, endpoint: str) -> Tx:
        return self._send(self.market.functions.updateProvider(_claim(claim), region, endpoint))

    def add_stake(self, amount: int, approve: bool = False) -> Tx:
        if approve:
            self.approve(amount)
        return self._send(self.market.functions.addStake(_amount(amount, "amount")))

    def request_unstake(self) -> Tx:
        return self._send(self.market.functions.requestUnstake())

    def complete_unstake(self) -> Tx:
        return self._send(self.market.functions.completeUnstake())

    def provider_id_of(self, account: str | None = None) -> int:
        return self.market.functions.providerIdOf(account or self.address).call()

    def provider(self, provider_id: int) -> Provider:
        p = self.market.functions.getProvider(provider_id).call()
        (owner, open_leases, open_disputes, gpu_count, active, completed, stake, unstake_at, rejected, lost, dropped,
         mem, tflops) = p
        details = self._latest_provider_details(provider_id)
        return Provider(
            id=provider_id,
            owner=owner,
            stake=stake,
            claim=HardwareClaim(details.get("gpu_model", ""), gpu_count, mem, tflops / 100),
            active=active,
            open_leases=open_leases,
            open_disputes=open_disputes,
            leases_completed=completed,
            leases_rejected=rejected,
            disputes_lost=lost,
            leases_dropped=dropped,
            unstake_ready_at=unstake_at,
            region=details.get("region", ""),
            endpoint=details.get("endpoint", ""),
        )

    def providers(self) -> list[Provider]:
        return [self.provider(i) for i in range(1, self.market.functions.providerCount().call() + 1)]

    def _latest_provider_details(self, provider_id: int) -> dict[str, str]:
        # Strings live in events only (cheap storage); the latest event wins.
        logs = [
            *self.market.events.ProviderRegistered.get_logs(argument_filters={"providerId": provider_id}, from_block=0),
            *self.market.events.ProviderUpdated.get_logs(argument_filters={"providerId": provider_id}, from_block=0),
        ]
        if not logs:
            return {}
        last = max(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))["args"]
        return {"gpu_model": last["claim"]["gpuModel"], "region": last["region"], "endpoint": last["endpoint"]}

    # -- orders ---------------------------------------------------------------

    def create_order(
        self,
        spec: GpuSpec,
        max_price_per_gpu_hour: int,
        duration: int,
        bidding_window: int,
        deposit: int,
        cert_fingerprint: bytes = b"",
        approve: bool = False,
        permit: bool = False,
        permit_deadline: int | None = None,
        class_id: int = 0,
    ) -> Tx:
        """Open an order and move ``deposit`` into escrow; ``tx.result`` is the order id.

        ``approve=True`` sends an ERC-20 approve first; ``permit=True`` signs an
        EIP-2612 permit instead (one transaction). With ``class_id`` the deposit is
        drawn from that class's pool within this account's allowance (no token needed).
        """
        params = (
            spec.count,
            spec.min_memory_gib,
            _amount(max_price_per_gpu_hour, "max_price_per_gpu_hour", allow_zero=True),
            duration,
            bidding_window,
            _amount(deposit, "deposit", allow_zero=True),
            _bytes32(cert_fingerprint),
            spec.model,
            spec.region,
        )
        if class_id:
            tx = self._send(self.market.functions.createOrderForClass(class_id, params))
        elif permit:
            deadline = permit_deadline or self.now() + 3600
            v, r, s = self._sign_permit(deposit, deadline)
            tx = self._send(self.market.functions.createOrderWithPermit(params, deadline, v, r, s))
        else:
            if approve:
                self.approve(deposit)
            tx = self._send(self.market.functions.createOrder(params))
        return _with_result(tx, tx.event("OrderCreated")["orderId"])

    def close_order(self, order_id: int) -> Tx:
        return self._send(self.market.functions.closeOrder(order_id))

    def accept_bids(self, order_id: int, bid_ids: Iterable[int]) -> Tx:
        """Turn bids into leases; ``tx.result`` is the list of lease ids (== bid ids)."""
        tx = self._send(self.market.functions.acceptBids(order_id, list(bid_ids)))
        return _with_result(tx, [e["leaseId"] for e in tx.events.get("LeaseCreated", [])])

    def order(self, order_id: int) -> Order:
        o = self.market.functions.getOrder(order_id).call()
        tenant, max_price, class_id, gpus, gpus_leased, duration, bidding_ends_at, is_open, escrow = o
        if int(tenant, 16) == 0:
            raise ERRORS["OrderNotFound"](order_id=order_id)
        created = self.market.events.OrderCreated.get_logs(argument_filters={"orderId": order_id}, from_block=0)
        args = created[0]["args"] if created else {}
        return Order(
            id=order_id,
            tenant=tenant,
            spec=GpuSpec(gpus, args.get("gpuModel", ""), args.get("minMemoryGiB", 0), args.get("region", "")),
            max_price_per_gpu_hour=max_price,
            duration=duration,
            bidding_ends_at=bidding_ends_at,
            deposit=args.get("deposit", 0),
            escrow=escrow,
            gpus_leased=gpus_leased,
            open=is_open,
            tenant_cert_fingerprint=bytes(args.get("tenantCertFingerprint", b"")),
            class_id=class_id,
        )

    # -- classes (sponsor pools with per-student caps) ---------------------------

    def create_class(self, amount: int, approve: bool = False) -> Tx:
        """Open a class pool funded with ``amount``; ``tx.result`` is the class id."""
        amount = _amount(amount, "amount", allow_zero=True)
        if approve and amount:
            self.approve(amount)
        tx = self._send(self.market.functions.createClass(amount))
        return _with_result(tx, tx.event("ClassCreated")["classId"])

    def fund_class(self, class_id: int, amount: int, approve: bool = False) -> Tx:
        if approve:
            self.approve(amount)
        return self._send(self.market.functions.fundClass(class_id, _amount(amount, "amount")))

    def withdraw_class_funds(self, class_id: int, amount: int) -> Tx:
        return self._send(self.market.functions.withdrawClassFunds(class_id, _amount(amount, "amount")))

    def set_allowance(self, class_id: int, student: str, cap: int) -> Tx:
        return self._send(self.market.functions.setAllowance(class_id, student, _amount(cap, "cap", allow_zero=True)))

    def class_info(self, class_id: int) -> dict:
        sponsor, balance = self.market.functions.getClass(class_id).call()
        return {"class_id": class_id, "sponsor": sponsor, "balance": balance}

    def allowance_of(self, class_id: int, student: str | None = None) -> dict:
        cap, drawn = self.market.functions.allowanceOf(class_id, student or self.address).call()
        return {"cap": cap, "drawn": drawn, "remaining": max(0, cap - drawn)}

    # -- bids -------------------------------------------------------------------

    def place_bid(
        self, order_id: int, price_per_gpu_hour: int, gpus: int, cert_fingerprint: bytes = b"", endpoint: str = ""
    ) -> Tx:
        """Bid on an order; ``tx.result`` is the bid id (it becomes the lease id)."""
        price = _amount(price_per_gpu_hour, "price_per_gpu_hour", allow_zero=True)
        tx = self._send(self.market.functions.placeBid(order_id, price, gpus, _bytes32(cert_fingerprint), endpoint))
        return _with_result(tx, tx.event("BidPlaced")["bidId"])

    def withdraw_bid(self, bid_id: int) -> Tx:
        return self._send(self.market.functions.withdrawBid(bid_id))

    def bids(self, order_id: int, live_only: bool = True) -> list[Bid]:
        """Bids placed on an order, from events, with their current status."""
        out = []
        for log in self.market.events.BidPlaced.get_logs(argument_filters={"orderId": order_id}, from_block=0):
            bid = bid_from_event(log["args"])
            status = DealStatus(self.market.functions.getDeal(bid.id).call()[4])
            if live_only and status != DealStatus.BID:
                continue
            out.append(Bid(**{**bid.__dict__, "status": status}))
        return out

    def bid_of(self, order_id: int, provider_id: int) -> int:
        return self.market.functions.bidOf(order_id, provider_id).call()

    # -- leases -------------------------------------------------------------------

    def withdraw(self, lease_id: int) -> Tx:
        """Provider takes what accrued; ``tx.result`` is the gross amount (fee included)."""
        tx = self._send(self.market.functions.withdraw(lease_id))
        return _with_result(tx, tx.event("PaymentWithdrawn")["amount"])

    def close_lease(self, lease_id: int) -> Tx:
        """Settle a lease; ``tx.result`` is the LeaseClosed event's fields."""
        tx = self._send(self.market.functions.closeLease(lease_id))
        return _with_result(tx, tx.event("LeaseClosed"))

    def close_lease_at_heartbeat(self, lease_id: int, signed_heartbeat) -> Tx:
        """Close a lease whose provider went silent; payment stops at this signed heartbeat."""
        hb = signed_heartbeat.heartbeat
        tx = self._send(self.market.functions.closeLeaseAtHeartbeat(lease_id, hb.as_tuple(), signed_heartbeat.signature))
        return _with_result(tx, tx.event("LeaseClosed"))

    def top_up(self, lease_id: int, amount: int, extra_seconds: int = 0, approve: bool = False) -> Tx:
        if approve:
            self.approve(amount)
        return self._send(self.market.functions.topUp(lease_id, _amount(amount, "amount", allow_zero=True), extra_seconds))

    def reject_lease(self, lease_id: int, reason: str | bytes = b"") -> Tx:
        """Refuse the hardware within the attestation grace period: full refund."""
        tx = self._send(self.market.functions.rejectLease(lease_id, _hash(reason)))
        return _with_result(tx, tx.event("LeaseRejected")["refunded"])

    def open_dispute(self, lease_id: int, evidence: str | bytes) -> Tx:
        return self._send(self.market.functions.openDispute(lease_id, _hash(evidence)))

    def resolve_dispute(self, lease_id: int, provider_at_fault: bool, slash_amount: int = 0) -> Tx:
        slash_amount = _amount(slash_amount, "slash_amount", allow_zero=True)
        tx = self._send(self.market.functions.resolveDispute(lease_id, provider_at_fault, slash_amount))
        return _with_result(tx, tx.event("DisputeResolved")["slashed"])

    def post_receipt_root(self, lease_id: int, root: bytes | str, count: int) -> Tx:
        """Provider commits to its ``count`` execution receipts of a lease (their Merkle root), once.

        ``root`` is :meth:`verify.receipts.ReceiptBook.merkle_root`; ``tx.result`` is the root posted.
        """
        root = _root(root)
        if isinstance(count, bool) or not isinstance(count, int) or not 0 < count < 2**32:
            raise InvalidRequest(f"count must be the number of receipts under the root (1 to 2**32-1), got {count!r}")
        tx = self._send(self.market.functions.postReceiptRoot(lease_id, root, count))
        return _with_result(tx, "0x" + bytes(tx.event("ReceiptRootPosted")["root"]).hex())

    def receipt_root_of(self, lease_id: int) -> bytes | None:
        """The receipt root the lease's provider posted, or None."""
        root = bytes(self.market.functions.receiptRootOf(lease_id).call())
        return None if root == b"\x00" * 32 else root

    def lease(self, lease_id: int) -> Lease:
        """A lease's state (also for a bid not yet accepted, with zero deposit)."""
        d = self.market.functions.getDeal(lease_id).call()
        provider_id, order_id, price, gpus, status, started_at, deposit, withdrawn, ends_at, disputed = d
        if status == DealStatus.NONE:
            raise ERRORS["LeaseNotFound"](lease_id=lease_id)
        return Lease(
            id=lease_id,
            order_id=order_id,
            provider_id=provider_id,
            price_per_gpu_hour=price,
            gpus=gpus,
            deposit=deposit,
            started_at=started_at,
            ends_at=ends_at,
            withdrawn=withdrawn,
            status=DealStatus(status),
            disputed=disputed,
        )

    def accrued(self, lease_id: int) -> int:
        return self.market.functions.accrued(lease_id).call()

    def effective_end(self, lease_id: int) -> int:
        return self.market.functions.effectiveEnd(lease_id).call()

    def leases_of_order(self, order_id: int) -> list[Lease]:
        logs = self.market.events.LeaseCreated.get_logs(argument_filters={"orderId": order_id}, from_block=0)
        return [self.lease(log["args"]["leaseId"]) for log in logs]

    # -- chain -------------------------------------------------------------------

    def now(self) -> int:
        """Timestamp of the latest block (the contract's clock)."""
        return self.w3.eth.get_block("latest")["timestamp"]

    def get_logs(self, event: str, from_block: int = 0, to_block: int | str = "latest", **filters: Any) -> list[dict]:
        """Decoded logs of a market event, oldest first (``args`` plus block and tx hash)."""
        ev = getattr(self.market.events, event)
        logs = ev.get_logs(argument_filters=filters or None, from_block=from_block, to_block=to_block)
        return [
            {**log["args"], "blockNumber": log["blockNumber"], "transactionHash": "0x" + log["transactionHash"].hex()}
            for log in logs
        ]

    # -- internals -----------------------------------------------------------------

    def _require_signer(self) -> Signer:
        if self.signer is None:
            raise InvalidRequest("this client has no account; pass signer= or use with_signer()")
        return self.signer

    def _send(self, call) -> Tx:
        """Simulate (decoding any revert), then sign locally, send and wait for the receipt."""
        signer = self._require_signer()
        with self._lock:
            tx = {"from": signer.address, "chainId": self.chain_id}
            try:
                gas = call.estimate_gas(tx)
            except (ContractCustomError, ContractLogicError, ContractPanicError) as exc:
                raise self._decoder.decode(getattr(exc, "data", None), fallback=str(exc)) from None
            # The estimate runs at the latest block's timestamp; mined a second later, a close may
            # owe the provider one more transfer. Only gas used is paid, so the limit can be generous.
            tx.update(
                gas=gas * 3 // 2 + 60_000,
                nonce=self.w3.eth.get_transaction_count(signer.address, "pending"),
                maxFeePerGas=2 * self.w3.eth.get_block("latest")["baseFeePerGas"] + 1_000_000_000,
                maxPriorityFeePerGas=1_000_000_000,
            )
            signed = signer.sign_transaction(call.build_transaction(tx))
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.01)
        hash_hex = "0x" + bytes(tx_hash).hex()
        if receipt["status"] != 1:
            raise TransactionFailed(tx_hash=hash_hex)
        return Tx(hash_hex, receipt["gasUsed"], receipt["blockNumber"], self._decode_events(receipt))

    def _decode_events(self, receipt) -> dict[str, list[dict]]:
        events: dict[str, list[dict]] = {}
        for log in receipt["logs"]:
            if not log["topics"]:
                continue
            ev = self._topics.get("0x" + bytes(log["topics"][0]).hex())
            if ev is None:
                continue
            decoded = ev().process_log(log)
            events.setdefault(decoded["event"], []).append(dict(decoded["args"]))
        return events

    @staticmethod
    def _events(contract) -> list:
        return [getattr(contract.events, e["name"]) for e in contract.abi if e["type"] == "event"]

    def _sign_permit(self, value: int, deadline: int) -> tuple[int, bytes, bytes]:
        signer = self._require_signer()
        domain = {
            "name": self.token.functions.name().call(),
            "version": "1",
            "chainId": self.chain_id,
            "verifyingContract": self.token.address,
        }
        types = {
            "Permit": [
                {"name": "owner", "type": "address"},
                {"name": "spender", "type": "address"},
                {"name": "value", "type": "uint256"},
                {"name": "nonce", "type": "uint256"},
                {"name": "deadline", "type": "uint256"},
            ]
        }
        message = {
            "owner": signer.address,
            "spender": self.market.address,
            "value": value,
            "nonce": self.token.functions.nonces(signer.address).call(),
            "deadline": deadline,
        }
        sig = signer.sign_typed_data(domain, types, message)
        return sig.v, sig.r.to_bytes(32, "big"), sig.s.to_bytes(32, "big")

    def __repr__(self) -> str:
        who = self.signer.address if self.signer else "read-only"
        return f"MarketClient(chain={self.chain_id}, market={self.market.address}, account={who})"


def bid_from_event(args: dict) -> Bid:
    return Bid(
        id=args["bidId"],
        order_id=args["orderId"],
        provider_id=args["providerId"],
        price_per_gpu_hour=args["pricePerGpuHour"],
        gpus=args["gpus"],
        cert_fingerprint=bytes(args["certFingerprint"]),
        endpoint=args["endpoint"],
    )


def _with_result(tx: Tx, result: Any) -> Tx:
    return Tx(tx.hash, tx.gas_used, tx.block_number, tx.events, result)


def _amount(value: Any, name: str, allow_zero: bool = False) -> int:
    """Amounts are integers of base units; floats would silently lose money."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(
            f"{name} must be an int of token base units, got {type(value).__name__}; "
            "use Money.parse('2.50').amount for decimal input"
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise InvalidRequest(f"{name} is {value}; it must be {'zero or ' if allow_zero else ''}more than zero")
    return value


def _bytes32(value: bytes | str) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    if len(raw) > 32:
        raise InvalidRequest(f"a fingerprint is at most 32 bytes, got {len(raw)}; use a SHA-256 digest")
    return raw.rjust(32, b"\x00")


def _hash(value: str | bytes) -> bytes:
    if isinstance(value, bytes) and len(value) == 32:
        return value
    return Web3.keccak(text=value) if isinstance(value, str) else Web3.keccak(value)


def _root(value: bytes | str) -> bytes:
    """A 32-byte Merkle root, from bytes or 0x-hex; never padded (a short value is a mistake)."""
    try:
        raw = bytes.fromhex(value.removeprefix("0x")) if isinstance(value, str) else bytes(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"root must be 32 bytes or 64 hex digits, got {value!r}") from None
    if len(raw) != 32:
        raise InvalidRequest(f"root must be 32 bytes (a keccak Merkle root), got {len(raw)} bytes")
    return raw


def _claim(claim: HardwareClaim) -> tuple:
    return (claim.gpu_model, claim.gpu_count, claim.memory_gib, claim.tflops_x100)
