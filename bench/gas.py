"""Gas of each GpuMarket operation and of one lease's full lifecycle, on a devnet.

    .venv/bin/python bench/gas.py

Targets (ahead of Sablier Flow's published create 114-124k, withdraw 39-41k):
createOrder incl. deposit <= 120k, placeBid <= 90k, acceptBid <= 120k,
withdraw <= 40k, close <= 60k, full lifecycle <= 450k.
Prints a table, then one line of JSON with the figures.
"""

from __future__ import annotations

import json
import tempfile

from jupyter_gpumarket.chain import Devnet, DevnetParams
from jupyter_gpumarket.demo import run_lifecycle
from jupyter_gpumarket.spec import GpuSpec, HardwareClaim

TARGETS = {
    "createOrder": 120_000,
    "placeBid": 90_000,
    "acceptBids": 120_000,
    "withdraw": 40_000,
    "closeLease": 60_000,
    "lifecycle": 450_000,
    "postReceiptRoot": 60_000,
}


def extra_operations(net: Devnet) -> dict[str, int]:
    """Operations the demo's lifecycle does not use, each measured once in steady state."""
    gas: dict[str, int] = {}
    tenant, p0, p1 = net.client("tenant"), net.client("provider0"), net.client("provider1")
    spec = GpuSpec(2, "H100|A100", 40)
    gas["createOrderWithPermit"] = tenant.create_order(spec, 3_000_000, 3600, 60, 6_000_000, b"\x01" * 32, permit=True).gas_used
    tenant.approve(10**12)
    order = tenant.create_order(spec, 3_000_000, 3600, 60, 6_000_000, b"\x01" * 32).result
    bid0 = p0.place_bid(order, 2_900_000, 1, b"\x02" * 32, "tls://p0:8786")
    gas["withdrawBid"] = p0.withdraw_bid(bid0.result).gas_used
    bids = [p0.place_bid(order, 2_900_000, 1, b"\x02" * 32, "tls://p0:8786").result,
            p1.place_bid(order, 2_400_000, 1, b"\x03" * 32, "tls://p1:8786").result]
    gas["acceptBids_two"] = tenant.accept_bids(order, bids).gas_used
    gas["rejectLease"] = tenant.reject_lease(bids[0], "attestation failed").gas_used
    gas["postReceiptRoot"] = p1.post_receipt_root(bids[1], b"\x5a" * 32, 40).gas_used
    gas["topUp"] = tenant.top_up(bids[1], 1_000_000, 600).gas_used
    net.advance(120)
    gas["openDispute"] = tenant.open_dispute(bids[1], "receipt mismatch").gas_used
    gas["resolveDispute_slash"] = net.client("deployer").resolve_dispute(bids[1], True, 1_000_000).gas_used
    # A close that only refunds: the provider withdrew everything just before.
    p1.withdraw(bids[1])
    gas["closeLease_refund_only"] = tenant.close_lease(bids[1]).gas_used
    gas["closeOrder"] = tenant.close_order(order).gas_used
    gas["closeLeaseAtHeartbeat"] = _heartbeat_close(net, tenant, p0)
    claim = HardwareClaim("NVIDIA RTX 4090", 2, 24, 165.0)
    gas["updateProvider"] = p0.update_provider(claim, "us-east", "tls://p0b:8786").gas_used
    return gas


def _heartbeat_close(net: Devnet, tenant, provider) -> int:
    """Close a fresh lease at the provider's signed heartbeat (the silent-provider path)."""
    from jupyter_gpumarket.verify.heartbeat import Heartbeat, HeartbeatDomain

    order = tenant.create_order(GpuSpec(1), 3_000_000, 3600, 60, 3_000_000, b"\x01" * 32).result
    bid = provider.place_bid(order, 2_900_000, 1, b"\x02" * 32, "tls://p0:8786").result
    tenant.accept_bids(order, [bid])
    beat = Heartbeat(bid, 1, tenant.now() + 30, 0).sign(provider.signer, HeartbeatDomain(tenant.chain_id, tenant.market.address))
    net.advance(120)
    return tenant.close_lease_at_heartbeat(bid, beat).gas_used


def main() -> None:
    with tempfile.TemporaryDirectory() as state, Devnet.up(state_dir=state, params=DevnetParams(providers=2)) as net:
        result = run_lifecycle(net)
        gas = {k: v for k, v in result.gas.items() if k != "approve"}
        gas["lifecycle"] = result.lifecycle_gas
        gas.update(extra_operations(net))
    print(f"{'operation':<24}{'gas':>9}{'target':>9}  ok")
    for name, used in gas.items():
        target = TARGETS.get(name)
        mark = "" if target is None else ("yes" if used <= target else "NO")
        print(f"{name:<24}{used:>9,}{'' if target is None else f'{target:,}':>9}  {mark}")
    print(json.dumps({f"gas_{k}": v for k, v in gas.items()}))


if __name__ == "__main__":
    main()
