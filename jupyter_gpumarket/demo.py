"""The demos: the quickstart notebook on a private devnet (the main one), and the
command-line lease demo underneath it (``gpumarket demo --lease-only``).

Notebook demo: start anvil with the contracts and three provider agents, execute
``example-notebooks/quickstart.ipynb`` headless, write the executed copy, print a
summary (providers, prices, seconds, cost, results) and stop everything it started.

Lease demo: one lease, end to end, on a private devnet.

Two providers register and bid on a tenant's order, the cheaper one wins,
ten minutes pass (anvil's clock), the provider withdraws, the tenant closes.
Each step prints its gas; at the end the balances must add up to the base
unit, or the demo fails.

``run_lifecycle`` is also what ``bench/gas.py`` measures.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .chain import Devnet, DevnetParams
from .chain.devnet import TOKEN_UNIT
from .spec import GpuSpec, HardwareClaim, Money

DEMO_PROVIDERS = {
    "provider0": (HardwareClaim("NVIDIA H100 80GB HBM3", 8, 80, 989.0), "eu-west", 2_900_000),
    "provider1": (HardwareClaim("NVIDIA A100-SXM4-80GB", 4, 80, 312.0), "eu-west", 2_400_000),
}


@dataclass
class LifecycleResult:
    gas: dict[str, int] = field(default_factory=dict)
    tx_hashes: dict[str, str] = field(default_factory=dict)
    balances_before: dict[str, int] = field(default_factory=dict)
    balances_after: dict[str, int] = field(default_factory=dict)
    lease_id: int = 0
    winner: str = ""
    paid: int = 0
    refunded: int = 0
    fee: int = 0
    deposit: int = 0

    @property
    def lifecycle_gas(self) -> int:
        """createOrder + one placeBid + acceptBids + withdraw + closeLease (the lease's own path)."""
        return sum(self.gas[k] for k in ("createOrder", "placeBid", "acceptBids", "withdraw", "closeLease"))


def run_lifecycle(net: Devnet, say: Callable[[str], None] = lambda _: None, seconds: int = 600) -> LifecycleResult:
    """Register two providers, order 2 GPUs, accept the cheaper bid, stream, withdraw, close."""
    result = LifecycleResult()
    tenant = net.client("tenant")
    market = tenant.market.address
    roles = ["tenant", *DEMO_PROVIDERS]
    result.balances_before = {r: tenant.balance(net.info.addresses[r]) for r in roles} | {
        "market": tenant.balance(market)
    }

    def step(name: str, tx) -> None:
        result.gas[name] = tx.gas_used
        result.tx_hashes[name] = tx.hash
        say(f"  {name:<16} gas {tx.gas_used:>7,}  tx {tx.hash[:18]}…")

    say("1. providers register with a stake")
    stake = net.client("deployer").params()["min_stake"]
    for role, (claim, region, _) in DEMO_PROVIDERS.items():
        client = net.client(role)
        step("approve", client.approve(stake))
        step("registerProvider", client.register_provider(claim, region, f"tls://{role}.devnet:8786", stake))
        say(f"  {role}: {claim.gpu_count}x {claim.gpu_model}, stake {Money(stake)}")

    spec = GpuSpec(count=2, model="H100|A100", min_memory_gib=40)
    max_price, hours = 3 * TOKEN_UNIT, 1
    deposit = max_price * spec.count * hours
    say(f"2. tenant orders {spec.count} GPUs matching {spec.model!r} at ≤ {Money(max_price)}/GPU-h, deposit {Money(deposit)}")
    step("approve", tenant.approve(deposit))
    order_tx = tenant.create_order(spec, max_price, 3600 * hours, 60, deposit, b"\x01" * 32)
    step("createOrder", order_tx)
    order_id = order_tx.result

    say("3. providers bid (reverse auction)")
    bids = {}
    for role, (claim, _, price) in DEMO_PROVIDERS.items():
        bid_tx = net.client(role).place_bid(order_id, price, spec.count, b"\x02" * 32, f"tls://{role}.devnet:8786")
        step("placeBid", bid_tx)
        bids[role] = (bid_tx.result, price)
        say(f"  {role} bids {Money(price)}/GPU-h → bid {bid_tx.result}")

    winner = min(bids, key=lambda r: bids[r][1])
    lease_id, price = bids[winner]
    say(f"4. tenant accepts the cheaper bid: {winner} at {Money(price)}/GPU-h")
    step("acceptBids", tenant.accept_bids(order_id, [lease_id]))
    lease = tenant.lease(lease_id)
    say(f"  lease {lease_id}: deposit {Money(lease.deposit)} streams {Money(price * spec.count)}/h")

    say(f"5. {seconds // 60} minutes pass on the chain's clock")
    # The withdrawal's block lands exactly `seconds` after the lease began, however slow this
    # machine (a block a second earlier first: gas is estimated at the latest block's time).
    net.mine(lease.started_at + seconds - 1)
    net.set_next_timestamp(lease.started_at + seconds)
    provider = net.client(winner)
    withdraw_tx = provider.withdraw(lease_id)
    step("withdraw", withdraw_tx)
    say(f"  {winner} withdraws {Money(withdraw_tx.result)}")

    net.mine(lease.started_at + seconds + 59)
    net.set_next_timestamp(lease.started_at + seconds + 60)
    say("6. tenant closes the lease early; the rest is refunded")
    close_tx = tenant.close_lease(lease_id)
    step("closeLease", close_tx)
    closed = close_tx.result
    step("closeOrder", tenant.close_order(order_id))

    result.balances_after = {r: tenant.balance(net.info.addresses[r]) for r in roles} | {"market": tenant.balance(market)}
    result.lease_id, result.winner, result.deposit = lease_id, winner, lease.deposit
    result.paid = withdraw_tx.events["PaymentWithdrawn"][0]["amount"] - withdraw_tx.events["PaymentWithdrawn"][0]["fee"]
    result.paid += closed["paid"]
    result.fee = withdraw_tx.events["PaymentWithdrawn"][0]["fee"] + closed["fee"]
    result.refunded = closed["refunded"]
    return result


def check_balances(result: LifecycleResult, stake_total: int) -> list[str]:
    """Every base unit accounted for; returns the problems (empty when it adds up)."""
    before, after = result.balances_before, result.balances_after
    problems = []
    tenant_spent = before["tenant"] - after["tenant"]
    if tenant_spent != result.paid + result.fee:
        problems.append(f"tenant spent {tenant_spent} but provider+fee got {result.paid + result.fee}")
    if result.paid + result.fee + result.refunded != result.deposit:
        problems.append("paid + fee + refunded != deposit")
    earned = after[result.winner] - before[result.winner] + stake_total // len(DEMO_PROVIDERS)
    if earned != result.paid:
        problems.append(f"{result.winner} earned {earned}, expected {result.paid}")
    if after["market"] - before["market"] != stake_total:
        problems.append(f"market holds {after['market'] - before['market']}, owes the stakes {stake_total}")
    return problems


def notebook_demo(notebook: str | Path, out: str | Path, say: Callable[[str], None] = print) -> int:
    """Run a notebook against a private devnet with provider agents; summarise its receipts."""
    import nbformat

    from .notebook.runner import execute_notebook, receipts_in

    notebook, out = Path(notebook), Path(out)
    if not notebook.exists():
        say(f"error: no notebook at {notebook}; run from the repository root or pass --notebook")
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    say("Starting a private devnet (anvil), deploying the contracts and starting 3 provider agents…")
    with tempfile.TemporaryDirectory(prefix="gpumarket-demo-") as state, Devnet.up(
        state_dir=state, params=DevnetParams(providers=4)
    ) as net:
        net.start_agents(count=3)
        net.wait_for_providers(3)
        say(f"  chain {net.info.chain_id} at {net.info.rpc_url}; executing {notebook} …")
        nb = execute_notebook(notebook, state, out)
    say(f"Executed notebook written to {out}")
    say("Results:")
    for cell in nb.cells:
        if cell.cell_type == "code" and "nbval-ignore-output" not in cell.metadata.get("tags", []):
            for output in cell.get("outputs", []):
                if output.get("output_type") == "stream" and output.get("name") == "stdout":
                    for line in output["text"].strip().splitlines():
                        say(f"  {line}")
    say("Receipts:")
    for receipt in receipts_in(nb):
        money = lambda amount: str(Money(amount, receipt["decimals"], receipt["symbol"]))  # noqa: E731
        for line in receipt["leases"]:
            say(f"  lease {line['lease']}: provider {line['provider']}, {line['gpus']}x {line['gpu']} at "
                f"{money(line['price_per_gpu_hour'])}/GPU-h, {line['gpu_seconds']} GPU-s, cost {money(line['cost'])}"
                f" ({line['status']})")
        say(f"  cell total {money(receipt['cost'])} on chain {receipt['chain_id']}")
    nbformat.validate(nb)
    say("Everything the demo started is stopped.")
    return 0


def main(say: Callable[[str], None] = print) -> int:
    say("Starting a private devnet (anvil) and deploying TestDollar + GpuMarket…")
    with tempfile.TemporaryDirectory(prefix="gpumarket-demo-") as state, Devnet.up(
        state_dir=state, params=DevnetParams(providers=2)
    ) as net:
        say(f"  chain {net.info.chain_id} at {net.info.rpc_url}, market {net.info.market}")
        result = run_lifecycle(net, say)
        stake_total = net.client("deployer").params()["min_stake"] * len(DEMO_PROVIDERS)
        say("7. final balances (TUSD)")
        for who in result.balances_after:
            delta = result.balances_after[who] - result.balances_before[who]
            say(f"  {who:<10} {Money(result.balances_after[who])!s:>22}  change {delta:+,} base units")
        say(
            f"  lease {result.lease_id}: deposit {result.deposit:,} = paid {result.paid:,} + fee {result.fee:,}"
            f" + refunded {result.refunded:,}"
        )
        say(f"  gas for the lease's lifecycle: {result.lifecycle_gas:,}")
        problems = check_balances(result, stake_total)
        for problem in problems:
            say(f"  MISMATCH: {problem}")
        say("Balances add up to the base unit." if not problems else "Balances do NOT add up.")
        return 1 if problems else 0
