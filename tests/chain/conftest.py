"""Helpers for the chain tests: named clients, an exact money ledger, order/lease builders.

``market`` gives every devnet role a :class:`MarketClient` plus a :class:`Ledger`
that checks token balances to the base unit and the contract's solvency
(token balance == stakes + unallocated order escrow + open lease balances).
``registered`` is the same with provider0..2 registered at known stakes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
from eth_abi import decode as abi_decode
from eth_abi import encode as abi_encode
from eth_utils import keccak

from jupyter_gpumarket.chain import MarketClient
from jupyter_gpumarket.chain.errors import _abi_type
from jupyter_gpumarket.spec import DealStatus, GpuSpec, accrued
from tests.conftest import PROVIDER_CLAIMS

TUSD = 10**6
GRACE = 30  # DevnetParams.attestation_grace
UNSTAKE_DELAY = 600
DISPUTE_WINDOW = 86_400
MIN_STAKE = 100 * TUSD
STAKES = {"provider0": 100 * TUSD, "provider1": 150 * TUSD, "provider2": 200 * TUSD}
TREASURY = "0x000000000000000000000000000000000000Fee5"
FP = b"\x0f" * 32


def cost(price: int, gpus: int, seconds: int) -> int:
    """What the contract accrues: price x gpus x seconds // 3600."""
    return accrued(price, gpus, seconds)


class Ledger:
    """Token balances of every account (and the market), checked to the base unit.

    ``moved(**deltas)`` asserts that since the last check each named account
    changed by exactly its delta and every other account not at all, that the
    contract holds exactly what it owes, and takes a new baseline.
    ``unchanged()`` also asserts no order, bid, lease or provider changed.
    """

    def __init__(self, client: MarketClient, accounts: dict[str, str]) -> None:
        self.c = client
        self.accounts = dict(accounts)
        self.accounts["market"] = client.market.address
        self.accounts["treasury"] = TREASURY
        self._prepare()
        self.rebase()

    def read(self) -> tuple[dict[str, int], dict[str, tuple]]:
        """Balances of every account, and every order, deal and provider struct.

        Two raw JSON-RPC batches of eth_call with precomputed calldata: web3's
        contract-call machinery costs more CPU than the chain does here.
        """
        token, market = self.c.token.address, self.c.market.address
        first = [(token, self._balance_of[name], "uint256") for name in self.accounts]
        counts = (("orderCount", "uint64"), ("bidCount", "uint128"), ("providerCount", "uint32"), ("classCount", "uint16"))
        first += [(market, self._selector[n], t) for n, t in counts]
        *balances, orders, bids, providers, classes = self._batch(first)
        second = [(market, self._indexed("getOrder", i), self._struct["getOrder"]) for i in range(1, orders + 1)]
        second += [(market, self._indexed("getDeal", i), self._struct["getDeal"]) for i in range(1, bids + 1)]
        second += [(market, self._indexed("getProvider", i), self._struct["getProvider"]) for i in range(1, providers + 1)]
        second += [(market, self._indexed("getClass", i), self._struct["getClass"]) for i in range(1, classes + 1)]
        structs = [tuple(x) for x in self._batch(second)]
        state = {
            "orders": tuple(structs[:orders]),
            "deals": tuple(structs[orders : orders + bids]),
            "providers": tuple(structs[orders + bids : orders + bids + providers]),
            "classes": tuple(structs[orders + bids + providers :]),
        }
        return dict(zip(self.accounts, balances)), state

    def _prepare(self) -> None:
        def selector(abi_entry) -> bytes:
            types = ",".join(_abi_type(i) for i in abi_entry["inputs"])
            return keccak(text=f"{abi_entry['name']}({types})")[:4]

        market_abi = {e["name"]: e for e in self.c.market.abi if e["type"] == "function"}
        token_abi = {e["name"]: e for e in self.c.token.abi if e["type"] == "function"}
        names = ("orderCount", "bidCount", "providerCount", "classCount", "getOrder", "getDeal", "getProvider", "getClass")
        self._selector = {n: selector(market_abi[n]) for n in names}
        self._struct = {n: _abi_type(market_abi[n]["outputs"][0]) for n in ("getOrder", "getDeal", "getProvider", "getClass")}
        balance_of = selector(token_abi["balanceOf"])
        self._balance_of = {name: balance_of + abi_encode(["address"], [addr]) for name, addr in self.accounts.items()}

    def _indexed(self, name: str, i: int) -> bytes:
        return self._selector[name] + abi_encode(["uint256"], [i])

    def _batch(self, calls: list[tuple[str, bytes, str]]) -> list:
        if not calls:
            return []
        requests = [("eth_call", [{"to": to, "data": "0x" + data.hex()}, "latest"]) for to, data, _ in calls]
        responses = self.c.w3.provider.make_batch_request(requests)
        out = []
        for (_, _, out_type), response in zip(calls, sorted(responses, key=lambda r: r["id"])):
            assert "error" not in response, response
            (value,) = abi_decode([out_type], bytes.fromhex(response["result"][2:]))
            out.append(value)
        return out

    def balances(self) -> dict[str, int]:
        return self.read()[0]

    def state(self) -> dict[str, tuple]:
        return self.read()[1]

    @staticmethod
    def owed(state: dict[str, tuple]) -> dict[str, int]:
        """What the contract owes: stakes, unallocated escrow, open lease balances, class pools."""
        stakes = sum(p[6] for p in state["providers"])
        escrow = sum(o[8] for o in state["orders"])  # Order.escrow
        leases = sum(d[6] - d[7] for d in state["deals"] if d[4] == DealStatus.ACTIVE)
        pools = sum(c[1] for c in state.get("classes", ()))  # Class.balance
        return {"stakes": stakes, "escrow": escrow, "leases": leases, "pools": pools}

    def assert_solvent(self, balances=None, state=None) -> None:
        if balances is None:
            balances, state = self.read()
        owed = self.owed(state)
        assert balances["market"] == sum(owed.values()), owed

    def moved(self, **deltas: int) -> dict[str, int]:
        unknown = set(deltas) - set(self.accounts)
        assert not unknown, f"unknown accounts {unknown}"
        balances, state = self.read()
        expected = {name: self.base[name] + deltas.get(name, 0) for name in self.accounts}
        assert balances == expected
        assert sum(deltas.values()) == 0, "money is neither created nor destroyed"
        self.assert_solvent(balances, state)
        self.base, self.base_state = balances, state
        return balances

    def unchanged(self) -> None:
        balances, state = self.read()
        assert balances == self.base
        assert state == self.base_state
        self.assert_solvent(balances, state)

    def rebase(self) -> None:
        self.base, self.base_state = self.read()


@dataclass
class Market:
    """The devnet's roles as clients, with builders for orders, bids and leases."""

    net: object
    admin: MarketClient
    tenant: MarketClient
    stranger: MarketClient
    providers: list[MarketClient]
    ledger: Ledger
    ids: dict[int, int] = field(default_factory=dict)  # provider index -> provider id

    def client(self, role: str) -> MarketClient:
        return {"deployer": self.admin, "tenant": self.tenant, "stranger": self.stranger}.get(role) or self.providers[
            int(role.removeprefix("provider"))
        ]

    def now(self) -> int:
        return self.tenant.now()

    def stats(self, index: int) -> SimpleNamespace:
        """Provider ``index``'s on-chain numbers, raw from ``getProvider`` (no event lookups)."""
        raw = self.tenant.market.functions.getProvider(self.ids[index]).call()
        names = ("owner open_leases open_disputes gpu_count active leases_completed stake unstake_ready_at "
                 "leases_rejected disputes_lost leases_dropped memory_gib tflops_x100").split()
        return SimpleNamespace(**dict(zip(names, raw)))

    def register(self, index: int, stake: int | None = None) -> int:
        """Register provider ``index`` (approve + register) and check its stake moved exactly."""
        role = f"provider{index}"
        stake = STAKES[role] if stake is None else stake
        tx = self.providers[index].register_provider(
            PROVIDER_CLAIMS[role], "eu-west", f"tls://{role}:8786", stake, approve=True
        )
        self.ids[index] = tx.result
        self.ledger.moved(**{role: -stake, "market": stake})
        return tx.result

    def order(
        self,
        gpus: int = 2,
        max_price: int = 3 * TUSD,
        duration: int = 3600,
        window: int = 600,
        deposit: int = 10 * TUSD,
        permit: bool = False,
    ) -> int:
        """Create an order and check the deposit went into escrow exactly."""
        order_id = self.tenant.create_order(
            GpuSpec(gpus), max_price, duration, window, deposit, FP, approve=not permit, permit=permit
        ).result
        self.ledger.moved(tenant=-deposit, market=deposit)
        return order_id

    def bid(self, index: int, order_id: int, price: int = 2 * TUSD, gpus: int = 2) -> int:
        return self.providers[index].place_bid(order_id, price, gpus, bytes([index + 1]) * 32, f"tls://p{index}:1").result

    def lease(
        self,
        index: int = 0,
        price: int = 2 * TUSD,
        gpus: int = 2,
        duration: int = 3600,
        deposit: int | None = None,
        start: int | None = None,
    ) -> tuple[int, int, int]:
        """Order + bid + accept; returns (order id, lease id, start time).

        The deposit defaults to the lease's full cost, so the lease takes the whole escrow.
        """
        deposit = cost(price, gpus, duration) if deposit is None else deposit
        order_id = self.order(gpus=gpus, max_price=price, duration=duration, deposit=deposit)
        bid_id = self.bid(index, order_id, price, gpus)
        start = self.now() + 5 if start is None else start
        self.net.set_next_timestamp(start)
        (lease_id,) = self.tenant.accept_bids(order_id, [bid_id]).result
        lease = self.tenant.lease(lease_id)
        assert (lease.started_at, lease.deposit, lease.status) == (start, deposit, DealStatus.ACTIVE)
        self.ledger.moved()  # escrow -> lease, inside the contract
        return order_id, lease_id, start

    def close(self, lease_id: int, by: MarketClient | None = None) -> dict:
        """Close a lease and check that exactly paid, fee and refund left the contract."""
        provider = {v: k for k, v in self.ids.items()}[self.tenant.lease(lease_id).provider_id]
        ev = (by or self.tenant).close_lease(lease_id).result
        self.ledger.moved(
            **{f"provider{provider}": ev["paid"]},
            treasury=ev["fee"],
            tenant=ev["refunded"],
            market=-(ev["paid"] + ev["fee"] + ev["refunded"]),
        )
        return ev


ROLES = ["deployer", "tenant", "stranger", "provider0", "provider1", "provider2"]


@pytest.fixture(scope="session")
def clients(net) -> dict[str, MarketClient]:
    """One client per devnet role, for the whole session (they fetch nonces per transaction)."""
    return {role: net.client(role) for role in ROLES}


@pytest.fixture
def market(chain, clients) -> Market:
    """All roles as clients and a ledger baseline; no provider registered."""
    ledger = Ledger(clients["deployer"], {role: c.address for role, c in clients.items()})
    return Market(
        net=chain,
        admin=clients["deployer"],
        tenant=clients["tenant"],
        stranger=clients["stranger"],
        providers=[clients[f"provider{i}"] for i in range(3)],
        ledger=ledger,
    )


@pytest.fixture
def registered(market) -> Market:
    """provider0..2 registered with stakes 100, 150 and 200 TUSD."""
    for i in range(3):
        market.register(i)
    return market


# -- a shared scene for refusal tests --------------------------------------------------------
#
# A refused call moves nothing (the client decodes the revert while estimating gas,
# before signing), so many refusal cases can share one prepared market. The scene is
# built once per module; each case still runs between a snapshot and a revert, and
# asserts that no block was mined and no balance or struct changed.


@pytest.fixture(scope="module")
def scene(net, clients):
    """provider0 and provider1 registered (provider2 not), and orders/bids/leases in every state.

    Fields: m (Market), o (3-GPU order: live bid b0 by provider0 for 2 GPUs, active lease `lease`
    by provider1 for 2 GPUs), o_open (2 GPUs, no bids), o_late (bidding over), o_closed,
    o_ex (escrow spent, live bid b_ex of provider1), closed_lease (closed and disputed).
    The stranger has approved 1,000 TUSD but holds none; the tenant has no allowance.
    """
    rq = net.w3.provider.make_request
    snapshot = rq("evm_snapshot", [])["result"]
    try:
        ledger = Ledger(clients["deployer"], {role: c.address for role, c in clients.items()})
        m = Market(
            net=net,
            admin=clients["deployer"],
            tenant=clients["tenant"],
            stranger=clients["stranger"],
            providers=[clients[f"provider{i}"] for i in range(3)],
            ledger=ledger,
        )
        m.register(0)
        m.register(1)
        s = SimpleNamespace(m=m)
        s.o_late = m.order(gpus=1, window=10, deposit=1 * TUSD)
        net.advance(20)
        s.o = m.order(gpus=3, max_price=3 * TUSD, duration=3600, window=600, deposit=20 * TUSD)
        s.b0 = m.bid(0, s.o, price=2 * TUSD, gpus=2)
        s.b1 = m.bid(1, s.o, price=2_500_000, gpus=2)
        (s.lease,) = m.tenant.accept_bids(s.o, [s.b1]).result
        s.o_open = m.order(gpus=2, max_price=3 * TUSD)
        s.o_closed = m.order(gpus=1, deposit=1 * TUSD)
        m.tenant.close_order(s.o_closed)
        m.ledger.moved(tenant=1 * TUSD, market=-1 * TUSD)
        s.o_ex = m.order(gpus=2, max_price=1 * TUSD, duration=3600, deposit=1 * TUSD)
        first = m.bid(0, s.o_ex, price=1 * TUSD, gpus=1)
        s.b_ex = m.bid(1, s.o_ex, price=1 * TUSD, gpus=1)
        m.tenant.accept_bids(s.o_ex, [first])  # takes the whole 1 TUSD escrow
        _, s.closed_lease, t0 = m.lease(0, price=1 * TUSD, gpus=1)
        net.set_next_timestamp(t0 + 60)
        m.close(s.closed_lease)
        m.tenant.open_dispute(s.closed_lease, "disputed in the scene")
        m.stranger.approve(1_000 * TUSD)
        m.ledger.moved()
        yield s
    finally:
        net.revert(snapshot)


@pytest.fixture
def fresh(scene):
    """The scene, rolled back after the test; checks afterwards are against the scene's ledger."""
    rq = scene.m.net.w3.provider.make_request
    snapshot = rq("evm_snapshot", [])["result"]
    scene.block = scene.m.tenant.w3.eth.block_number
    ledger = scene.m.ledger
    baseline = ledger.base, ledger.base_state
    yield scene
    rq("evm_revert", [snapshot])
    ledger.base, ledger.base_state = baseline
